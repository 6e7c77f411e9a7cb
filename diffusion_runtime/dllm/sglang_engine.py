"""The SGLang text engine: ``sglang.Engine(..., dllm_algorithm=...)`` in the stub, streaming block by block.

NOT EXERCISED: SGLang's diffusion-LM path needs CUDA and its own kernels (``sgl_kernel``): no CPU host runs it,
and the GPU hosts this project has run on had no ``sglang-kernel`` wheel. Only the mapping of our settings and requests
to SGLang's arguments (``engine_kwargs``, ``sampling_params``, ``finish_reason``) is unit-tested; the calls
below follow sglang 0.5.23's ``Engine.generate(input_ids=..., sampling_params=..., stream=True)`` as read
from the wheel.

What differs from the transformers engine, by SGLang's design:
- The algorithm's knobs are fixed when the engine starts: block size and threshold come from the YAML file
  in ``dllm_algorithm_config`` (SGLang's LowConfidence: ``threshold``, default 0.95, unmasking at least
  one token per step). A request's ``block_length``, ``steps`` and ``threshold`` are ignored here.
- LowConfidence decodes greedily; SGLang ignores ``temperature`` for it.
- Stop strings, detokenization and token counts are SGLang's own. With ``incremental_streaming_output``
  each streamed chunk carries only the new text (one chunk per decoded block).
- Cancellation is honoured between streamed chunks: the request is aborted in SGLang's scheduler.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from diffusion_runtime.dllm.base import TextDelta, TextEngineConfig, prompt_token_ids
from diffusion_runtime.engines.base import StepHook
from diffusion_runtime.engines.sglang_engine import read_config_json
from diffusion_runtime.errors import EngineFailure, GenerationCancelled
from diffusion_runtime.params.text import TextParams

log = logging.getLogger(__name__)

# The diffusion LMs SGLang runs, by the first architecture in config.json (the table in sglang 0.5.23's
# ``DllmConfig.from_server_args``, which also gives each its block size and mask token). SGLang reads the
# architecture, never the folder's name, so a folder may be named anything; another architecture cannot run.
SGLANG_DLLM_ARCHITECTURES = (
    "LLaDA2MoeModelLM",
    "SDARForCausalLM",
    "SDARMoeForCausalLM",
    "DiffusionGemmaForBlockDiffusion",
)


def check_architecture(model_path: str) -> None:
    """Stop at load, with the parameter to change, on a local folder SGLang's dLLM path would reject deep inside
    its scheduler (``Unknown diffusion LLM``). A hub id is left to SGLang."""
    if not os.path.isdir(model_path):
        return
    architectures = read_config_json(os.path.join(model_path, "config.json")).get("architectures") or []
    if not architectures:
        raise ValueError(f"{model_path} has no config.json naming its architectures: SGLang cannot place it")
    if architectures[0] not in SGLANG_DLLM_ARCHITECTURES:
        raise ValueError(
            f"SGLang's diffusion-LM engine runs {', '.join(SGLANG_DLLM_ARCHITECTURES)} checkpoints; {model_path} is "
            f"{architectures[0]}: set the engine parameter to transformers (the project's own decoder; LLaDA-8B also "
            "needs mask_token_id 126336)"
        )


def engine_kwargs(config: TextEngineConfig) -> dict[str, Any]:
    """``sglang.Engine`` kwargs for a config (kept separate so it can be unit-tested)."""
    kwargs: dict[str, Any] = {
        "model_path": config.model_path,
        "dllm_algorithm": config.dllm_algorithm,
        "trust_remote_code": config.trust_remote_code,
        "tp_size": config.num_gpus,
        "incremental_streaming_output": True,
    }
    if config.dllm_algorithm_config:
        kwargs["dllm_algorithm_config"] = config.dllm_algorithm_config
    if config.dtype != "auto":
        kwargs["dtype"] = config.dtype
    if config.max_running_requests > 0:
        kwargs["max_running_requests"] = config.max_running_requests
    kwargs.update(config.sglang_extra_args())
    return kwargs


def sampling_params(params: TextParams) -> dict[str, Any]:
    """SGLang's per-request sampling parameters for a validated request."""
    sampling: dict[str, Any] = {
        "max_new_tokens": params.max_tokens,
        "temperature": params.temperature,
        "sampling_seed": params.seed,
    }
    if params.stop:
        sampling["stop"] = list(params.stop)
    return sampling


def finish_reason(meta_info: Mapping[str, Any]) -> str | None:
    """OpenAI's finish reason from SGLang's ``{"type": "stop"|"length"|"abort", ...}`` (None: not finished)."""
    reason = meta_info.get("finish_reason")
    if reason is None:
        return None
    kind = reason.get("type") if isinstance(reason, Mapping) else str(reason)
    if kind == "abort":
        detail = reason.get("message", "") if isinstance(reason, Mapping) else ""
        raise EngineFailure(f"SGLang aborted the request {detail}".strip())
    return "length" if kind == "length" else "stop"


def chunk_delta(chunk: Mapping[str, Any]) -> TextDelta:
    """One streamed ``Engine.generate`` chunk (incremental: ``text`` is new text) as our delta."""
    meta = chunk.get("meta_info", {})
    reason = finish_reason(meta)
    if reason is None:
        return TextDelta(chunk.get("text") or "")
    return TextDelta(
        chunk.get("text") or "",
        finish_reason=reason,
        prompt_tokens=int(meta.get("prompt_tokens", 0)),
        completion_tokens=int(meta.get("completion_tokens", 0)),
    )  # SGLang does not report its refinement steps


class SGLangTextEngine:
    name = "sglang"
    # ``Engine.generate`` drives one asyncio loop of its own and cannot be entered from two threads at once, so the
    # model hands it one request at a time; SGLang batches what its scheduler holds (``max_running_requests``).
    max_concurrent = 1

    def __init__(self, config: TextEngineConfig) -> None:
        import sglang
        from transformers import AutoTokenizer

        check_architecture(config.model_path)
        self.config = config
        # The chat template is applied here, as for the transformers engine, so both count prompt tokens alike.
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_path, trust_remote_code=config.trust_remote_code)
        kwargs = engine_kwargs(config)
        log.info("starting sglang.Engine: %s", kwargs)
        self.engine = sglang.Engine(**kwargs)

    def generate(self, params: TextParams, on_step: StepHook) -> Iterator[TextDelta]:
        on_step(0, 1)
        rid = uuid.uuid4().hex
        chunks = self.engine.generate(
            input_ids=prompt_token_ids(self.tokenizer, params),
            sampling_params=sampling_params(params),
            stream=True,
            rid=rid,
        )
        for count, chunk in enumerate(chunks, start=1):
            delta = chunk_delta(chunk)
            yield delta
            if delta.finish_reason is not None:
                return
            try:
                on_step(count, 0)
            except GenerationCancelled:
                self.engine.tokenizer_manager.abort_request(rid=rid)
                raise
        raise EngineFailure("SGLang's stream ended without a finish reason")

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()
