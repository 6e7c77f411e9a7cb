"""Text generation requests (chat and completions) for diffusion language models: the answer length, stop
strings, sampling, and the remasking decoder's knobs (block length, steps, confidence threshold).

The frontend checks a request here before it calls Triton, because inside a decoupled (streaming) Triton
response the error code is lost and a model-side rejection would reach the user as a 500; the ``dllm`` model
checks again for clients that reach it directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.params.common import (
    check_int,
    check_seed,
    check_text,
    int_in_range,
    limits_from_parameters,
    number_in_range,
)

ROLES = ("system", "user", "assistant", "tool")
# OpenAI's newer name for the system role; chat templates know only "system".
_ROLE_ALIASES = {"developer": "system"}


@dataclass(frozen=True)
class TextLimits:
    """What one dLLM accepts and how it decodes by default. config.pbtxt parameters override each field."""

    max_tokens: int = 4096  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256
    default_block_length: int = 32  # LLaDA's reference block length
    max_block_length: int = 4096
    default_steps: int = 0  # 0: one refinement step per answer token (LLaDA's reference setting)
    max_steps: int = 4096
    default_threshold: float = 0.0  # 0: off; else each step also unmasks every prediction this confident
    default_temperature: float = 0.0  # greedy, as LLaDA decodes by default
    max_prompt_chars: int = 100_000
    max_messages: int = 1024
    max_stop: int = 16

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> TextLimits:
        return limits_from_parameters(cls, parameters)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class TextParams:
    """A validated generation request: exactly one of ``prompt`` (completions) and ``messages`` (chat) is set.

    ``steps`` is the total number of refinement steps over the whole answer; the decoder shares them out
    between blocks. ``seed`` matters only when ``temperature > 0``.
    """

    prompt: str | None
    messages: tuple[ChatMessage, ...] | None
    max_tokens: int
    stop: tuple[str, ...]
    temperature: float
    seed: int
    block_length: int
    steps: int
    threshold: float

    def message_dicts(self) -> list[dict[str, str]]:
        """The messages as a chat template (and the ``MESSAGES`` input's JSON) takes them."""
        return [{"role": m.role, "content": m.content} for m in self.messages or ()]


def _content_text(content: object, where: str, role: str) -> str:
    """A message's content: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts (joined by
    newlines). An assistant turn that only called tools has no content. ``where`` names it in errors."""
    if content is None and role == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of text parts", "messages")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise InvalidRequest(f"{where}[{j}]: this model reads text only, got a part of type {kind!r}", "messages")
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}[{j}].text must be a string", "messages")
        texts.append(text)
    return "\n".join(texts)


def validate_messages(messages: object, limits: TextLimits) -> tuple[ChatMessage, ...]:
    """Chat messages from a list (the API) or its JSON text (the model's ``MESSAGES`` input)."""
    if isinstance(messages, (str, bytes)):
        try:
            messages = json.loads(messages)
        except ValueError as exc:
            raise InvalidRequest(f"messages is not valid JSON: {exc}", "messages") from exc
    if not isinstance(messages, list):
        raise InvalidRequest("messages must be a list of {role, content} objects", "messages")
    if not messages:
        raise InvalidRequest("messages must not be empty", "messages")
    if len(messages) > limits.max_messages:
        raise InvalidRequest(f"messages holds more than {limits.max_messages} messages", "messages")
    result = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"messages[{i}] must be an object with role and content", "messages")
        role = message.get("role")
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message.get('role')!r}", "messages"
            )
        result.append(ChatMessage(role, _content_text(message.get("content"), f"messages[{i}].content", role)))
    if sum(len(m.content) for m in result) > limits.max_prompt_chars:
        raise InvalidRequest(f"messages are longer than {limits.max_prompt_chars} characters in all", "messages")
    return tuple(result)


def validate_prompt(prompt: object, limits: TextLimits) -> str:
    """A completion prompt: a string, or a list holding one string (as some clients send it)."""
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("prompt must be one string (send one prompt per request)", "prompt")
        prompt = prompt[0]
    text = check_text(prompt, "prompt", limits.max_prompt_chars, required=True)
    assert text is not None
    return text


def validate_stop(stop: object, limits: TextLimits) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest("stop must be a string or a list of strings", "stop")
    if len(items) > limits.max_stop:
        raise InvalidRequest(f"stop holds more than {limits.max_stop} strings", "stop")
    if any(not s for s in items):
        raise InvalidRequest("stop strings must not be empty", "stop")
    return tuple(dict.fromkeys(items))


def validate_text_params(
    limits: TextLimits,
    *,
    prompt: object = None,
    messages: object = None,
    max_tokens: object = None,
    stop: object = None,
    temperature: object = None,
    seed: object = None,
    block_length: object = None,
    steps: object = None,
    threshold: object = None,
    n: object = None,
) -> TextParams:
    """Check every field against ``limits`` and fill defaults; ``None`` means "not given"."""
    if (prompt is None) == (messages is None):
        if prompt is None:
            raise InvalidRequest("messages (chat) or prompt (completions) is required", "messages")
        raise InvalidRequest("send either messages or prompt, not both", "prompt")
    if n is not None and check_int(n, "n") != 1:
        raise InvalidRequest("n must be 1: one choice per request is generated (send several requests)", "n")
    answer_tokens = int_in_range(max_tokens, limits.default_max_tokens, 1, limits.max_tokens, "max_tokens")
    default_steps = min(limits.default_steps or answer_tokens, limits.max_steps)
    return TextParams(
        prompt=None if prompt is None else validate_prompt(prompt, limits),
        messages=None if messages is None else validate_messages(messages, limits),
        max_tokens=answer_tokens,
        stop=validate_stop(stop, limits),
        temperature=number_in_range(temperature, limits.default_temperature, 0.0, 2.0, "temperature"),
        seed=check_seed(seed),
        block_length=int_in_range(
            block_length, limits.default_block_length, 1, limits.max_block_length, "block_length"
        ),
        steps=int_in_range(steps, default_steps, 1, limits.max_steps, "steps"),
        threshold=number_in_range(threshold, limits.default_threshold, 0.0, 1.0, "threshold"),
    )
