"""Concurrent requests decoded together: one batched model forward per refinement step for every request in
progress, instead of one request after another.

Requests join and leave at any step (a new request starts at its first step beside others in their tenth; a
finished or cancelled one drops out), so each forward carries whatever is in progress, up to ``max_batch``
requests. Sequences of different lengths are right-padded and the padding is hidden by the attention mask; every
decision (which tokens to keep, the sampling noise) is made per request by ``RequestDecoding`` from that request's
own row of logits and its own seeded generator, so a request's answer does not depend on what it was batched with.

One thread runs the model; request threads only wait for their blocks, so detokenizing and sending responses
overlap the next forward. A failing forward fails the requests in it, never the thread; a request whose ``on_step``
raises (cancelled) or whose reader went away leaves the batch at the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from diffusion_runtime.dllm.decoder import DecodedBlock, DecodeSettings, RequestDecoding
from diffusion_runtime.engines.base import StepHook

log = logging.getLogger(__name__)

BatchLogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""The model: token ids ``[B, L]`` and attention mask ``[B, L]`` (1: a real token) to logits ``[B, L, vocab]``."""

_CLOSED = object()


@dataclass
class _Request:
    state: RequestDecoding
    on_step: StepHook
    blocks: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # DecodedBlock | BaseException
    abandoned: threading.Event = field(default_factory=threading.Event)


class BatchedDecoder:
    """Decodes the requests of many threads together (see the module docstring)."""

    def __init__(self, logits_fn: BatchLogitsFn, *, pad_id: int, max_batch: int, device: str = "cpu") -> None:
        self._logits_fn = logits_fn
        self._pad_id = pad_id
        self.max_batch = max_batch
        self._device = device
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()  # _Request | _CLOSED
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batch_sizes: list[int] = []  # requests per forward, most recent last (bounded), for tests and metrics

    def decode(
        self,
        prompt_ids: Sequence[int],
        settings: DecodeSettings,
        *,
        mask_id: int,
        eos_ids: Collection[int] = (),
        on_step: StepHook,
    ) -> Iterator[DecodedBlock]:
        """Yield one request's blocks as the shared forwards complete them; the same blocks, in the same order, as
        ``decoder.decode_blocks`` gives for this request alone. Closing the iterator early abandons the request."""
        request = _Request(
            RequestDecoding(prompt_ids, settings, mask_id=mask_id, eos_ids=eos_ids, device=self._device), on_step
        )
        self._start()
        self._incoming.put(request)
        try:
            while True:
                item = request.blocks.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.final:
                    return
        finally:
            request.abandoned.set()

    def close(self) -> None:
        """Stop the model thread after the step in progress; requests still decoding fail."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._incoming.put(_CLOSED)
            thread.join()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dllm-batch", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        active: list[_Request] = []
        waiting: list[_Request] = []  # arrived while the batch was full
        closed = False
        while not closed:
            # Idle: block until a request arrives. Busy: take whatever arrived since the last step.
            try:
                item = self._incoming.get() if not (active or waiting) else self._incoming.get_nowait()
                while True:
                    if item is _CLOSED:
                        closed = True
                    else:
                        waiting.append(item)
                    item = self._incoming.get_nowait()
            except queue.Empty:
                pass
            while waiting and len(active) < self.max_batch:
                active.append(waiting.pop(0))
            if closed:
                break
            active = [r for r in active if self._ready(r)]
            if active:
                self._step(active)
                active = [r for r in active if not r.state.finished and not r.abandoned.is_set()]
        for request in active + waiting:
            request.blocks.put(RuntimeError("the text engine was closed while this request was decoding"))

    @staticmethod
    def _ready(request: _Request) -> bool:
        """Still wanted: not abandoned, and its step hook (cancellation) lets it run another step."""
        if request.abandoned.is_set():
            return False
        try:
            request.on_step(request.state.done, request.state.total)
        except BaseException as exc:  # GenerationCancelled, or any failure of the hook: this request only
            request.blocks.put(exc)
            return False
        return True

    def _step(self, batch: list[_Request]) -> None:
        """One forward over the batch, then one refinement step per request."""
        length = max(r.state.length for r in batch)
        ids = torch.full((len(batch), length), self._pad_id, dtype=torch.long, device=self._device)
        attention = torch.zeros((len(batch), length), dtype=torch.long, device=self._device)
        for row, request in enumerate(batch):
            ids[row, : request.state.length] = request.state.ids[0]
            attention[row, : request.state.length] = 1
        self.batch_sizes = [*self.batch_sizes[-999:], len(batch)]
        try:
            logits = self._logits_fn(ids, attention)
        except Exception as exc:
            log.exception("batched forward of %d requests failed", len(batch))
            for request in batch:
                request.blocks.put(exc)
                request.state.finished = True
            return
        for row, request in enumerate(batch):
            try:
                block = request.state.advance(logits[row, : request.state.length])
            except Exception as exc:
                request.blocks.put(exc)
                request.state.finished = True
                continue
            if block is not None:
                request.blocks.put(block)
