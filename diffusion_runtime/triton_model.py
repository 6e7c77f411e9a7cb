"""The skeleton every Python-backend model here shares; each ``model.py`` adds only its own reading, generating,
encoding and responding.

``triton_python_backend_utils`` exists only inside Triton's stub, so a model names it as its class attribute
``pb_utils`` rather than this module importing it: the package stays importable (and testable) without Triton.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from diffusion_runtime.contract import ModelContract
from diffusion_runtime.errors import GenerationCancelled, InvalidRequest
from diffusion_runtime.triton_io import (
    ModelMetrics,
    error_for,
    inference_response,
    model_parameters,
    pin_instance_device,
    read_bytes,
    read_scalars,
    read_strings,
    release_before_exit,
    requested_outputs,
)


def check_transaction_policy(pb_utils: Any, model_config: Mapping[str, Any], contract: ModelContract) -> None:
    """Refuse to load under a transaction policy the model was not written for: a decoupled model answers through
    its senders and returns nothing, a non-decoupled one may return its responses, and each breaks the other way."""
    decoupled = bool(pb_utils.using_decoupled_model_transaction_policy(model_config))
    if decoupled != contract.decoupled:
        wanted = "decoupled" if contract.decoupled else "non-decoupled"
        raise pb_utils.TritonModelException(
            f"model {contract.name} needs a {wanted} transaction policy in its config.pbtxt "
            f"(model_transaction_policy {{ decoupled: {str(contract.decoupled).lower()} }})"
        )


@dataclass(frozen=True)
class Denoised:
    """What a request's denoising leaves to the encoder thread (``DiffusionModel.denoise_then_encode``)."""

    params: Any  # the request's validated parameters
    samples: Any  # what the engine returned: images, frames
    seconds: float  # spent in the engine call
    steps: int  # denoising steps run, for the steps/s metric


class DiffusionModel:
    """Device pinning, config parameters, the transaction-policy check, metrics, the encoder threads, reading a
    request's inputs by the contract, answering it (``answer``, ``denoise_then_encode``), error responses and the
    order of ``finalize``. A subclass sets ``contract`` and ``pb_utils``, builds its engine in ``load`` and writes
    ``execute``."""

    contract: ClassVar[ModelContract]
    pb_utils: ClassVar[Any]  # triton_python_backend_utils, handed over by the model.py that runs in the stub
    encode_threads: ClassVar[int] = 0  # > 0: a pool (``self.encoder``) to encode on after ``execute`` returns

    engine: Any
    encoder: ThreadPoolExecutor | None
    metrics: ModelMetrics
    warmup_s: float | None = None  # set by ``load`` when it ran a warm-up generation; counted once metrics exist

    def initialize(self, args: dict[str, str]) -> None:
        """Metrics come last: had they been created before an engine that then fails to load, no ``finalize`` would
        release them, and metric families freed as the stub exits crash it (``ModelMetrics.close``)."""
        check_transaction_policy(self.pb_utils, json.loads(args["model_config"]), self.contract)
        device = pin_instance_device(args)
        self.load(model_parameters(args), device)
        self.encoder = (
            ThreadPoolExecutor(max_workers=self.encode_threads, thread_name_prefix="encode")
            if self.encode_threads
            else None
        )
        self.metrics = ModelMetrics(self.pb_utils, args["model_name"])
        if self.warmup_s is not None:
            self.metrics.seconds("warmup", self.warmup_s)

    def load(self, parameters: dict[str, str], device: str) -> None:
        """Read the model's own parameters and set ``self.engine`` (on ``device``)."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Threads first (they still send and record metrics), then the engine, then ``release_before_exit``."""
        if self.encoder is not None:
            self.encoder.shutdown(wait=True)
        self.engine.close()
        release_before_exit(self.metrics)

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(self.contract.name)

    @property
    def final(self) -> int:
        """The flag of a request's last response."""
        return self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

    def settings(self, request: Any) -> dict[str, Any]:
        """The request's single-value inputs, as the contract's keyword arguments."""
        return read_scalars(self.pb_utils, request, self.contract.fields("setting"))

    def files(self, request: Any) -> dict[str, bytes | None]:
        """The request's encoded files (raw bytes), by the contract's field names."""
        return {field: read_bytes(self.pb_utils, request, name) for name, field in self.contract.fields("file").items()}

    def lists(self, request: Any) -> dict[str, object]:
        """The request's list inputs (``triton_io.read_strings``), by the contract's field names."""
        return {
            field: read_strings(self.pb_utils, request, name, field)
            for name, field in self.contract.fields("list").items()
        }

    def error_response(self, exc: BaseException) -> Any:
        """The response for a failed request; failures that are not the client's doing are logged with their
        traceback."""
        if not isinstance(exc, (InvalidRequest, GenerationCancelled)):
            self.log.error("%s failed", self.contract.name, exc_info=exc)
        return self.pb_utils.InferenceResponse(error=error_for(self.pb_utils, exc))

    def send_final(self, sender: Any, response: Any) -> None:
        """Send a request's last response where nothing is left to do if that fails: the stream is gone (e.g.
        cancelled), which is logged and must never crash the stub."""
        try:
            sender.send(response, flags=self.final)
        except Exception as exc:
            self.log.warning("could not send the final response: %s: %s", type(exc).__name__, exc)

    def fail(self, sender: Any, exc: BaseException) -> None:
        """End a request's stream with an error response, counted under the exception's name."""
        self.metrics.request(type(exc).__name__)
        self.send_final(sender, self.error_response(exc))

    def answer(self, sender: Any, respond: Callable[..., None], *args: Any) -> None:
        """Run ``respond(sender, *args)``, which sends the request's final response; count the request a success,
        or end it with the error that stopped it."""
        try:
            respond(sender, *args)
            self.metrics.request("success")
        except Exception as exc:
            self.fail(sender, exc)

    def denoise_then_encode(
        self,
        request: Any,
        denoise: Callable[[Any], Denoised],
        encode: Callable[[Denoised], Mapping[str, np.ndarray]],
    ) -> None:
        """Answer a request with one final response: ``denoise`` (read, check, engine call) runs here, in
        ``execute``; ``encode`` (the files, as the response's outputs) runs on the encoder thread after ``execute``
        returned, so the instance starts the next request while the last one encodes. The response goes through
        the request's response sender, which non-decoupled models may use too."""
        sender = request.get_response_sender()
        try:
            denoised = denoise(request)
            self.encoder.submit(self._encode_and_answer, sender, encode, denoised, requested_outputs(request))
        except Exception as exc:  # one bad request never takes the others (or the stub) down
            self.encoder.submit(self.fail, sender, exc)  # counting it is a round trip to Triton: off the path

    def _encode_and_answer(
        self,
        sender: Any,
        encode: Callable[[Denoised], Mapping[str, np.ndarray]],
        denoised: Denoised,
        wanted: frozenset[str],
    ) -> None:
        """On the encoder thread: encode, send the request's one (final) response, then count it: a success only
        once the response is sent (a send that fails, e.g. for a client that left, counts under its exception, as
        ``answer`` counts the video and text models' final sends)."""
        try:
            start = time.perf_counter()
            outputs = encode(denoised)
            encode_s = time.perf_counter() - start
            sender.send(inference_response(self.pb_utils, outputs, wanted), flags=self.final)
        except Exception as exc:
            self.fail(sender, exc)
            return
        self.metrics.request("success")
        self.metrics.seconds("denoise", denoised.seconds)
        self.metrics.steps(denoised.steps)
        self.metrics.seconds("encode", encode_s)
