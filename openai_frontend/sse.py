"""Server-sent events as OpenAI's clients (its SDK, AIPerf) read them.

Every event ends with a blank line (the SDK drops a last event without one); a stream ends with
``data: [DONE]``; a failure after the stream has started is ``event: error`` with an OpenAI error body (the SDK
raises it, AIPerf counts it as a failed request). No keepalives are sent: each decoded block is an event, and
the first is awaited before the response starts (were they ever needed, only ``:`` comments are safe; an
``event:`` line without JSON data crashes the SDK). Nothing is compressed or buffered.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # and no proxy buffering (nginx)


def data(payload: Any) -> str:
    """One ``data:`` event; JSON is a single line, so no payload can break the framing."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n"


def error(body: dict[str, Any]) -> str:
    """A mid-stream failure: ``body`` is OpenAI's ``{"error": {...}}``."""
    return f"event: error\n{data(body)}"


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that always closes its event iterator, however the stream ends.

    Starlette cancels the body while it awaits the next event when the client disconnects, but if the
    disconnect lands while an event is being sent, the iterator is merely abandoned, and the Triton request
    it drives would run on until garbage collection. Closing it here, shielded from the cancellation that
    may be under way, cancels that request at once.
    """

    media_type = "text/event-stream"

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(content, status_code=status_code, headers={**HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
