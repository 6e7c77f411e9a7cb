"""Triton glue for diffusion-LM text generation (decoupled): tensors in, engine deltas out as responses.

Requests run together (``max_running_requests``, default 8): ``execute`` hands each to a worker thread, and the
transformers engine decodes the requests in flight together, one batched forward per refinement step
(``triton_streams.StreamRunner``). With ``max_running_requests`` 1 each request is decoded inside ``execute``, one
at a time.

Every decoded block becomes one response carrying the new ``TEXT``; the last also carries the finish reason and
token counts, and the FINAL flag (the aio gRPC client ignores an empty final response, so FINAL goes on the last
real one). Errors become an error response with FINAL, per request; a request Triton marks cancelled stops after
the block in progress and counts as ``GenerationCancelled``. ``finalize`` waits for the worker threads before the
engine closes."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import triton_python_backend_utils as pb_utils

from diffusion_runtime.contract import TEXT
from diffusion_runtime.dllm import TextDelta, TextEngineConfig, create_text_engine
from diffusion_runtime.errors import EngineFailure
from diffusion_runtime.params.text import TextLimits, TextParams, validate_text_params
from diffusion_runtime.triton_io import cancellation_check, inference_response, requested_outputs
from diffusion_runtime.triton_model import DiffusionModel
from diffusion_runtime.triton_streams import RequestStream, StreamRunner


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


class TritonPythonModel(DiffusionModel):
    contract = TEXT
    pb_utils = pb_utils

    def load(self, parameters: dict[str, str], device: str) -> None:
        self.limits = TextLimits.from_parameters(parameters)
        self.engine = create_text_engine(TextEngineConfig.from_parameters(parameters, device))
        self.runner = StreamRunner(self.engine.max_concurrent, self.final, thread_name_prefix="dllm")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                settings = self.settings(request)
                # STREAM false (the frontend's non-streaming requests): one response with the whole text; each
                # response sent costs the decoder ~0.7 ms of waiting on Triton.
                stream = settings.pop("stream") is not False
                params = validate_text_params(self.limits, **self.lists(request), **settings)
                wanted = requested_outputs(request)
            except Exception as exc:  # one bad request never takes the others (or the stub) down
                self.fail(sender, exc)
                continue
            self.runner.start(request, sender, self.answer, self._generate, params, wanted, stream)
        return None

    def _generate(self, sender: RequestStream, params: TextParams, wanted: frozenset[str], stream: bool) -> None:
        """The whole generation, ending in its final response (on a worker thread when requests run together).
        Cancellation is asked here, before decoding and after each block, so every Triton call stays on the thread
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
        self.runner.close()
        super().finalize()
