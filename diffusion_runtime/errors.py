"""Error types shared by the Triton models and the frontend.

The models turn these into Triton error codes and the frontend into HTTP statuses; both mappings live beside
the code that speaks each protocol (``triton_io.to_triton_error`` and ``openai_frontend.errors``).
"""

from __future__ import annotations


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
