"""Wire shapes of ``/v1/chat/completions`` and ``/v1/completions``, streamed (chunks) and not.

Message contents, ranges and the model's limits are checked by ``diffusion_runtime.params.text``, which the
``dllm`` model uses too; here only the JSON types are. The diffusion decoder's knobs (``block_length``,
``steps``, ``threshold``) and ``seed`` come at the top level (the SDK's ``extra_body``) or in ``nvext``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from openai_frontend.schemas.common import KnobsFromNvExt


class TextNvExt(BaseModel):
    model_config = ConfigDict(extra="allow")

    block_length: int | None = None
    steps: int | None = None
    threshold: float | None = None
    seed: int | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class _TextRequest(KnobsFromNvExt):
    model: StrictStr | None = None
    max_tokens: int | None = None
    stop: StrictStr | list[StrictStr] | None = None
    temperature: float | None = None
    top_p: float | None = None  # accepted, not used: the decoder samples from the full distribution
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    block_length: int | None = Field(default=None, description="Answer tokens per diffusion block")
    steps: int | None = Field(default=None, description="Refinement steps over the whole answer")
    threshold: float | None = Field(default=None, description="Also unmask every prediction this confident")
    nvext: TextNvExt | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_TextRequest):
    messages: list[Any]  # roles and contents are checked by validate_messages
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens; wins when both are given

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_TextRequest):
    prompt: StrictStr | list[StrictStr]
    echo: bool | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def _none(value: object) -> bool:
    return value is None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """A chunk's delta carries only what it has: the role first, then content."""

    role: Literal["assistant"] | None = Field(default=None, exclude_if=_none)
    content: str | None = Field(default=None, exclude_if=_none)


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(default=None, exclude_if=_none)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(BaseModel):
    """Both the whole answer and, with ``usage`` left out until the end, one streamed chunk: OpenAI uses the
    same ``text_completion`` object for both."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(default=None, exclude_if=_none)
