"""``POST /v1/chat/completions`` and ``POST /v1/completions``: text from the diffusion LM, whole or as SSE.

Both endpoints stream from the decoupled ``dllm`` model, which answers one response per decoded block.
Streaming sends one chunk per block. The first block is awaited before the response starts, so a request
that fails before producing text gets a real HTTP status; later failures become an ``event: error``. A
client that goes away closes the event iterator, which cancels the gRPC stream and so the Triton request:
the model stops decoding between refinement steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import APIRouter, Request

from openai_frontend import sse
from openai_frontend.context import Ctx, FrontendContext
from openai_frontend.errors import OpenAIError
from openai_frontend.responses import JSONResponse
from openai_frontend.schemas.text import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
)
from openai_frontend.services import text as text_service
from openai_frontend.services.text import Piece
from openai_frontend.triton import cancel_on_disconnect

log = logging.getLogger(__name__)
router = APIRouter()


@dataclass(frozen=True)
class Reply:
    """Builds the response objects of one request, as chat or as text completion."""

    chat: bool
    id: str
    created: int
    model: str

    @classmethod
    def new(cls, chat: bool, model: str) -> Reply:
        return cls(chat, f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time()), model)

    def whole(self, text: str, last: Piece) -> ChatCompletion | Completion:
        assert last.usage is not None
        if self.chat:
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=last.finish_reason)
            return ChatCompletion(
                id=self.id, created=self.created, model=self.model, choices=[choice], usage=last.usage
            )
        choice = CompletionChoice(text=text, finish_reason=last.finish_reason)
        return Completion(id=self.id, created=self.created, model=self.model, choices=[choice], usage=last.usage)

    def chunk(self, text: str | None = None, finish_reason: str | None = None, *, first: bool = False) -> str:
        if self.chat:
            delta = ChatDelta(role="assistant" if first else None, content=text)
            choices = [ChatChunkChoice(delta=delta, finish_reason=finish_reason)]
            return sse.data(self._chat_chunk(choices).model_dump(mode="json"))
        choices = [CompletionChoice(text=text or "", finish_reason=finish_reason)]
        return sse.data(self._completion(choices).model_dump(mode="json"))

    def usage_chunk(self, usage: Usage) -> str:
        """``stream_options.include_usage``: a last chunk with the usage and no choices."""
        obj = self._chat_chunk([], usage) if self.chat else self._completion([], usage)
        return sse.data(obj.model_dump(mode="json"))

    def _chat_chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def _completion(self, choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)


async def _collect(pieces: AsyncIterator[Piece]) -> tuple[str, Piece]:
    texts = []
    async with aclosing(pieces):
        async for piece in pieces:
            texts.append(piece.text)
            if piece.finish_reason is not None:
                return "".join(texts), piece
    raise OpenAIError(500, "the model's response stream ended without a finish reason")


async def _first(pieces: AsyncIterator[Piece]) -> Piece:
    """The first piece; if that fails or is cancelled, the stream is closed (so the Triton request too)."""
    try:
        return await anext(pieces)
    except BaseException:
        await pieces.aclose()
        raise


async def _events(
    reply: Reply, first: Piece, pieces: AsyncIterator[Piece], include_usage: bool, deadline: float
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    async with aclosing(pieces):
        piece = first
        try:
            if reply.chat:
                yield reply.chunk("", first=True)
            while True:
                if piece.text:
                    yield reply.chunk(piece.text)
                if piece.finish_reason is not None:
                    break
                piece = await asyncio.wait_for(anext(pieces), timeout=max(deadline - loop.time(), 0.0))
        except OpenAIError as exc:
            yield sse.error(exc.body())
            return
        except asyncio.TimeoutError:
            yield sse.error(OpenAIError(504, "the generation did not finish in time", code="timeout").body())
            return
        except Exception as exc:
            log.exception("text stream failed")
            yield sse.error(OpenAIError(500, f"internal error: {type(exc).__name__}").body())
            return
        yield reply.chunk(finish_reason=piece.finish_reason)
        if include_usage and piece.usage is not None:
            yield reply.usage_chunk(piece.usage)
        yield sse.DONE


async def _respond(
    body: ChatCompletionRequest | CompletionRequest, request: Request, ctx: FrontendContext
) -> JSONResponse | sse.EventStreamResponse:
    chat = isinstance(body, ChatCompletionRequest)
    job = await text_service.job(ctx, body)
    reply = Reply.new(chat, job.model.id)
    timeout = ctx.settings.request_timeout
    pieces = text_service.generate(ctx, job, stream=bool(body.stream))
    if not body.stream:
        text, last = await cancel_on_disconnect(request, _collect(pieces), timeout)
        return JSONResponse(reply.whole(text, last).model_dump(mode="json"))
    deadline = asyncio.get_running_loop().time() + timeout
    # The first block before the headers: a failure before any text keeps its real status.
    first = await cancel_on_disconnect(request, _first(pieces), timeout)
    return sse.EventStreamResponse(_events(reply, first, pieces, body.include_usage, deadline))


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, ctx: Ctx
) -> JSONResponse | sse.EventStreamResponse:
    return await _respond(body, request, ctx)


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, ctx: Ctx
) -> JSONResponse | sse.EventStreamResponse:
    return await _respond(body, request, ctx)
