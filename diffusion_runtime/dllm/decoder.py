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


class RequestDecoding:
    """One request's decoding state, advanced one refinement step at a time by whoever runs the model: alone
    (``decode_blocks``) or in a batch with other requests (``batching.BatchedDecoder``). Every decision is made
    here from the request's own logits row and its own seeded generator, so a request decodes the same answer
    whatever it is batched with."""

    def __init__(
        self,
        prompt_ids: Sequence[int],
        settings: DecodeSettings,
        *,
        mask_id: int,
        eos_ids: Collection[int] = (),
        device: str | torch.device = "cpu",
    ) -> None:
        self.settings = settings
        self.mask_id = mask_id
        self.sizes = block_sizes(settings.max_tokens, settings.block_length)
        self.shares = step_shares(settings.steps, self.sizes)
        self.total = sum(self.shares)
        self.prompt_length = len(prompt_ids)
        self.ids = torch.full((1, self.prompt_length + settings.max_tokens), mask_id, dtype=torch.long, device=device)
        """The sequence so far, ``[1, L]``: prompt, finished blocks, and masks."""
        self.ids[0, : self.prompt_length] = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=device)
        self._generator = torch.Generator(device="cpu").manual_seed(settings.seed) if settings.temperature > 0 else None
        self._eos = torch.as_tensor(sorted(eos_ids), dtype=torch.long, device=device)
        self.done = 0  # steps run
        self.finished = False
        self._index = 0  # the block being refined
        self._start = self.prompt_length
        self._used = 0  # steps run on this block

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def answer_ids(self) -> torch.Tensor:
        """The answer so far, masks included (a copy)."""
        return self.ids[0, self.prompt_length :].clone()

    def advance(self, logits: torch.Tensor) -> DecodedBlock | None:
        """One refinement step of the current block from the model's logits for this sequence (``[L, vocab]``,
        or ``[1, L, vocab]``). Returns the block once it is complete."""
        size, share = self.sizes[self._index], self.shares[self._index]
        block = self.ids[0, self._start : self._start + size]  # a view: writing it writes ids
        masked = block == self.mask_id
        remaining = int(masked.sum())
        logits = logits.reshape(self.length, -1)[self._start : self._start + size].float().clone()  # ours to edit
        logits[:, self.mask_id] = -math.inf  # a mask is never an answer
        prediction = _predict(logits, self.settings.temperature, self._generator)
        confidence = torch.softmax(logits, dim=-1).gather(-1, prediction.unsqueeze(-1)).squeeze(-1)
        confidence = torch.where(masked, confidence, torch.full_like(confidence, -math.inf))
        k = math.ceil(remaining / (share - self._used))
        chosen = torch.zeros_like(masked)
        chosen[torch.topk(confidence, k).indices] = True
        if self.settings.threshold > 0:  # may finish the block before its share of steps
            chosen |= masked & (confidence >= self.settings.threshold)
        block[chosen] = prediction[chosen]
        self.done += 1
        self._used += 1
        if bool((block == self.mask_id).any()):
            return None
        return self._finish_block(block)

    def _finish_block(self, block: torch.Tensor) -> DecodedBlock:
        ids = block.tolist()
        hits = torch.isin(block, self._eos).nonzero() if self._eos.numel() else []
        cut = int(hits[0]) if len(hits) else None
        final = cut is not None or self._index == len(self.sizes) - 1
        kept = tuple(ids if cut is None else ids[:cut])
        decoded = DecodedBlock(self._index, kept, cut is not None, final, self._used)
        self.finished = final
        self._start += self.sizes[self._index]
        self._index += 1
        self._used = 0
        return decoded


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
    """Yield one request's answer block by block. ``on_step(steps_done, total_steps)`` runs before every step
    and may raise (``GenerationCancelled``) to stop decoding there."""
    state = RequestDecoding(prompt_ids, settings, mask_id=mask_id, eos_ids=eos_ids, device=device)
    while not state.finished:
        if on_step is not None:
            on_step(state.done, state.total)
        block = state.advance(logits_fn(state.ids))
        if on_state is not None:
            on_state(state.done, state.answer_ids())
        if block is not None:
            yield block
