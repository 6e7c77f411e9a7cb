"""Text from the diffusion LM: one validated request, streamed from the decoupled ``dllm`` model as pieces (one
per decoded block, or one in all when not streaming)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffusion_runtime.contract import TEXT
from diffusion_runtime.params.text import TextLimits, TextParams, validate_text_params
from openai_frontend.context import FrontendContext
from openai_frontend.schemas.text import ChatCompletionRequest, CompletionRequest, Usage
from openai_frontend.triton import ServedModel

OUTPUTS = TEXT.output_names


@dataclass(frozen=True)
class TextJob:
    model: ServedModel
    params: TextParams


@dataclass(frozen=True)
class Piece:
    """One response of the model: the text of a decoded block; the last one also ends the answer."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None


async def job(ctx: FrontendContext, body: ChatCompletionRequest | CompletionRequest) -> TextJob:
    """The model a chat or text completion request goes to, and its settings checked against the model's."""
    chat = isinstance(body, ChatCompletionRequest)
    model = await ctx.backend.resolve(body.model, "text")
    params = validate_text_params(
        TextLimits.from_parameters(model.parameters),
        messages=body.messages if chat else None,
        prompt=None if chat else body.prompt,
        max_tokens=body.answer_tokens if chat else body.max_tokens,
        stop=body.stop,
        temperature=body.temperature,
        seed=body.knob("seed"),
        block_length=body.knob("block_length"),
        steps=body.knob("steps"),
        threshold=body.knob("threshold"),
        n=body.n,
    )
    return TextJob(model, params)


def text_inputs(params: TextParams, stream: bool = True) -> dict[str, np.ndarray]:
    """The model's input tensors for one request. ``stream`` false: the model answers once, with the whole text,
    instead of once per block."""
    messages = json.dumps(params.message_dicts(), ensure_ascii=False) if params.messages is not None else None
    return TEXT.request_tensors(
        stream=stream,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        seed=params.seed,
        block_length=params.block_length,
        steps=params.steps,
        threshold=params.threshold,
        messages=messages,
        prompt=params.prompt if messages is None else None,
        stop=params.stop or None,
    )


def _piece(outputs: dict[str, np.ndarray]) -> Piece:
    def scalar(name: str) -> Any:
        return outputs[name].reshape(-1)[0]

    text = bytes(scalar("TEXT")).decode("utf-8")
    if "FINISH_REASON" not in outputs:
        return Piece(text)
    prompt, completion = int(scalar("PROMPT_TOKENS")), int(scalar("COMPLETION_TOKENS"))
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return Piece(text, bytes(scalar("FINISH_REASON")).decode(), usage)


async def generate(ctx: FrontendContext, job: TextJob, stream: bool = True) -> AsyncIterator[Piece]:
    """The model's responses as pieces; closing this iterator cancels the Triton request."""
    inputs = text_inputs(job.params, stream)
    responses = ctx.backend.stream(job.model, inputs, OUTPUTS, is_final=lambda o: "FINISH_REASON" in o)
    async with aclosing(responses):
        async for outputs in responses:
            yield _piece(outputs)
