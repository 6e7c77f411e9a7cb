"""Error types shared by the Triton models and the frontend, and the form their messages take between them.

The models turn these into Triton errors (``triton_io.error_for``) and the frontend into HTTP statuses
(``openai_frontend.triton.failures`` reads them, ``openai_frontend.errors`` maps them). Inside a decoupled stream
Triton drops an error's code and keeps only its message, so the message itself carries what kind of failure it
is: ``<kind>[ [<param>]]: <detail>``, e.g. ``invalid argument [seed]: seed must be ...``; ``error_message`` writes
it and ``read_error_message`` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class InvalidRequest(ValueError):
    """A request a user can fix: the message says what to change, ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class GenerationCancelled(RuntimeError):
    """The client went away (Triton reported the request cancelled) and the engine stopped early."""


class EngineFailure(RuntimeError):
    """The engine failed or returned fewer results than asked for; not the user's fault."""


class ErrorKind(str, Enum):
    """The kinds of model failure a client is told apart; the value is the message's leading words."""

    INVALID_ARGUMENT = "invalid argument"  # the user's to fix: 400
    CANCELLED = "cancelled"  # the client went away
    GENERATION_FAILED = "generation failed"  # the model's or engine's fault: 500


@dataclass(frozen=True)
class ModelError:
    """A model's error message, read back: its kind, the field at fault (if any), and what happened."""

    kind: ErrorKind
    detail: str
    param: str | None = None


def error_message(exc: BaseException) -> str:
    """The message a model fails a request with."""
    if isinstance(exc, InvalidRequest):
        error = ModelError(ErrorKind.INVALID_ARGUMENT, exc.message, exc.param)
    elif isinstance(exc, GenerationCancelled):
        error = ModelError(ErrorKind.CANCELLED, str(exc))
    else:
        error = ModelError(ErrorKind.GENERATION_FAILED, f"{type(exc).__name__}: {exc}")
    param = f" [{error.param}]" if error.param else ""
    return f"{error.kind.value}{param}: {error.detail}"


def read_error_message(message: str) -> ModelError | None:
    """The model error ``message`` carries, or None for one a model did not write (Triton's own)."""
    head, separator, detail = message.partition(": ")
    if not separator:
        return None
    for kind in ErrorKind:
        if head == kind.value:
            return ModelError(kind, detail)
        if head.startswith(f"{kind.value} [") and head.endswith("]"):
            return ModelError(kind, detail, head[len(kind.value) + 2 : -1])
    return None
