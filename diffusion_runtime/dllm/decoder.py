"""Low-confidence remasking: how a masked diffusion LM (LLaDA) writes an answer.

The answer starts as ``max_tokens`` mask tokens after the prompt and is split into blocks of ``block_length``,
decoded left to right (semi-autoregressively: a block sees the prompt, the finished blocks and the still
masked ones after it). A block is refined over its share of the ``steps``; each step runs the model over the
whole sequence, predicts every masked position of the block, and unmasks the ``k`` most confident
predictions, ``k`` chosen so the block is complete after its last step (LLaDA's schedule, recomputed each
step from what is still masked). With a ``threshold``, every prediction at least that confident is unmasked
too, so a block may finish in fewer steps (Fast-dLLM's parallel decoding). Predictions are greedy, or
sampled at ``temperature`` with Gumbel noise from a seeded CPU generator, so a seed gives the same answer on
any device. Decoding stops after the block in which an end-of-sequence token appears.

Reference: Nie et al., "Large Language Diffusion Models" (2025), Algorithm 4 and ``generate.py`` in
ML-GSAI/LLaDA. Unlike the reference, ``max_tokens`` need not be a multiple of ``block_length`` (the last
block is shorter) and ``steps`` need not divide evenly between blocks (blocks differ by one step at most).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import torch

from diffusion_runtime.engines.base import StepHook

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""The model: token ids ``[1, L]`` to logits ``[1, L, vocab]``."""

StateHook = Callable[[int, torch.Tensor], None]
"""Called after each step with ``(steps_done, answer ids)``: the answer so far, masks included (a copy)."""


@dataclass(frozen=True)
class DecodeSettings:
    max_tokens: int
    block_length: int
    steps: int
    threshold: float = 0.0
    temperature: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class DecodedBlock:
    """One finished block. ``token_ids`` stops before an end-of-sequence token; ``final`` says no block
    follows (the eos was found, or this was the answer's last block)."""

    index: int
    token_ids: tuple[int, ...]
    eos: bool
    final: bool
    steps: int


def block_sizes(max_tokens: int, block_length: int) -> list[int]:
    full, rest = divmod(max_tokens, block_length)
    return [block_length] * full + ([rest] if rest else [])


def step_shares(steps: int, sizes: Sequence[int]) -> list[int]:
    """Each block's number of steps: ``steps`` shared out evenly, at least one per block and at most one per
    token (a step that unmasks nothing would be wasted), so the total is ``steps`` clamped to
    ``[number of blocks, answer length]``."""
    shares = [1] * len(sizes)
    remaining = min(steps, sum(sizes)) - len(sizes)
    while remaining > 0:
        for i, size in enumerate(sizes):
            if remaining and shares[i] < size:
                shares[i] += 1
                remaining -= 1
    return shares


def _predict(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Token per position: argmax, or a sample at ``temperature`` (Gumbel-max, noise drawn on the CPU)."""
    if temperature <= 0 or generator is None:
        return logits.argmax(dim=-1)
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-20, 1.0)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits.double() / temperature + gumbel.to(logits.device)).argmax(dim=-1)


def decode_blocks(
    logits_fn: LogitsFn,
    prompt_ids: Sequence[int],
    settings: DecodeSettings,
    *,
    mask_id: int,
    eos_ids: Collection[int] = (),
    device: str | torch.device = "cpu",
    on_step: StepHook | None = None,
    on_state: StateHook | None = None,
) -> Iterator[DecodedBlock]:
    """Yield the answer block by block. ``on_step(steps_done, total_steps)`` runs before every step and may
    raise (``GenerationCancelled``) to stop decoding there."""
    sizes = block_sizes(settings.max_tokens, settings.block_length)
    shares = step_shares(settings.steps, sizes)
    total = sum(shares)
    prompt_length = len(prompt_ids)
    x = torch.full((1, prompt_length + settings.max_tokens), mask_id, dtype=torch.long, device=device)
    x[0, :prompt_length] = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=device)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed) if settings.temperature > 0 else None
    eos = torch.as_tensor(sorted(eos_ids), dtype=torch.long, device=device)
    done = 0
    start = prompt_length
    for index, (size, share) in enumerate(zip(sizes, shares, strict=True)):
        block = x[0, start : start + size]  # a view: writing it writes x
        used = 0
        for step in range(share):
            masked = block == mask_id
            remaining = int(masked.sum())
            if remaining == 0:  # the threshold finished the block early
                break
            if on_step is not None:
                on_step(done, total)
            logits = logits_fn(x)[0, start : start + size].float().clone()  # ours to edit
            logits[:, mask_id] = -math.inf  # a mask is never an answer
            prediction = _predict(logits, settings.temperature, generator)
            confidence = torch.softmax(logits, dim=-1).gather(-1, prediction.unsqueeze(-1)).squeeze(-1)
            confidence = torch.where(masked, confidence, torch.full_like(confidence, -math.inf))
            k = math.ceil(remaining / (share - step))
            chosen = torch.zeros_like(masked)
            chosen[torch.topk(confidence, k).indices] = True
            if settings.threshold > 0:
                chosen |= masked & (confidence >= settings.threshold)
            block[chosen] = prediction[chosen]
            done += 1
            used += 1
            if on_state is not None:
                on_state(done, x[0, prompt_length:].clone())
        ids = block.tolist()
        hits = torch.isin(block, eos).nonzero() if eos.numel() else []
        cut = int(hits[0]) if len(hits) else None
        final = cut is not None or index == len(sizes) - 1
        yield DecodedBlock(index, tuple(ids if cut is None else ids[:cut]), cut is not None, final, used)
        if final:
            return
        start += size
