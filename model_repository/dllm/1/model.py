"""Triton glue for diffusion-LM text generation (decoupled): tensors in, engine deltas out as responses.

Each request is decoded to the end inside ``execute`` (one request at a time per instance; queued requests
wait in Triton's bounded queue). Every decoded block becomes one response carrying the new ``TEXT``; the
last also carries the finish reason and token counts, and the FINAL flag (the aio gRPC client ignores an
empty final response, so FINAL goes on the last real one). Errors become an error response with FINAL; a
request Triton marks cancelled stops between refinement steps and counts as ``GenerationCancelled``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import triton_python_backend_utils as pb_utils

from diffusion_runtime.contract import TEXT
from diffusion_runtime.dllm import TextDelta, TextEngineConfig, create_text_engine
from diffusion_runtime.errors import EngineFailure, InvalidRequest
from diffusion_runtime.params.text import TextLimits, validate_text_params
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


class TritonPythonModel(DiffusionModel):
    contract = TEXT
    pb_utils = pb_utils

    def load(self, parameters: dict[str, str], device: str) -> None:
        self.limits = TextLimits.from_parameters(parameters)
        self.engine = create_text_engine(TextEngineConfig.from_parameters(parameters, device))

    def _generate(self, request, sender) -> None:
        settings = self.settings(request)
        # STREAM false (the frontend's non-streaming requests): one response with the whole text; each response
        # sent costs the decoder ~0.7 ms of waiting on Triton.
        stream = settings.pop("stream") is not False
        params = validate_text_params(self.limits, stop=read_stop(request), **settings)
        wanted = requested_outputs(request)
        held: list[str] = []
        start = time.perf_counter()
        try:
            for delta in self.engine.generate(params, cancellation_check(request)):
                if delta.finish_reason is not None:
                    self.metrics.steps(delta.steps)
                    whole = replace(delta, text="".join(held) + delta.text)
                    sender.send(_response(whole, wanted), flags=self.final)
                    return
                if stream:
                    sender.send(_response(delta, wanted))
                else:
                    held.append(delta.text)
        finally:
            self.metrics.seconds("denoise", time.perf_counter() - start)
        raise EngineFailure("the engine stopped without a finish reason")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._generate(request, sender)
                self.metrics.request("success")
            except Exception as exc:  # one bad request never takes the others (or the stub) down
                self.fail(sender, exc)
        return None
