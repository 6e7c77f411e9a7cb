"""Ending a generation when its HTTP client goes away or its time is up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from openai_frontend.errors import OpenAIError

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T], timeout: float | None) -> T:
    """Run ``work`` until it finishes, the client disconnects, or ``timeout`` passes; the latter two cancel it
    (and with it the Triton request). The body must already have been read."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        if watcher in done:
            log.info("client disconnected; cancelled its generation")
            raise OpenAIError(499, "the client disconnected", code="cancelled")
        raise OpenAIError(504, f"the generation did not finish within {timeout:g} s", code="timeout")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
