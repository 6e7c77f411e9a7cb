"""The low-confidence remasking decoder, stop strings and incremental text, without a server.

Most cases run the real tiny masked LM; a few use small hand-made logit functions whose confidence is known
in advance (so "unmask everything above the threshold" and "stop at eos" are decided by the test, not by
random weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusion_runtime.dllm import TextEngineConfig
from diffusion_runtime.dllm.decoder import DecodeSettings, block_sizes, decode_blocks, step_shares
from diffusion_runtime.dllm.detokenize import AnswerText
from diffusion_runtime.dllm.transformers_engine import TransformersTextEngine
from diffusion_runtime.errors import GenerationCancelled, InvalidRequest
from diffusion_runtime.params.text import TextLimits, validate_text_params

VOCAB = 50
MASK = 49
EOS = 1


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path]) -> TransformersTextEngine:
    return TransformersTextEngine(TextEngineConfig(model_path=str(tiny_models["tiny-llada"]), engine="transformers"))


class CountingModel:
    """Wraps a logits function and counts forward passes (= refinement steps)."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(ids)


def peaked(confidence_logit: float, eos_at: int | None = None, prompt_length: int = 2):
    """A stand-in model: position p predicts token ``2 + p % 40`` with a logit margin of ``confidence_logit``
    (or ``EOS`` at answer position ``eos_at``)."""

    def fn(ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        logits = torch.zeros(1, length, VOCAB)
        for p in range(length):
            token = EOS if eos_at is not None and p == prompt_length + eos_at else 2 + p % 40
            logits[0, p, token] = confidence_logit
        return logits

    return fn


def decode(engine: TransformersTextEngine, settings: DecodeSettings, **kwargs) -> list[int]:
    prompt = engine.tokenizer("Hello! How are you?")["input_ids"]
    model = kwargs.pop("model", engine._logits)
    blocks = decode_blocks(model, prompt, settings, mask_id=engine.mask_id, **kwargs)
    return [t for block in blocks for t in block.token_ids]


def test_schedule_shares_steps_between_blocks() -> None:
    assert block_sizes(10, 4) == [4, 4, 2]
    assert step_shares(6, [4, 4, 2]) == [2, 2, 2]
    assert step_shares(7, [4, 4, 2]) == [3, 2, 2]
    assert sum(step_shares(100, [4, 4, 2])) == 10, "never more steps than tokens"
    assert step_shares(1, [4, 4, 2]) == [1, 1, 1], "at least one step per block"


def test_answer_is_fully_unmasked_at_max_tokens(engine: TransformersTextEngine) -> None:
    tokens = decode(engine, DecodeSettings(max_tokens=21, block_length=6, steps=9))
    assert len(tokens) == 21
    assert engine.mask_id not in tokens


def test_blocks_fill_left_to_right_on_schedule(engine: TransformersTextEngine) -> None:
    states: list[torch.Tensor] = []
    settings = DecodeSettings(max_tokens=12, block_length=4, steps=6)
    decode(engine, settings, on_state=lambda step, answer: states.append(answer))
    assert len(states) == 6
    unmasked_per_state = []
    for answer in states:
        done = (answer != engine.mask_id).tolist()
        # Unmasked positions form whole finished blocks plus part of one block: nothing right of it.
        first_masked = done.index(False) if False in done else len(done)
        current_block_end = (first_masked // 4 + 1) * 4
        assert not any(done[current_block_end:]), f"a later block was touched early: {done}"
        unmasked_per_state.append(sum(done))
    # Two steps per block, two tokens per step.
    assert unmasked_per_state == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize(
    ("max_tokens", "block_length", "steps", "expected"),
    [(16, 4, 8, 8), (16, 4, 16, 16), (10, 4, 5, 5), (16, 4, 2, 4), (8, 8, 64, 8)],
)
def test_refinement_steps_are_the_ones_asked_for(
    engine: TransformersTextEngine, max_tokens: int, block_length: int, steps: int, expected: int
) -> None:
    """Exactly ``steps`` model calls, clamped to one per block at least and one per token at most."""
    model = CountingModel(engine._logits)
    hooks: list[tuple[int, int]] = []
    settings = DecodeSettings(max_tokens=max_tokens, block_length=block_length, steps=steps)
    decode(engine, settings, model=model, on_step=lambda done, total: hooks.append((done, total)))
    assert model.calls == expected
    assert hooks == [(i, expected) for i in range(expected)]


def test_a_seed_repeats_when_sampling_and_greedy_ignores_it(engine: TransformersTextEngine) -> None:
    def sample(seed: int, temperature: float) -> list[int]:
        settings = DecodeSettings(max_tokens=24, block_length=8, steps=12, temperature=temperature, seed=seed)
        return decode(engine, settings)

    assert sample(7, 0.9) == sample(7, 0.9)
    assert sample(7, 0.9) != sample(8, 0.9)
    assert sample(7, 0.0) == sample(8, 0.0)


def test_threshold_unmasks_every_confident_prediction() -> None:
    prompt = [5, 6]
    settings = DecodeSettings(max_tokens=16, block_length=8, steps=16)
    plain, fast = CountingModel(peaked(10.0)), CountingModel(peaked(10.0))
    tokens = [t for b in decode_blocks(plain, prompt, settings, mask_id=MASK) for t in b.token_ids]
    with_threshold = DecodeSettings(max_tokens=16, block_length=8, steps=16, threshold=0.9)
    blocks = list(decode_blocks(fast, prompt, with_threshold, mask_id=MASK))
    assert plain.calls == 16
    assert fast.calls == 2, "every prediction is ~0.99 confident: one step per block"
    assert [b.steps for b in blocks] == [1, 1]
    assert [t for b in blocks for t in b.token_ids] == tokens, "same answer, fewer steps"
    # Below the threshold only the scheduled k are unmasked.
    slow = CountingModel(peaked(1.0))
    list(decode_blocks(slow, prompt, with_threshold, mask_id=MASK))
    assert slow.calls == 16


def test_eos_ends_decoding_after_its_block() -> None:
    model = CountingModel(peaked(10.0, eos_at=10))
    settings = DecodeSettings(max_tokens=32, block_length=4, steps=32)
    blocks = list(decode_blocks(model, [5, 6], settings, mask_id=MASK, eos_ids={EOS}))
    assert [b.index for b in blocks] == [0, 1, 2]
    assert [len(b.token_ids) for b in blocks] == [4, 4, 2], "tokens from the eos on are not emitted"
    assert blocks[-1].eos and blocks[-1].final
    assert model.calls == 12, "blocks after the eos are never decoded"


def test_cancellation_stops_between_steps(engine: TransformersTextEngine) -> None:
    model = CountingModel(engine._logits)

    def on_step(done: int, total: int) -> None:
        if done == 3:
            raise GenerationCancelled("client went away")

    with pytest.raises(GenerationCancelled):
        decode(engine, DecodeSettings(max_tokens=16, block_length=4, steps=16), model=model, on_step=on_step)
    assert model.calls == 3


# --- stop strings and incremental text ------------------------------------------------------------------


def feed(tokenizer, text: str, stop: tuple[str, ...], block: int) -> tuple[list[str], AnswerText]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer = AnswerText(tokenizer, stop)
    chunks = [ids[i : i + block] for i in range(0, len(ids), block)]
    deltas = [answer.add(chunk, final=i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    return deltas, answer


@pytest.mark.parametrize("block", [1, 2, 3, 7])
def test_deltas_assemble_into_the_text_without_broken_characters(engine: TransformersTextEngine, block: int) -> None:
    text = "Paris is the capital of France. café ☕ naïve 東京 — done"
    deltas, answer = feed(engine.tokenizer, text, (), block)
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas), "half a UTF-8 character is held back, never emitted"
    assert not answer.stopped


@pytest.mark.parametrize("block", [1, 2, 5])
def test_stop_string_ends_the_text_before_it(engine: TransformersTextEngine, block: int) -> None:
    text = "The capital of France is Paris. Tell me a story."
    deltas, answer = feed(engine.tokenizer, text, ("story", "Paris"), block)
    assert "".join(deltas) == "The capital of France is "
    assert answer.stopped
    # Token count: up to the token that completed the stop string.
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "Paris" in engine.tokenizer.decode(ids[: answer.tokens_to_stop])
    assert "Paris" not in engine.tokenizer.decode(ids[: answer.tokens_to_stop - 1])


def test_text_that_only_looks_like_a_stop_string_is_released(engine: TransformersTextEngine) -> None:
    deltas, answer = feed(engine.tokenizer, "a photo of a cat", ("cat!",), 1)
    assert "".join(deltas) == "a photo of a cat"
    assert not answer.stopped


def test_engine_stop_string_and_token_counts(engine: TransformersTextEngine) -> None:
    """On the tiny model: sample an answer, then ask again with a piece of it as the stop string."""
    kwargs = dict(prompt="Tell me a story", max_tokens=24, block_length=8, temperature=0.9, seed=11)
    full = list(engine.generate(validate_text_params(TextLimits(), **kwargs), lambda *_: None))
    text = "".join(d.text for d in full)
    assert full[-1].finish_reason == "length"
    assert full[-1].completion_tokens == 24
    assert full[-1].prompt_tokens == len(engine.tokenizer("Tell me a story")["input_ids"])
    assert len(full) == 3, "one delta per block"
    # A piece from the middle that occurs nowhere earlier and holds no replacement character.
    middle = len(text) // 2
    stop = next(
        text[i : i + 3]
        for i in range(middle, len(text) - 3)
        if "\ufffd" not in text[i : i + 3] and text.index(text[i : i + 3]) == i
    )
    stopped = list(engine.generate(validate_text_params(TextLimits(), stop=stop, **kwargs), lambda *_: None))
    assert "".join(d.text for d in stopped) == text[: text.index(stop)]
    assert stopped[-1].finish_reason == "stop"
    assert 0 < stopped[-1].completion_tokens < 24


def test_prompt_and_answer_must_fit_the_context(engine: TransformersTextEngine) -> None:
    params = validate_text_params(TextLimits(), prompt="x " * 200, max_tokens=4000)
    with pytest.raises(InvalidRequest, match="context length"):
        list(engine.generate(params, lambda *_: None))


# --- request validation specific to text (the model's side reads JSON) -------------------------------------


def test_messages_from_json_text_and_content_parts() -> None:
    messages = json.dumps(
        [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": None, "tool_calls": []},
        ]
    )
    params = validate_text_params(TextLimits(), messages=messages, max_tokens=64)
    assert params.message_dicts() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello\nthere"},
        {"role": "assistant", "content": ""},
    ]
    assert params.steps == 64, "by default one refinement step per answer token"
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        validate_text_params(TextLimits(), messages="[{")
    with pytest.raises(InvalidRequest, match="either messages or prompt"):
        validate_text_params(TextLimits(), messages=[{"role": "user", "content": "x"}], prompt="x")


def test_limits_and_defaults_come_from_config_parameters() -> None:
    limits = TextLimits.from_parameters({"max_tokens": "64", "default_steps": "8", "default_threshold": "0.9"})
    params = validate_text_params(limits, prompt="p", max_tokens=64)
    assert (params.steps, params.threshold) == (8, 0.9)
    with pytest.raises(InvalidRequest, match="between 1 and 64"):
        validate_text_params(limits, prompt="p", max_tokens=65)
