"""Chat and text completions from the diffusion LM, through the OpenAI SDK and raw HTTP, against real
tritonserver + frontend serving the tiny masked LM on the transformers engine.

The tiny model is randomly initialised: its greedy answer is one token repeated, so tests that need varied
text (stop strings, chunk assembly across UTF-8 boundaries) sample with a fixed seed, which is as
reproducible as greedy decoding.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from diffusion_runtime.launcher.repository import ModelSpec
from tests.conftest import Stack, metric_value, start_stack, wait_for

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend

MODEL = "tiny-llada"
HELLO = [{"role": "user", "content": "Hello! How are you?"}]
SAMPLED = {"temperature": 0.9, "seed": 1234}


def dllm_spec(tiny_models: dict[str, Path]) -> ModelSpec:
    """The tiny masked LM with the shipped limits and defaults. One torch thread: on this 2-core machine, beside
    tritonserver and the frontend, two OpenMP threads spin against each other and make every step ~8x slower."""
    parameters = {"model_path": str(tiny_models[MODEL]), "served_model_name": MODEL, "engine": "transformers"}
    return ModelSpec("dllm", {**parameters, "cpu_threads": "1"})


@pytest.fixture(scope="module")
def stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack([dllm_spec(tiny_models)], tmp_path_factory.mktemp("dllm"))


def chat(stack: Stack, **kwargs):
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", HELLO)
    return stack.client().chat.completions.create(**kwargs)


def chat_stream(stack: Stack, **kwargs) -> list:
    return list(chat(stack, stream=True, **kwargs))


def streamed_text(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def content_chunks(chunks: list) -> list:
    return [c for c in chunks if c.choices and c.choices[0].delta.content]


def cancelled(stack: Stack) -> float:
    """Generations the model stopped because Triton marked them cancelled (its metric, via the frontend)."""
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    return metric_value(text, "diffusion_requests_total", model="dllm", outcome="GenerationCancelled")


def test_models_lists_the_text_model(stack: Stack) -> None:
    models = {m.id: m for m in stack.client().models.list().data}
    assert models[MODEL].model_extra["task"] == "text"


@pytest.mark.parametrize("sampling", [{}, SAMPLED], ids=["greedy", "seeded"])
def test_chat_stream_assembles_into_the_whole_answer(stack: Stack, sampling: dict) -> None:
    knobs = {"max_tokens": 20, "extra_body": {"block_length": 4}, **sampling}
    whole = chat(stack, **knobs)
    chunks = chat_stream(stack, **knobs)
    answer = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert len(answer) > 0
    assert streamed_text(chunks) == answer
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert 0 < whole.usage.completion_tokens <= 20
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    # At most one chunk per decoded block (a block may end inside a character or hold only special tokens);
    # the greedy answer of the random model is one printable token repeated, so there it is exactly one each.
    assert len(content_chunks(chunks)) <= 5
    if not sampling:
        assert len(content_chunks(chunks)) == 5
        assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 20


def test_completions_stream_and_not(stack: Stack) -> None:
    client = stack.client()
    kwargs = {"model": MODEL, "prompt": "Tell me a story", "max_tokens": 12, "extra_body": {"block_length": 6}}
    whole = client.completions.create(**kwargs, **SAMPLED)
    chunks = list(client.completions.create(stream=True, **kwargs, **SAMPLED))
    assert whole.object == "text_completion"
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert all(c.object == "text_completion" for c in chunks)
    assert len([c for c in chunks if c.choices[0].text]) <= 2, "12 tokens in blocks of 6"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert 0 < whole.usage.completion_tokens <= 12
    greedy = client.completions.create(**kwargs)
    assert greedy.choices[0].text == client.completions.create(**kwargs).choices[0].text


@pytest.mark.parametrize("max_tokens", [1, 7, 33])
def test_max_tokens_bounds_completion_tokens(stack: Stack, max_tokens: int) -> None:
    result = chat(stack, max_tokens=max_tokens, **SAMPLED)
    assert 0 < result.usage.completion_tokens <= max_tokens
    newer = chat(stack, max_completion_tokens=max_tokens, **SAMPLED)
    assert newer.usage.completion_tokens == result.usage.completion_tokens


def test_stop_string_ends_generation(stack: Stack) -> None:
    knobs = {"max_tokens": 24, "extra_body": {"block_length": 8}, **SAMPLED}
    text = chat(stack, **knobs).choices[0].message.content
    # A piece of the answer's second half that does not occur earlier in it (and is whole characters).
    start = next(
        i
        for i in range(len(text) // 2, len(text) - 2)
        if text.index(text[i : i + 2]) == i and "\ufffd" not in text[i : i + 2]
    )
    stop = text[start : start + 2]

    stopped = chat(stack, stop=[stop, "never-generated"], **knobs)
    assert stopped.choices[0].message.content == text[:start]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < 24
    chunks = chat_stream(stack, stop=stop, **knobs)
    assert streamed_text(chunks) == text[:start]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_greedy_stop_string(stack: Stack) -> None:
    """The greedy answer of the random model repeats one token; stopping on it leaves nothing before it."""
    text = chat(stack, max_tokens=8).choices[0].message.content
    stopped = chat(stack, max_tokens=8, stop=text[:1])
    assert stopped.choices[0].message.content == ""
    assert stopped.choices[0].finish_reason == "stop"


def test_stream_options_include_usage(stack: Stack) -> None:
    chunks = chat_stream(stack, max_tokens=8, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    without = chat_stream(stack, max_tokens=8)
    assert all(c.usage is None for c in without)


def test_knobs_in_nvext_or_at_the_top_level(stack: Stack) -> None:
    """``nvext`` (the seed's clients) and the top level (the SDK's extra_body) set the same knob."""
    with stack.http() as http:
        for knobs in ({"nvext": {"block_length": 2}}, {"block_length": 2}):
            body = {"model": MODEL, "messages": HELLO, "max_tokens": 8, "stream": True, **knobs}
            events = http.post("/v1/chat/completions", json=body).text.split("\n\n")
            contents = [e for e in events if '"content":"' in e and '"content":""' not in e]
            assert len(contents) == 4, "8 tokens in blocks of 2"


def test_raw_sse_framing(stack: Stack) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 8, "block_length": 4, "stream": True}
    with stack.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        raw = response.read().decode()
    assert raw.endswith("\n\n"), "every event, the last included, ends with a blank line"
    events = raw[:-2].split("\n\n")
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        assert event.startswith("data: ") and "\n" not in event
        assert json.loads(event[len("data: ") :])["object"] == "chat.completion.chunk"


def test_mid_stream_failure_is_an_error_event_the_sdk_raises(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A frontend with a 3 s request timeout: a stream that outlives it ends with ``event: error`` (after the
    text so far, no ``[DONE]``), the SDK raises it, and the model stops decoding."""
    stacks = start_stack(
        [dllm_spec(tiny_models)], tmp_path_factory.mktemp("dllm-timeout"), frontend_args=("--request-timeout", "3")
    )
    short = next(stacks)
    try:
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 3000, "steps": 3000, "block_length": 1, "stream": True}
        with short.http() as http:
            raw = http.post("/v1/chat/completions", json=body).text
        assert raw.endswith("\n\n") and "[DONE]" not in raw
        last = raw[:-2].split("\n\n")[-1]
        assert last.startswith("event: error\ndata: ")
        assert json.loads(last.split("data: ", 1)[1])["error"]["code"] == "timeout"
        assert '"content":"' in raw, "the text before the failure was streamed"
        long = {"max_tokens": 3000, "extra_body": {"steps": 3000, "block_length": 1}}
        with pytest.raises(openai.APIError, match="did not finish"):
            for _ in chat(short, stream=True, **long):
                pass
        wait_for(lambda: cancelled(short) >= 2, timeout=60, message="both timed-out generations cancelled")
    finally:
        next(stacks, None)


@pytest.fixture(scope="module")
def one_at_a_time_stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The model with ``max_running_requests`` 1: each request decoded inside ``execute``, one after another."""
    spec = dllm_spec(tiny_models)
    spec = ModelSpec(spec.triton_name, {**spec.parameters, "max_running_requests": "1"})
    yield from start_stack([spec], tmp_path_factory.mktemp("dllm-one-at-a-time"))


def test_one_at_a_time_answers_concurrent_requests_as_alone(one_at_a_time_stack: Stack) -> None:
    requests = [
        {"messages": [{"role": "user", "content": f"Story {i}"}], "max_tokens": 16, "seed": i} for i in range(3)
    ]
    alone = [chat(one_at_a_time_stack, **r).choices[0].message.content for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: chat(one_at_a_time_stack, **r).choices[0].message.content, requests))
    assert together == alone


def test_concurrent_requests_are_decoded_together_and_answer_as_alone(stack: Stack) -> None:
    """Eight streams at once (different seeds, prompts and lengths) are in progress together, and each gets the
    text it gets alone: the model decodes them in one batch (its default) without mixing them up."""
    requests = [
        {
            "messages": [{"role": "user", "content": "Tell me story " * (i + 1)}],
            "max_tokens": 96 + 16 * i,  # long enough (one step a token) that the streams' start skew is small
            "temperature": 0.9,
            "seed": i,
            "extra_body": {"block_length": 8},
        }
        for i in range(8)
    ]
    alone = [chat(stack, **r).choices[0].message.content for r in requests]
    start = threading.Barrier(len(requests))

    def stream(request: dict) -> tuple[str, float, float]:
        client = stack.client()  # built before the barrier: the streams start within milliseconds of each other
        start.wait()
        first = None
        chunks = []
        for chunk in client.chat.completions.create(model=MODEL, stream=True, **request):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic()
            chunks.append(chunk)
        return streamed_text(chunks), first, time.monotonic()

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(stream, requests))
    assert [text for text, _, _ in results] == alone
    assert len(set(alone)) == len(alone)
    # One after another, a request's first text would come after the previous one ended: no two of these windows
    # would overlap.
    streaming = [(first, end) for _, first, end in results]
    overlapping = max(sum(first <= moment < end for first, end in streaming) for moment, _ in streaming)
    assert overlapping >= 4, f"at most {overlapping} requests were streaming at the same moment"


def test_client_disconnect_stops_decoding(stack: Stack) -> None:
    before = cancelled(stack)
    # 3000 steps over a 3000-token answer would keep the model busy for minutes.
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 3000, "steps": 3000, "block_length": 4, "stream": True}
    with stack.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first block arrived: leave mid-stream
    wait_for(lambda: cancelled(stack) > before, timeout=60, message="the model seeing the cancellation")
    # The instance is free: a new request is answered long before the abandoned one could have finished.
    assert chat(stack, max_tokens=4, timeout=60).usage.completion_tokens == 4


def triton_stream(stack: Stack, inputs: dict[str, np.ndarray]) -> list[tuple[object, object]]:
    """One request on Triton's gRPC stream, as perf_analyzer or any Triton client sends it: (result, error)s."""
    received: queue.Queue = queue.Queue()
    tensors = []
    for name, value in inputs.items():
        tensors.append(grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype)))
        tensors[-1].set_data_from_numpy(value)
    client = grpcclient.InferenceServerClient(stack.triton.grpc_url)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        client.async_stream_infer("dllm", tensors)
        responses = [received.get(timeout=60)]
        while responses[-1][1] is None and responses[-1][0].as_numpy("FINISH_REASON") is None:
            responses.append(received.get(timeout=60))
        return responses
    finally:
        client.stop_stream()
        client.close()


def test_triton_model_directly(stack: Stack) -> None:
    """Without the frontend: a TEXT response per block, the summary on the last, STOP as one JSON list."""
    inputs = {
        "PROMPT": np.array([b"Tell me a story"], dtype=np.object_),
        "MAX_TOKENS": np.array([12], dtype=np.int32),
        "BLOCK_LENGTH": np.array([4], dtype=np.int32),
    }
    responses = triton_stream(stack, inputs)
    assert [error for _, error in responses] == [None] * 3
    assert "".join(result.as_numpy("TEXT")[0].decode() for result, _ in responses)
    last = responses[-1][0]
    assert last.as_numpy("FINISH_REASON")[0] == b"length"
    assert int(last.as_numpy("COMPLETION_TOKENS")[0]) == 12
    assert int(last.as_numpy("PROMPT_TOKENS")[0]) > 0
    assert all(result.as_numpy("FINISH_REASON") is None for result, _ in responses[:-1])

    # A sampled answer (varied text), then the same request stopped by a piece of it.
    inputs["TEMPERATURE"] = np.array([0.9], dtype=np.float32)
    inputs["SEED"] = np.array([5], dtype=np.int64)
    text = "".join(r.as_numpy("TEXT")[0].decode() for r, _ in triton_stream(stack, inputs))
    stop = next(text[i : i + 2] for i in range(4, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    inputs["STOP"] = np.array([json.dumps([stop, "zzz"]).encode()], dtype=np.object_)
    stopped = triton_stream(stack, inputs)
    assert "".join(r.as_numpy("TEXT")[0].decode() for r, _ in stopped) == text[: text.index(stop)]
    assert stopped[-1][0].as_numpy("FINISH_REASON")[0] == b"stop"

    # STREAM false: one response, the whole text and the summary.
    inputs["STREAM"] = np.array([False], dtype=np.bool_)
    [(whole, error)] = triton_stream(stack, inputs)
    assert error is None and whole.as_numpy("TEXT")[0].decode() == text[: text.index(stop)]
    assert whole.as_numpy("FINISH_REASON")[0] == b"stop"
    del inputs["STREAM"]

    # Bad input is an error response on the stream (its INVALID_ARG code is lost in decoupled mode).
    del inputs["PROMPT"]
    [(result, error)] = triton_stream(stack, inputs)
    assert result is None and "messages (chat) or prompt (completions) is required" in str(error)


def test_seed_document_curl_body(stack: Stack) -> None:
    body = {"model": MODEL, "messages": HELLO, "temperature": 0.7, "max_tokens": 512}
    response = httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    result = response.json()
    assert isinstance(result["choices"][0]["message"]["content"], str)
    assert 0 < result["usage"]["completion_tokens"] <= 512


BAD_REQUESTS = [
    ("malformed json", "/v1/chat/completions", b'{"model": "tiny-llada", "messages": [', None),
    ("no messages", "/v1/chat/completions", {"model": MODEL}, "messages"),
    ("empty messages", "/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    (
        "unknown role",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "bot", "content": "x"}]},
        "messages",
    ),
    ("messages not a list", "/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages"),
    (
        "image content",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages",
    ),
    ("max_tokens zero", "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "max_tokens": 0}, "max_tokens"),
    (
        "max_tokens too many",
        "/v1/chat/completions",
        {"model": MODEL, "messages": HELLO, "max_tokens": 4097},
        "max_tokens",
    ),
    ("n > 1", "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "n": 2}, "n"),
    ("temperature", "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "temperature": 3}, "temperature"),
    ("steps zero", "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "nvext": {"steps": 0}}, "steps"),
    ("threshold", "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "threshold": 1.5}, "threshold"),
    ("empty stop", "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "stop": [""]}, "stop"),
    (
        "knob conflict",
        "/v1/chat/completions",
        {"model": MODEL, "messages": HELLO, "seed": 1, "nvext": {"seed": 2}},
        "seed",
    ),
    ("no prompt", "/v1/completions", {"model": MODEL}, "prompt"),
    ("empty prompt", "/v1/completions", {"model": MODEL, "prompt": " "}, "prompt"),
    ("bad stream flag", "/v1/completions", {"model": MODEL, "prompt": "x", "stream": "sometimes"}, "stream"),
]


@pytest.mark.parametrize(("case", "path", "body", "param"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_openai_400_and_server_keeps_serving(
    stack: Stack, case: str, path: str, body: object, param: str | None
) -> None:
    with stack.http() as http:
        if isinstance(body, bytes):
            response = http.post(path, content=body, headers={"content-type": "application/json"})
        else:
            response = http.post(path, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"] and error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param
        good = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 2})
        assert good.status_code == 200, good.text


def test_unknown_model_and_sdk_error_types(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError):
        chat(stack, model="no-such-model")
    with pytest.raises(openai.BadRequestError) as info:
        chat(stack, max_tokens=100_000)
    assert "max_tokens" in info.value.message
    with pytest.raises(openai.BadRequestError):
        chat(stack, messages=[], stream=True)
