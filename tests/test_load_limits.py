"""Bounded queues: more concurrent requests than a model queues get 429 with Retry-After, the rest succeed,
and nothing is left running afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack, metric_value, start_stack, tiny_image_spec, wait_for

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend


@pytest.fixture(scope="module")
def small_queue_stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = tiny_image_spec(tiny_models, "diffusers")
    spec.max_queue_size = 2
    yield from start_stack([spec], tmp_path_factory.mktemp("queue"))


def test_a_full_queue_answers_429_with_retry_after(small_queue_stack: Stack) -> None:
    body = {
        "model": "tiny-flux",
        "prompt": "x",
        "size": "128x128",
        "response_format": "b64_json",
        "num_inference_steps": 30,
    }

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small_queue_stack.url, timeout=300) as client:
            return await asyncio.gather(*(client.post("/v1/images/generations", json=body) for _ in range(12)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    # One instance runs one request and 2 may wait: the burst lands long before the first one's ~30 steps end.
    assert statuses.count(200) == 1 + 2, statuses
    assert statuses.count(429) == 12 - 3, statuses
    for response in responses:
        if response.status_code == 429:
            assert response.headers["retry-after"].isdigit()
            assert response.json()["error"]["type"] == "rate_limit_error"

    def idle() -> bool:
        text = httpx.get(small_queue_stack.triton.metrics_url).text
        return metric_value(text, "nv_inference_pending_request_count", model="image_diffusion") == 0

    wait_for(idle, timeout=60, message="the queue draining")
