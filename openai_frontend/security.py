"""Who may call, and how much they may send: API keys and request body limits, as ASGI middleware.

Keys are compared in constant time. Health checks stay open (load balancers probe them) and so do stored
media URLs, which are unguessable and handed to clients that fetch them without headers (browsers, <img>), and
the playground's static page, which must load before it can ask a person for their key (its API calls send it).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = ("/health", "/media/", "/playground/")
OPEN_PAGES = ("/", "/playground")  # exact paths: the redirects to the playground


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _send_error(send: Send, status: int, message: str, code: str, headers: Sequence[tuple[bytes, bytes]] = ()):
    error_type = "authentication_error" if status == 401 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` must name one of ``keys`` (when any are configured)."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys if key]

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                token = token.strip()
                return scheme.lower() == b"bearer" and any(hmac.compare_digest(token, key) for key in self.keys)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        is_open = path.startswith(OPEN_PATHS) or path in OPEN_PAGES
        if scope["type"] != "http" or not self.keys or is_open or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await _send_error(
            send,
            401,
            "a valid API key is required: send 'Authorization: Bearer <key>'",
            "invalid_api_key",
            [(b"www-authenticate", b"Bearer")],
        )


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing lets it through and the error handlers answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413, by declared length up front and by counting otherwise."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than {self.limit} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _send_error(send, 413, message, "body_too_large")
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return incoming

        async def tracking_send(outgoing: Message) -> None:
            nonlocal started
            started = started or outgoing["type"] == "http.response.start"
            await send(outgoing)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_error(send, 413, message, "body_too_large")
