"""What a failed Triton call says about where the fault lies: the server, its queue, or the request."""

from __future__ import annotations

from tritonclient.utils import InferenceServerException


def server_unreachable(exc: InferenceServerException) -> bool:
    """Errors that say the server (not the request) is the problem: try another server."""
    status = str(exc.status() or "")
    message = (exc.message() or "").lower()
    return ("UNAVAILABLE" in status and "queue" not in message) or "failed to connect" in message


def model_control_refused(exc: InferenceServerException) -> bool:
    """The server was not started with ``--model-control-mode=explicit``: it cannot reload a model."""
    return "not allowed" in (exc.message() or "")


def queue_full(exc: InferenceServerException) -> bool:
    return "queue" in (exc.message() or "").lower() and "UNAVAILABLE" in str(exc.status() or "")
