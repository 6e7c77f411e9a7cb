"""The SGLang text engine: ``sglang.Engine(..., dllm_algorithm=...)`` in the stub, streaming block by block.

Where it has run: SGLang's diffusion-LM path needs CUDA, so no CPU host runs it; the tests cover the mapping of our
settings and requests to SGLang's arguments (``engine_kwargs``, ``sampling_params``, ``finish_reason``). On an H200
without SGLang's compiled kernels (pure-PyTorch stand-ins for the five ``sgl_kernel`` calls of its LLaDA2 path,
``attention_backend=triton``, no CUDA graphs), ``sglang.Engine`` decoded the mini LLaDA2 shape one and eight at a
time, and the ``dllm`` model loaded LLaDA2.0-mini through Triton with this adapter. The calls below follow sglang
0.5.23's ``Engine.async_generate(input_ids=..., sampling_params=..., stream=True)``.

What differs from the transformers engine, by SGLang's design:
- The algorithm's knobs are fixed when the engine starts: block size and threshold come from the YAML file
  in ``dllm_algorithm_config`` (SGLang's LowConfidence: ``threshold``, default 0.95, unmasking at least
  one token per step). A request's ``block_length``, ``steps`` and ``threshold`` are ignored here.
- LowConfidence decodes greedily; SGLang ignores ``temperature`` for it.
- Stop strings, detokenization and token counts are SGLang's own. With ``incremental_streaming_output``
  each streamed chunk carries only the new text (one chunk per decoded block).
- Cancellation is honoured between streamed chunks: the request is aborted in SGLang's scheduler.
- Concurrent requests reach SGLang together (its scheduler batches them): each request thread iterates
  ``Engine.async_generate``'s stream on SGLang's event loop, which runs in a thread of its own (``LoopThread``);
  ``Engine.generate``'s own stream runs that loop in the caller's thread and cannot serve two threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import closing
from typing import Any, TypeVar

from diffusion_runtime.dllm.base import DEFAULT_CONCURRENT_REQUESTS, TextDelta, TextEngineConfig, prompt_token_ids
from diffusion_runtime.engines.base import StepHook
from diffusion_runtime.engines.sglang_engine import read_config_json
from diffusion_runtime.errors import EngineFailure
from diffusion_runtime.params.text import TextParams

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    # SGLang's dLLM scheduler runs one request at a time unless told otherwise (its DllmConfig defaults
    # max_running_requests to 1), while this engine admits as many as the model's max_running_requests: the same
    # number goes to SGLang, so the requests in flight are decoded together.
    kwargs["max_running_requests"] = config.max_running_requests or DEFAULT_CONCURRENT_REQUESTS
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


class LoopThread:
    """An asyncio event loop running in a thread of its own, on which other threads run coroutines and iterate
    async generators, several at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.Thread(target=self._run, name="sglang-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Wait, in the calling thread, for ``awaitable`` run on the loop."""

        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result()

    def iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """The items of an async iterator living on the loop, one at a time; closing this closes it there."""
        try:
            while True:
                try:
                    yield self.run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                self.run(close())

    def call_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Run a plain function on the loop's thread (for objects only that thread may touch)."""
        self.loop.call_soon_threadsafe(function, *args)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()


class SGLangTextEngine:
    name = "sglang"

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
        self.max_concurrent = config.max_running_requests or DEFAULT_CONCURRENT_REQUESTS
        self.loop = LoopThread(self.engine.loop)
        self._tokenizer_lock = threading.Lock()

    def generate(self, params: TextParams, on_step: StepHook) -> Iterator[TextDelta]:
        on_step(0, 1)
        rid = uuid.uuid4().hex
        with self._tokenizer_lock:
            input_ids = prompt_token_ids(self.tokenizer, params)
        stream = self.loop.run(
            self.engine.async_generate(
                input_ids=input_ids, sampling_params=sampling_params(params), stream=True, rid=rid
            )
        )
        finished = False
        try:
            with closing(self.loop.iterate(stream)) as chunks:
                for count, chunk in enumerate(chunks, start=1):
                    delta = chunk_delta(chunk)
                    finished = delta.finish_reason is not None
                    yield delta
                    if finished:
                        return
                    on_step(count, 0)
        finally:
            if not finished:  # cancelled, failed, or the reader left: free SGLang's slot
                self.loop.call_soon(self.engine.tokenizer_manager.abort_request, rid)
        raise EngineFailure("SGLang's stream ended without a finish reason")

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            self.loop.stop()
            engine.shutdown()
