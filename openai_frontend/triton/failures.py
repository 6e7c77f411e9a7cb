"""What a failed Triton call says: the one place that reads tritonclient's errors.

In order: a message a model wrote carries its kind (``diffusion_runtime.errors.read_error_message``), which also
survives decoupled streams, where Triton drops the code; Triton's own errors map by their gRPC status code. Three
of Triton's answers share a code with others and are told apart by their fixed message, here and nowhere else: a
Python model whose stub process died (INTERNAL, "Stub process ... is not healthy"), a full queue (UNAVAILABLE,
"Exceeds maximum queue size"), and a repository API refused by a server without explicit model control
(UNAVAILABLE, "... is not allowed ...").
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from tritonclient.grpc import InferenceServerException

from diffusion_runtime.errors import ErrorKind, read_error_message
from openai_frontend.errors import Failure, OpenAIError, failure_error

_BY_MODEL_KIND = {
    ErrorKind.INVALID_ARGUMENT: Failure.INVALID_ARGUMENT,
    ErrorKind.CANCELLED: Failure.CANCELLED,
    ErrorKind.GENERATION_FAILED: Failure.GENERATION_FAILED,
}
_BY_STATUS: dict[grpc.StatusCode | None, Failure] = {
    grpc.StatusCode.INVALID_ARGUMENT: Failure.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: Failure.NOT_FOUND,
    grpc.StatusCode.CANCELLED: Failure.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED: Failure.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE: Failure.SERVER_UNAVAILABLE,
}
_QUEUE_STATUSES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True)
class TritonFailure:
    failure: Failure
    message: str  # what the server or model said
    param: str | None = None  # the request field at fault, when a model named one

    def error(self) -> OpenAIError:
        """What the client sees."""
        return failure_error(self.failure, self.message, self.param)


def status_code(exc: InferenceServerException) -> grpc.StatusCode | None:
    """The gRPC status of a tritonclient error (``StatusCode.UNAVAILABLE``), None when it carries none (an error
    response inside a stream)."""
    name = str(exc.status() or "").removeprefix("StatusCode.")
    return grpc.StatusCode.__members__.get(name)


def as_triton_error(exc: InferenceServerException | grpc.RpcError) -> InferenceServerException:
    """tritonclient's error for ``exc``: its own, or one made from a gRPC error (a stream's response iterator
    raises gRPC's errors as they are)."""
    if isinstance(exc, InferenceServerException):
        return exc
    return InferenceServerException(msg=exc.details(), status=str(exc.code()))


def classify(exc: InferenceServerException) -> TritonFailure:
    """The kind of failure ``exc`` reports, with the message (and field) the client is told."""
    message = exc.message() or str(exc)
    if (model_error := read_error_message(message)) is not None:
        return TritonFailure(_BY_MODEL_KIND[model_error.kind], model_error.detail, model_error.param)
    if _stub_died(message):
        return TritonFailure(Failure.MODEL_DOWN, message)
    code = status_code(exc)
    if code in _QUEUE_STATUSES and "queue" in message.lower():
        return TritonFailure(Failure.QUEUE_FULL, message)
    return TritonFailure(_BY_STATUS.get(code, Failure.GENERATION_FAILED), message)


def openai_error(exc: InferenceServerException) -> OpenAIError:
    """What the client sees for a failed call."""
    return classify(exc).error()


def server_unreachable(exc: InferenceServerException) -> bool:
    """The server (not the request) is the problem."""
    return classify(exc).failure is Failure.SERVER_UNAVAILABLE


def model_control_refused(exc: InferenceServerException) -> bool:
    """The server was not started with ``--model-control-mode=explicit``: it cannot reload a model."""
    return status_code(exc) is grpc.StatusCode.UNAVAILABLE and "not allowed" in (exc.message() or "")


def _stub_died(message: str) -> bool:
    """Triton's answer once a Python model's stub process has died or frozen. Triton 2.51 neither restarts the
    stub nor stops reporting the model READY (see ``recovery``)."""
    return "Stub process" in message and "is not healthy" in message
