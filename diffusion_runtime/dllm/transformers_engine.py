"""The portable text engine: a masked LM loaded by ``transformers``, decoded by ``decoder.decode_blocks``.

Any checkpoint whose forward pass maps token ids to per-position vocabulary logits works: masked LMs that
``AutoModelForMaskedLM`` knows (BERT, ModernBERT: the tiny test model), and LLaDA-shaped checkpoints with
remote code (see ``load_model``; LLaDA-8B's mask id is 126336). The mask token id is the ``mask_token_id``
parameter when set, else the tokenizer's mask token. Only the tiny ModernBERT model has run here (no hub
access); real LLaDA checkpoints on this engine are untested.

Requests running at the same time (the model calls ``generate`` from up to ``max_concurrent`` threads) are decoded
together by one ``BatchedDecoder``: one forward per refinement step over all of them (see ``dllm.batching``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from diffusion_runtime.dllm.base import DEFAULT_CONCURRENT_REQUESTS, TextDelta, TextEngineConfig, prompt_token_ids
from diffusion_runtime.dllm.batching import BatchedDecoder
from diffusion_runtime.dllm.decoder import DecodeSettings
from diffusion_runtime.dllm.detokenize import AnswerText
from diffusion_runtime.engines.base import StepHook
from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.params.text import TextParams


def load_model(config: TextEngineConfig) -> Any:
    """The first auto class that knows the checkpoint, in eval mode on the device. Masked LMs come first; remote
    code for LLaDA-class checkpoints registers other classes (LLaDA-8B: ``AutoModel``, whose ``LLaDAModelLM``
    returns logits; LLaDA2.0: ``AutoModelForCausalLM``), so those are tried next. Whatever loads must return
    ``.logits`` for every position; it is run with full (bidirectional) attention."""
    import transformers

    kwargs = {"dtype": config.torch_dtype(), "trust_remote_code": config.trust_remote_code}
    errors = []
    for name in ("AutoModelForMaskedLM", "AutoModelForCausalLM", "AutoModel"):
        try:
            model = getattr(transformers, name).from_pretrained(config.model_path, **kwargs)
        except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
            errors.append(f"{name}: {exc}")
            continue
        return model.to(config.device).eval()
    raise ValueError(f"no transformers auto class loads {config.model_path}: " + "; ".join(errors))


def eos_token_ids(tokenizer: Any, model: Any) -> set[int]:
    """End-of-answer tokens: the tokenizer's eos and whatever the checkpoint's generation config adds."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation = getattr(model, "generation_config", None)
    extra = getattr(generation, "eos_token_id", None) if generation is not None else None
    ids.update(extra if isinstance(extra, (list, tuple, set)) else [] if extra is None else [extra])
    return ids


class TransformersTextEngine:
    name = "transformers"

    def __init__(self, config: TextEngineConfig) -> None:
        import torch
        from transformers import AutoTokenizer

        torch.set_grad_enabled(False)
        if config.cpu_threads > 0 and config.device == "cpu":
            # Several instances (or other processes) sharing the cores: OpenMP threads that outnumber the free
            # cores spin against each other (observed: a tiny-model step 8x slower with 2 threads than with 1).
            torch.set_num_threads(config.cpu_threads)
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_path, trust_remote_code=config.trust_remote_code)
        self.model = load_model(config)
        mask_id = config.mask_token_id if config.mask_token_id is not None else self.tokenizer.mask_token_id
        if mask_id is None:
            raise ValueError(f"{config.model_path} has no mask token: set the mask_token_id parameter")
        self.mask_id = int(mask_id)
        self.eos_ids = eos_token_ids(self.tokenizer, self.model)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.max_concurrent = config.max_running_requests or DEFAULT_CONCURRENT_REQUESTS
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.mask_id
        self.batcher = BatchedDecoder(self._logits, pad_id=pad_id, max_batch=self.max_concurrent, device=config.device)
        self._tokenizer_lock = threading.Lock()  # encoding may change a fast tokenizer's settings: one at a time

    def _logits(self, ids, attention_mask=None):
        """Logits ``[B, L, vocab]``; ``attention_mask`` hides the padding of shorter sequences in a batch."""
        import torch

        with torch.inference_mode():
            return self.model(input_ids=ids, attention_mask=attention_mask).logits

    def generate(self, params: TextParams, on_step: StepHook) -> Iterator[TextDelta]:
        on_step(0, params.steps)  # a request cancelled while queued stops before any work
        with self._tokenizer_lock:
            prompt_ids = prompt_token_ids(self.tokenizer, params)
        if self.context_length and len(prompt_ids) + params.max_tokens > self.context_length:
            raise InvalidRequest(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) exceeds the model's "
                f"context length ({self.context_length} tokens)",
                "max_tokens",
            )
        settings = DecodeSettings(
            max_tokens=params.max_tokens,
            block_length=params.block_length,
            steps=params.steps,
            threshold=params.threshold,
            temperature=params.temperature,
            seed=params.seed,
        )
        answer = AnswerText(self.tokenizer, params.stop)
        steps = 0
        decoding = self.batcher.decode(
            prompt_ids, settings, mask_id=self.mask_id, eos_ids=self.eos_ids, on_step=on_step
        )
        with closing(decoding) as blocks:  # a stop string or a reader that leaves takes the request out of the batch
            for block in blocks:
                steps += block.steps
                text = answer.add(block.token_ids, final=block.final)
                if not (answer.stopped or block.final):
                    yield TextDelta(text)
                    continue
                # The eos token counts as generated, as autoregressive servers count it.
                completion = answer.tokens_to_stop if answer.stopped else answer.token_count + int(block.eos)
                yield TextDelta(
                    text,
                    finish_reason="stop" if answer.stopped or block.eos else "length",
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion,
                    steps=steps,
                )
                return

    def close(self) -> None:
        self.batcher.close()
        self.model = None
