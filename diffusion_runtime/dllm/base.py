"""The text engine interface: what the ``dllm`` model.py calls, whichever library runs the diffusion LM.

This module knows no engine: each engine module imports it, and ``dllm.registry`` (which picks an engine from the
``engine`` parameter) imports the chosen engine lazily, so nothing here imports in a circle.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from diffusion_runtime.engines.base import EngineConfig, StepHook, json_object
from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.params.text import TextParams

FINISH_REASONS = ("stop", "length")
# Requests a model runs together when max_running_requests is 0: with the transformers engine, one batched forward
# per refinement step over them (the dllm model.py says how they run; 1 decodes one at a time inside execute).
DEFAULT_CONCURRENT_REQUESTS = 8


@dataclass(frozen=True)
class TextEngineConfig:
    """Engine settings from the ``dllm`` model's config parameters (see its ``config.pbtxt``)."""

    model_path: str
    engine: str = "auto"  # a name in ``dllm.registry.TEXT_ENGINES``, or auto
    device: str = "cpu"
    dtype: str = "auto"
    num_gpus: int = 1
    trust_remote_code: bool = True  # LLaDA-shaped checkpoints ship their modelling code
    cpu_threads: int = 0  # torch intra-op threads on a CPU device; 0: torch's default (one per core)
    mask_token_id: int | None = None  # None: the tokenizer's mask token
    dllm_algorithm: str = "LowConfidence"
    dllm_algorithm_config: str = ""  # a YAML file for SGLang's algorithm (block_size, threshold, ...)
    max_running_requests: int = 0  # requests run together; 0: DEFAULT_CONCURRENT_REQUESTS
    sglang_args: str = ""  # JSON object of further sglang.Engine kwargs

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], device: str) -> TextEngineConfig:
        def get(key: str, default: str) -> str:
            value = parameters.get(key, "")
            return value.strip() if value.strip() else default

        mask = get("mask_token_id", "")
        return cls(
            model_path=get("model_path", ""),
            engine=get("engine", "auto").lower(),
            device=device,
            dtype=get("dtype", "auto"),
            num_gpus=int(get("num_gpus", "1")),
            trust_remote_code=get("trust_remote_code", "true").lower() in ("1", "true", "yes"),
            cpu_threads=int(get("cpu_threads", "0")),
            mask_token_id=int(mask) if mask else None,
            dllm_algorithm=get("dllm_algorithm", "LowConfidence"),
            dllm_algorithm_config=get("dllm_algorithm_config", ""),
            max_running_requests=int(get("max_running_requests", "0")),
            sglang_args=get("sglang_args", ""),
        )

    def image_rules(self) -> EngineConfig:
        """The image engines' config, whose device rules (auto engine, auto dtype) text engines share."""
        return EngineConfig(model_path=self.model_path, engine="auto", device=self.device, dtype=self.dtype)

    def torch_dtype(self):  # -> torch.dtype
        return self.image_rules().torch_dtype()

    def sglang_extra_args(self) -> dict[str, Any]:
        return json_object(self.sglang_args, "sglang_args")


@dataclass(frozen=True)
class TextDelta:
    """New answer text, one per decoded block. The last delta of a generation has ``finish_reason`` (``stop``:
    end of sequence or a stop string; ``length``: ``max_tokens`` reached) and the token counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0  # refinement steps run, for the steps/s metric


class TextEngine(Protocol):
    """Prompt or messages in, text deltas out. The last item yielded always carries ``finish_reason``;
    ``on_step`` runs between refinement steps (or streamed chunks) and may raise ``GenerationCancelled``.
    ``generate`` may be called from ``max_concurrent`` threads at once (the model runs that many requests
    together); closing the iterator early abandons the request."""

    name: str
    max_concurrent: int

    def generate(self, params: TextParams, on_step: StepHook) -> Iterator[TextDelta]: ...

    def close(self) -> None: ...


def prompt_token_ids(tokenizer: Any, params: TextParams) -> list[int]:
    """The prompt as token ids: messages through the model's chat template (which adds its own special
    tokens), a completion prompt as the tokenizer encodes text (BOS included where the model uses one)."""
    if params.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequest("this model has no chat template: use /v1/completions with a prompt", "messages")
        text = tokenizer.apply_chat_template(params.message_dicts(), add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(params.prompt)["input_ids"])
