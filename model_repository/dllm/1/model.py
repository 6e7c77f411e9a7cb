"""Triton glue for diffusion-LM text generation (decoupled): tensors in, engine deltas out as responses.

By default (``max_running_requests`` 0 or 1) each request is decoded inside ``execute``, one at a time, every
Triton call on ``execute``'s thread. With ``max_running_requests`` above 1, requests run together: ``execute`` reads
and checks a request, hands it to a worker thread and returns (waiting first for a free place, so further requests
stay in Triton's bounded queue, answered 429 by the frontend when full), and the transformers engine decodes the
requests in flight together, one batched forward per refinement step. That mode is opt-in because Triton 2.51's
Python backend (the embedded server) crashed under sustained concurrent load with many decoupled requests in flight
(see ``RequestStream``); run it on a Triton that holds up, and measure there.

Every decoded block becomes one response carrying the new ``TEXT``; the last also carries the finish reason and
token counts, and the FINAL flag (the aio gRPC client ignores an empty final response, so FINAL goes on the last
real one). Errors become an error response with FINAL, per request; a request Triton marks cancelled stops after
the block in progress and counts as ``GenerationCancelled``. ``finalize`` waits for the worker threads before the
engine closes."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import triton_python_backend_utils as pb_utils

from diffusion_runtime.contract import TEXT
from diffusion_runtime.dllm import TextDelta, TextEngineConfig, create_text_engine
from diffusion_runtime.errors import EngineFailure, InvalidRequest
from diffusion_runtime.params.text import TextLimits, TextParams, validate_text_params
from diffusion_runtime.triton_io import cancellation_check, inference_response, requested_outputs
from diffusion_runtime.triton_model import DiffusionModel


def read_stop(request) -> str | list[str] | None:
    """``STOP``: a list of strings, or one string holding a JSON list (for clients that send one tensor)."""
    tensor = pb_utils.get_input_tensor_by_name(request, "STOP")
    if tensor is None or tensor.as_numpy().size == 0:
        return None
    try:
        values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]
    except UnicodeDecodeError as exc:
        raise InvalidRequest("input STOP is not valid UTF-8", "stop") from exc
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            return json.loads(values[0])
        except ValueError:
            pass  # a stop string that merely starts with "["
    return values


def _response(delta: TextDelta, wanted: frozenset[str]):
    """Only the last response has the summary."""
    outputs = {"TEXT": np.array([delta.text.encode("utf-8")], dtype=np.object_)}
    if delta.finish_reason is not None:
        outputs["FINISH_REASON"] = np.array([delta.finish_reason.encode()], dtype=np.object_)
        outputs["PROMPT_TOKENS"] = np.array([delta.prompt_tokens], dtype=np.int32)
        outputs["COMPLETION_TOKENS"] = np.array([delta.completion_tokens], dtype=np.int32)
    return inference_response(pb_utils, outputs, wanted)


def _decoding_step(done: int, total: int) -> None:
    """The engine's step hook: nothing to do between steps (cancellation is asked per block, in ``_generate``)."""


class RequestStream:
    """A request's response sender, through which its responses are sent and its cancellation asked, and the request
    object kept with it. Requests running together are in flight after ``execute`` returned, on worker threads.

    What Triton 2.51's Python backend needs, as far as it was found on a CPU (8 concurrent clients, a loaded host):
    - Sending and asking never overlap, and nothing is asked after the final response: the sender's response
      factory is gone then (seen: a segfault in ``TRITONBACKEND_ResponseFactoryIsCancelled`` when a stop string
      ended a request while the decoder's batch thread asked). A finished request reads as not cancelled.
    - The request object outlives its final response (the model keeps the last ``RETIRED_REQUESTS``).
    Even so, with 8 requests in flight tritonserver still died within a minute of sustained load (segfaults in
    ``libtriton_python.so``, or ``boost::interprocess::lock_exception``), whether cancellation was asked from the
    batch thread, from each request's own thread, or not at all, and with every Triton call behind one lock;
    the same load through the one-at-a-time path ran clean. Hence that path is the default."""

    def __init__(self, request, sender) -> None:
        self._request = request
        self._sender = sender
        self._lock = threading.Lock()
        self._finished = False

    def is_cancelled(self) -> bool:
        with self._lock:
            return not self._finished and self._sender.is_cancelled()

    def send(self, response, flags: int = 0) -> None:
        with self._lock:
            if self._finished:
                raise RuntimeError("the request's final response was already sent")
            self._finished = bool(flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            self._sender.send(response, flags=flags)


RETIRED_REQUESTS = 256  # finished requests kept alive (see RequestStream)


class TritonPythonModel(DiffusionModel):
    contract = TEXT
    pb_utils = pb_utils

    def load(self, parameters: dict[str, str], device: str) -> None:
        self.limits = TextLimits.from_parameters(parameters)
        self.engine = create_text_engine(TextEngineConfig.from_parameters(parameters, device))
        together = self.engine.max_concurrent
        self.places = threading.BoundedSemaphore(together)
        self.workers = ThreadPoolExecutor(together, thread_name_prefix="dllm") if together > 1 else None
        self.retired: deque[RequestStream] = deque(maxlen=RETIRED_REQUESTS)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                settings = self.settings(request)
                # STREAM false (the frontend's non-streaming requests): one response with the whole text; each
                # response sent costs the decoder ~0.7 ms of waiting on Triton.
                stream = settings.pop("stream") is not False
                params = validate_text_params(self.limits, stop=read_stop(request), **settings)
                wanted = requested_outputs(request)
            except Exception as exc:  # one bad request never takes the others (or the stub) down
                self.fail(sender, exc)
                continue
            self.places.acquire()  # released when the request ends
            if self.workers is None:  # one request at a time: decoded here, every Triton call on execute's thread
                self._run(RequestStream(request, sender), params, wanted, stream)
            else:
                self.workers.submit(self._run, RequestStream(request, sender), params, wanted, stream)
        return None

    def _run(self, sender: RequestStream, params: TextParams, wanted: frozenset[str], stream: bool) -> None:
        """The whole generation, ending in its final response or its error (on a worker thread when requests run
        together)."""
        try:
            self._generate(sender, params, wanted, stream)
            self.metrics.request("success")
        except Exception as exc:
            self.fail(sender, exc)
        finally:
            self.retired.append(sender)
            self.places.release()

    def _generate(self, sender: RequestStream, params: TextParams, wanted: frozenset[str], stream: bool) -> None:
        """Cancellation is asked here, before decoding and after each block, so every Triton call stays on the thread
        that owns the request (``execute``'s, by default) rather than on the decoder's batch thread."""
        held: list[str] = []
        start = time.perf_counter()
        check_cancelled = cancellation_check(sender)
        check_cancelled(0, params.steps)  # cancelled while queued: no work
        deltas = self.engine.generate(params, _decoding_step)
        try:
            for block, delta in enumerate(deltas, start=1):
                if delta.finish_reason is not None:
                    self.metrics.steps(delta.steps)
                    whole = replace(delta, text="".join(held) + delta.text)
                    sender.send(_response(whole, wanted), flags=self.final)
                    return
                check_cancelled(block, params.steps)
                if stream:
                    sender.send(_response(delta, wanted))
                else:
                    held.append(delta.text)
        finally:
            deltas.close()  # a cancelled request or a failed send leaves the batch at once
            self.metrics.seconds("denoise", time.perf_counter() - start)
        raise EngineFailure("the engine stopped without a finish reason")

    def finalize(self) -> None:
        if self.workers is not None:
            self.workers.shutdown(wait=True)
        super().finalize()
