"""The one place where failures become HTTP responses in OpenAI's error shape.

Routers raise ``OpenAIError`` (or let ``InvalidRequest`` propagate), failed model calls become one through
``failure_error``, and the handlers installed by ``install_error_handlers`` turn every one of them — FastAPI's
own validation errors and unknown routes included — into ``{"error": {"message", "type", "param", "code"}}``
with a real status.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from diffusion_runtime.errors import InvalidRequest
from openai_frontend.job_store import JobStoreUnavailable
from openai_frontend.responses import JSONResponse
from openai_frontend.storage import StorageUnavailable

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    503: "service_unavailable",
    504: "timeout",
}


# Seconds a client is told to wait after a 503: short, since a model whose process died is reloaded at once
# and a request to it is answered at once until it is back (the OpenAI SDK retries on its own within 60 s).
RETRY_UNAVAILABLE_AFTER_S = 5


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.status == 503:  # something is down for now (a model being reloaded, Triton, storage): say when
            headers.setdefault("retry-after", str(RETRY_UNAVAILABLE_AFTER_S))
        elif self.status >= 500:
            headers.setdefault("x-should-retry", "false")  # a failed generation is not worth re-running blindly
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="invalid_value")


def model_unavailable(reason: str) -> OpenAIError:
    """The model is down on every server that has it, for now (503 with Retry-After, see ``response``)."""
    return OpenAIError(503, f"the model is unavailable: {reason}; retry shortly", code="model_unavailable")


def queue_full() -> OpenAIError:
    """The model (on every server) has as many requests waiting as it may: the client should come back."""
    return OpenAIError(429, "the model's queue is full; retry shortly", code="queue_full", headers={"retry-after": "1"})


class Failure(Enum):
    """What went wrong with a call to a model, in the kinds a client is told apart; ``openai_frontend.triton.failures``
    reads them off Triton's errors, ``failure_error`` answers each."""

    INVALID_ARGUMENT = "invalid argument"  # the request: the user's to fix
    NOT_FOUND = "not found"  # no such model on the server
    QUEUE_FULL = "queue full"  # the model has as many requests waiting as it may
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline exceeded"
    SERVER_UNAVAILABLE = "server unavailable"  # tritonserver cannot be reached
    MODEL_DOWN = "model down"  # the model's process died; it is being reloaded
    GENERATION_FAILED = "generation failed"  # the model or its engine failed


def failure_error(failure: Failure, message: str, param: str | None = None) -> OpenAIError:
    """The one mapping from a failed model call to what the client sees (``message``: what the server said)."""
    match failure:
        case Failure.INVALID_ARGUMENT:
            return OpenAIError(400, message, param=param, code="invalid_value")
        case Failure.NOT_FOUND:
            return OpenAIError(404, message, code="model_not_found")
        case Failure.QUEUE_FULL:
            return queue_full()
        case Failure.CANCELLED:
            return OpenAIError(499, "the request was cancelled", code="cancelled")
        case Failure.DEADLINE_EXCEEDED:
            return OpenAIError(504, "the generation did not finish in time", code="timeout")
        case Failure.SERVER_UNAVAILABLE:
            return OpenAIError(503, f"the inference server is unavailable: {message}", code="triton_unavailable")
        case Failure.MODEL_DOWN:
            return model_unavailable(f"its process in the inference server died ({message})")
        case Failure.GENERATION_FAILED:
            return OpenAIError(500, f"generation failed: {message}", code="generation_failed")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing":
        return (f"{param} is required" if param else "a JSON request body is required"), param
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        return invalid(exc.message, exc.param).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return invalid(message, param).response()

    @app.exception_handler(StorageUnavailable)
    async def _storage(_: Request, exc: StorageUnavailable) -> JSONResponse:
        log.error("media storage failed: %s", exc)
        return OpenAIError(503, f"media storage failed: {exc}", code="storage_unavailable").response()

    @app.exception_handler(JobStoreUnavailable)
    async def _job_store(_: Request, exc: JobStoreUnavailable) -> JSONResponse:
        log.error("job store failed: %s", exc)
        return OpenAIError(
            503,
            "the video job store is unavailable; retry shortly",
            code="job_store_unavailable",
            headers={"retry-after": "2"},
        ).response()

    @app.exception_handler(json.JSONDecodeError)
    async def _json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return invalid("the request body is not valid JSON").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return OpenAIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return OpenAIError(500, f"internal error: {type(exc).__name__}").response()
