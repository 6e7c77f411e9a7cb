"""Concurrent requests decoded together: the answer a request gets does not depend on what it shares the forward
with, several requests really share forwards, and one request's cancellation, abandonment or failure leaves the
others untouched. Runs the real tiny masked LM; no server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from diffusion_runtime.dllm import TextDelta, TextEngineConfig
from diffusion_runtime.dllm.batching import BatchedDecoder
from diffusion_runtime.dllm.decoder import DecodeSettings, decode_blocks
from diffusion_runtime.dllm.transformers_engine import TransformersTextEngine
from diffusion_runtime.errors import GenerationCancelled
from diffusion_runtime.params.text import TextLimits, TextParams, validate_text_params

LIMITS = TextLimits()
# Different prompt lengths, answer lengths, block lengths, steps, thresholds, temperatures and seeds.
REQUESTS = [
    {"prompt": "Hello! How are you?", "max_tokens": 24, "block_length": 8, "steps": 12},
    {"prompt": "A", "max_tokens": 40, "block_length": 16, "steps": 40, "temperature": 0.8, "seed": 7},
    {"messages": [{"role": "user", "content": "Tell me about masked language models."}], "max_tokens": 17},
    {"prompt": "One two three four five six seven eight nine ten", "max_tokens": 9, "block_length": 3},
    {"prompt": "Hello! How are you?", "max_tokens": 24, "block_length": 8, "steps": 12, "temperature": 1.2, "seed": 1},
    {"prompt": "Hello! How are you?", "max_tokens": 24, "block_length": 8, "steps": 12, "temperature": 1.2, "seed": 2},
    {"prompt": "Diffusion", "max_tokens": 32, "block_length": 32, "steps": 8, "threshold": 0.002},
    {"prompt": "The sun rises", "max_tokens": 5, "block_length": 5, "steps": 5},
]


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path]) -> TransformersTextEngine:
    config = TextEngineConfig(
        model_path=str(tiny_models["tiny-llada"]), engine="transformers", cpu_threads=1, max_running_requests=8
    )
    engine = TransformersTextEngine(config)
    yield engine
    engine.close()


def params(request: dict) -> TextParams:
    return validate_text_params(LIMITS, **request)


def answer(engine: TransformersTextEngine, request: dict, on_step: Callable[[int, int], None] | None = None) -> list:
    deltas: list[TextDelta] = list(engine.generate(params(request), on_step or (lambda done, total: None)))
    last = deltas[-1]
    return ["".join(d.text for d in deltas), last.finish_reason, last.completion_tokens]


def together(engine: TransformersTextEngine, requests: list[dict], on_steps: list | None = None) -> list:
    """Every request from its own thread, all released at once so they share forwards."""
    start = threading.Barrier(len(requests))
    hooks = on_steps or [None] * len(requests)

    def run(i: int) -> list:
        start.wait()
        try:
            return answer(engine, requests[i], hooks[i])
        except Exception as exc:
            return [exc]

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(run, range(len(requests))))


def test_each_answer_is_the_one_it_gets_alone(engine: TransformersTextEngine) -> None:
    engine.batcher.batch_sizes = []
    alone = [answer(engine, r) for r in REQUESTS]
    assert set(engine.batcher.batch_sizes) == {1}
    engine.batcher.batch_sizes = []
    batched = together(engine, REQUESTS)
    assert max(engine.batcher.batch_sizes) >= 4, "requests in flight together share forwards"
    assert len(engine.batcher.batch_sizes) < sum(params(r).steps for r in REQUESTS), "fewer forwards than steps"
    assert batched == alone
    assert alone[4] != alone[5], "the seeds differ, so the sampled answers do"


def test_batched_tokens_match_the_single_request_decoder(engine: TransformersTextEngine) -> None:
    """Below the engine: the batch thread's blocks are ``decode_blocks``' blocks for the request alone."""
    prompts = [engine.tokenizer(t)["input_ids"] for t in ("Hello! How are you?", "A", "Diffusion models write")]
    settings = [DecodeSettings(16, 4, 8), DecodeSettings(24, 8, 24, temperature=0.9, seed=3), DecodeSettings(7, 7, 3)]
    alone = [
        [b.token_ids for b in decode_blocks(engine._logits, p, s, mask_id=engine.mask_id)]
        for p, s in zip(prompts, settings, strict=True)
    ]
    decoder = BatchedDecoder(engine._logits, pad_id=0, max_batch=3)
    start = threading.Barrier(3)

    def run(i: int) -> list:
        start.wait()
        blocks = decoder.decode(prompts[i], settings[i], mask_id=engine.mask_id, on_step=lambda d, t: None)
        return [b.token_ids for b in blocks]

    try:
        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(run, range(3))) == alone
        assert max(decoder.batch_sizes) == 3
    finally:
        decoder.close()


def test_a_cancelled_request_leaves_the_others_decoding(engine: TransformersTextEngine) -> None:
    alone = [answer(engine, r) for r in REQUESTS[:4]]

    def cancel_after(steps: int):
        def on_step(done: int, total: int) -> None:
            if done >= steps:
                raise GenerationCancelled(f"cancelled at step {done}/{total}")

        return on_step

    results = together(engine, REQUESTS[:4], [None, cancel_after(3), None, None])
    assert isinstance(results[1][0], GenerationCancelled)
    assert [results[i] for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]


def test_a_reader_that_leaves_frees_its_place(engine: TransformersTextEngine) -> None:
    """A request whose stream is dropped after its first block stops decoding at the next step."""
    long = {"prompt": "Hello", "max_tokens": 400, "block_length": 4, "steps": 400}
    steps: list[int] = []
    first = engine.generate(params(long), lambda done, total: steps.append(done))
    next(first)
    first.close()
    seen = len(steps)
    assert answer(engine, REQUESTS[0])[1] == "length"  # several forwards after the close
    assert len(steps) <= seen + 1, "the abandoned request ran no further steps"
    assert len(steps) < 400


def test_a_failing_forward_fails_its_requests_and_the_decoder_goes_on(engine: TransformersTextEngine) -> None:
    calls = 0

    def flaky(ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("out of memory")
        return engine._logits(ids, attention)

    decoder = BatchedDecoder(flaky, pad_id=0, max_batch=4)
    prompt = engine.tokenizer("Hello")["input_ids"]

    def tokens() -> list:
        return list(decoder.decode(prompt, DecodeSettings(8, 4, 4), mask_id=engine.mask_id, on_step=lambda d, t: None))

    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            tokens()
        assert len(tokens()) == 2, "the next request decodes normally"
    finally:
        decoder.close()
