"""The skeleton every Python-backend model here shares; each ``model.py`` adds only its own reading, generating,
encoding and responding.

``triton_python_backend_utils`` exists only inside Triton's stub, so a model names it as its class attribute
``pb_utils`` rather than this module importing it: the package stays importable (and testable) without Triton.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from diffusion_runtime.contract import ModelContract
from diffusion_runtime.errors import GenerationCancelled, InvalidRequest
from diffusion_runtime.triton_io import (
    ModelMetrics,
    error_for,
    model_parameters,
    pin_instance_device,
    read_scalars,
    release_before_exit,
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


class DiffusionModel:
    """Device pinning, config parameters, the transaction-policy check, metrics, the encoder threads, error
    responses and the order of ``finalize``. A subclass sets ``contract`` and ``pb_utils``, builds its engine in
    ``load`` and writes ``execute``."""

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
        return read_scalars(self.pb_utils, request, self.contract.settings)

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
