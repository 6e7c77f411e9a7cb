"""The project's low-confidence decoder against independent implementations of the same algorithm, token for token,
on the same tiny masked LM, prompt, seed, block length and steps.

``llada_reference`` is written from the LLaDA paper (Nie et al., "Large Language Diffusion Models", 2025: Algorithm 4,
semi-autoregressive low-confidence remasking) as plainly as possible and shares no code with the decoder: the answer
starts fully masked; blocks are decoded left to right, each with ``steps / number of blocks`` steps; the number of
tokens a step unmasks is fixed up front for the block (``masked // steps``, plus one in the first ``masked % steps``
steps); each step predicts every masked position (argmax, or argmax after Gumbel noise at a temperature), takes the
softmax probability of the predicted token as its confidence, and keeps the most confident predictions inside the
current block. Two things are pinned so both sides see the same numbers: the model's logit for the mask token is
-inf (a masked LM should never answer "mask"; the decoder enforces it, the paper's code relies on training), and the
Gumbel noise comes from a CPU generator seeded with the request's seed, one float64 uniform per block position and
vocabulary entry per step (the decoder's documented noise stream, so a seed means the same answer on any device).

SGLang's ``LowConfidence`` (``sglang.srt.dllm.algorithm.low_confidence``) is driven here too: its ``step`` reads only
``forward_batch.batch_size``, ``.input_ids`` (the current block, flat) and ``.dllm_prompt_mask``, and writes the
unmasked tokens back into ``input_ids``, so it runs on CPU with a stand-in batch object and our logits, without its
server. It is a different schedule: each step unmasks every masked position whose confidence exceeds ``threshold``,
or only the single most confident one when none does, until the block is full; it is greedy (no temperature), and
its model forward sees the finished blocks through a KV cache rather than recomputing them (the same logits in
exact arithmetic for a bidirectional block diffusion model, not in float, so the model side is ours here). The
decoder does exactly that with ``steps`` equal to the answer length (one guaranteed token a step) and the same
``threshold``, up to one difference: SGLang keeps confidences strictly above the threshold, the decoder at or above,
which differ only on an exact tie (none occurs on these logits).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffusion_runtime.dllm import TextEngineConfig
from diffusion_runtime.dllm.decoder import DecodeSettings, decode_blocks
from diffusion_runtime.dllm.transformers_engine import TransformersTextEngine

PROMPTS = ("Hello! How are you?", "A masked language model predicts")


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path]) -> TransformersTextEngine:
    return TransformersTextEngine(TextEngineConfig(model_path=str(tiny_models["tiny-llada"]), engine="transformers"))


def model_logits(engine: TransformersTextEngine):
    """The tiny model as both sides see it: token ids ``[1, L]`` to logits ``[1, L, vocab]``, mask logit -inf."""

    def logits(ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = engine.model(input_ids=ids).logits.float()
            out[..., engine.mask_id] = -torch.inf
        return out

    return logits


def llada_reference(
    logits_fn,
    prompt: list[int],
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float,
    seed: int,
    mask_id: int,
) -> list[int]:
    """LLaDA's semi-autoregressive low-confidence remasking, from the paper (see the module docstring)."""
    assert gen_length % block_length == 0 and steps % (gen_length // block_length) == 0
    x = torch.tensor([prompt + [mask_id] * gen_length])
    noise = torch.Generator().manual_seed(seed)
    steps_per_block = steps // (gen_length // block_length)
    for block_start in range(len(prompt), len(x[0]), block_length):
        block_end = block_start + block_length
        masked_in_block = int((x[0, block_start:block_end] == mask_id).sum())
        per_step = [masked_in_block // steps_per_block] * steps_per_block
        for i in range(masked_in_block % steps_per_block):
            per_step[i] += 1
        for count in per_step:
            logits = logits_fn(x)[0].double()
            if temperature > 0:
                block_noise = torch.rand((block_length, logits.shape[-1]), generator=noise, dtype=torch.float64)
                gumbel = -torch.log(-torch.log(block_noise.clamp(1e-20, 1.0)))
                scores = logits.clone()
                scores[block_start:block_end] = logits[block_start:block_end] / temperature + gumbel
                predicted = scores.argmax(-1)
            else:
                predicted = logits.argmax(-1)
            probabilities = torch.softmax(logits.float(), -1)
            confidence = probabilities.gather(-1, predicted[:, None])[:, 0]
            confidence[x[0] != mask_id] = -torch.inf
            confidence[:block_start] = -torch.inf
            confidence[block_end:] = -torch.inf
            keep = confidence.topk(count).indices
            x[0, keep] = predicted[keep]
    return x[0, len(prompt) :].tolist()


def decoder_tokens(logits_fn, prompt: list[int], settings: DecodeSettings, mask_id: int) -> list[int]:
    blocks = decode_blocks(logits_fn, prompt, settings, mask_id=mask_id)  # no eos: decode the whole answer
    return [t for block in blocks for t in block.token_ids]


SETTINGS = [  # gen length, block length, steps, temperature, seed
    (32, 8, 32, 0.0, 0),
    (32, 8, 16, 0.0, 0),
    (24, 24, 6, 0.0, 0),
    (32, 4, 8, 0.0, 0),
    (16, 16, 16, 0.0, 0),
    (32, 8, 16, 0.7, 3),
    (24, 6, 12, 1.0, 11),
    (16, 16, 4, 2.0, 5),
]


@pytest.mark.parametrize(("gen_length", "block_length", "steps", "temperature", "seed"), SETTINGS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_decoder_matches_the_paper_reference(
    engine: TransformersTextEngine,
    prompt: str,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float,
    seed: int,
) -> None:
    logits_fn = model_logits(engine)
    ids = engine.tokenizer(prompt)["input_ids"]
    expected = llada_reference(
        logits_fn,
        ids,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        temperature=temperature,
        seed=seed,
        mask_id=engine.mask_id,
    )
    settings = DecodeSettings(gen_length, block_length, steps, temperature=temperature, seed=seed)
    assert decoder_tokens(logits_fn, ids, settings, engine.mask_id) == expected
    assert engine.mask_id not in expected


def test_seeds_change_sampled_answers_in_both(engine: TransformersTextEngine) -> None:
    """Guards the comparison above: at a temperature the seed matters, so agreeing is not agreeing on argmax."""
    logits_fn = model_logits(engine)
    ids = engine.tokenizer(PROMPTS[0])["input_ids"]
    answers = {
        tuple(
            llada_reference(
                logits_fn,
                ids,
                gen_length=16,
                block_length=8,
                steps=8,
                temperature=1.0,
                seed=seed,
                mask_id=engine.mask_id,
            )
        )
        for seed in (1, 2, 3)
    }
    assert len(answers) == 3


def sglang_low_confidence(
    logits_fn, prompt: list[int], *, gen_length: int, block_length: int, threshold: float, mask_id: int
) -> tuple[list[int], int]:
    """SGLang's own ``LowConfidence.step`` refining each block of a sequence whose logits we compute; returns the
    answer and the number of steps it took."""
    from sglang.srt.dllm.algorithm.low_confidence import LowConfidence
    from sglang.srt.dllm.config import DllmConfig

    algorithm = LowConfidence(
        DllmConfig("LowConfidence", {"threshold": threshold}, block_length, mask_id, max_running_requests=1)
    )
    x = torch.tensor([prompt + [mask_id] * gen_length])
    steps = 0
    for start in range(len(prompt), len(x[0]), block_length):
        batch = SimpleNamespace(
            batch_size=1, input_ids=x[0, start : start + block_length].clone(), dllm_prompt_mask=None
        )
        for _ in range(algorithm.max_steps(block_length)):
            logits = logits_fn(x)[0, start : start + block_length]
            if all(algorithm.step(batch, logits, [None])):
                break
            steps += 1
            x[0, start : start + block_length] = batch.input_ids
        assert mask_id not in x[0, start : start + block_length].tolist()
    return x[0, len(prompt) :].tolist(), steps


def first_step_confidence(
    logits_fn, prompt: list[int], gen_length: int, block_length: int, quantile: float, mask_id: int
) -> float:
    """A threshold some but not all of the first block's first predictions pass (the random tiny model is unsure of
    everything, about 0.003 a token, so a fixed threshold like SGLang's default 0.95 would never be reached)."""
    logits = logits_fn(torch.tensor([prompt + [mask_id] * gen_length]))
    first_block = logits[0, len(prompt) : len(prompt) + block_length]
    return float(torch.softmax(first_block, -1).amax(-1).quantile(quantile))


@pytest.mark.parametrize(
    ("gen_length", "block_length", "quantile"), [(32, 8, None), (32, 32, 0.5), (24, 4, 0.3), (32, 16, 0.2)]
)
def test_decoder_matches_sglang_low_confidence(
    engine: TransformersTextEngine, gen_length: int, block_length: int, quantile: float | None
) -> None:
    pytest.importorskip("sglang.srt.dllm.algorithm.low_confidence")
    logits_fn = model_logits(engine)
    ids = engine.tokenizer(PROMPTS[1])["input_ids"]
    threshold = (
        0.95
        if quantile is None
        else first_step_confidence(logits_fn, ids, gen_length, block_length, quantile, engine.mask_id)
    )
    expected, steps = sglang_low_confidence(
        logits_fn, ids, gen_length=gen_length, block_length=block_length, threshold=threshold, mask_id=engine.mask_id
    )
    if quantile is not None:
        assert steps < gen_length, "the threshold unmasked several tokens in one step"
    settings = DecodeSettings(gen_length, block_length, steps=gen_length, threshold=threshold)
    assert decoder_tokens(logits_fn, ids, settings, engine.mask_id) == expected
