"""Triton glue for diffusion-LM text generation (decoupled): tensors in, engine deltas out as responses.

Requests run concurrently, up to the engine's ``max_concurrent`` (the transformers engine decodes them together:
one batched forward per refinement step). ``execute`` reads and checks a request, then hands it to a worker thread
and returns; when every place is taken it waits for one, so further requests stay in Triton's bounded queue (a full
queue is answered 429 by the frontend). Every decoded block becomes one response carrying the new ``TEXT``; the
last also carries the finish reason and token counts, and the FINAL flag (the aio gRPC client ignores an empty
final response, so FINAL goes on the last real one). Errors become an error response with FINAL, per request; a
request Triton marks cancelled leaves the batch between refinement steps and counts as ``GenerationCancelled``.
``finalize`` waits for the worker threads before the engine closes.
"""

from __future__ import annotations

import json
import threading
import time
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


class RequestStream:
    """A request's response sender, shared by its worker thread (which sends) and the decoder's batch thread (which
    asks whether the request was cancelled, between steps). Once the final response is sent the sender's response
    factory is gone, and asking it then crashes tritonserver (seen: a segfault in
    ``TRITONBACKEND_ResponseFactoryIsCancelled`` when a stop string ended a request while the batch thread asked);
    so the two never overlap, and a finished request reads as not cancelled. The request object itself is not
    asked at all: after ``execute`` returns Triton may have released it."""

    def __init__(self, sender) -> None:
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


class TritonPythonModel(DiffusionModel):
    contract = TEXT
    pb_utils = pb_utils

    def load(self, parameters: dict[str, str], device: str) -> None:
        self.limits = TextLimits.from_parameters(parameters)
        self.engine = create_text_engine(TextEngineConfig.from_parameters(parameters, device))
        self.places = threading.BoundedSemaphore(self.engine.max_concurrent)
        self.workers = ThreadPoolExecutor(max_workers=self.engine.max_concurrent, thread_name_prefix="dllm")

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
            self.places.acquire()  # released by the worker when the request ends
            self.workers.submit(self._run, RequestStream(sender), params, wanted, stream)
        return None

    def _run(self, sender: RequestStream, params: TextParams, wanted: frozenset[str], stream: bool) -> None:
        """On a worker thread: the whole generation, ending in its final response or its error."""
        try:
            self._generate(sender, params, wanted, stream)
            self.metrics.request("success")
        except Exception as exc:
            self.fail(sender, exc)
        finally:
            self.places.release()

    def _generate(self, sender: RequestStream, params: TextParams, wanted: frozenset[str], stream: bool) -> None:
        held: list[str] = []
        start = time.perf_counter()
        deltas = self.engine.generate(params, cancellation_check(sender))
        try:
            for delta in deltas:
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
            deltas.close()  # a failed send leaves the batch at once
            self.metrics.seconds("denoise", time.perf_counter() - start)
        raise EngineFailure("the engine stopped without a finish reason")

    def finalize(self) -> None:
        self.workers.shutdown(wait=True)
        super().finalize()
