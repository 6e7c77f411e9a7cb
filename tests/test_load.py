"""Load against a real stack: a burst far beyond a bounded queue is split into successes and 429s with nothing
lost or left running, and a long run of requests leaves the processes' memory flat.
(``test_load_limits`` checks the 429 shape with a small burst; this one goes to 200 at once and counts.)
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from scripts.reliability_report import record
from tests.conftest import Stack, metric_value, start_stack, tiny_image_spec, wait_for

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend

BURST = 200
QUEUE = 8  # requests the frontend lets wait for the model besides the one running
RUN, WARM_UP = 500, 50
MEMORY_TOLERANCE = 0.10
FIGURES: dict[str, dict[str, object]] = {}
BODY = {"model": "tiny-flux", "prompt": "x", "size": "64x64", "num_inference_steps": 4, "response_format": "b64_json"}


@pytest.fixture(scope="module")
def stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = tiny_image_spec(tiny_models, "diffusers", max_size="128", max_steps="8")
    spec.max_queue_size = QUEUE
    yield from start_stack([spec], tmp_path_factory.mktemp("load"))
    record("load", FIGURES)


def triton_counts(stack: Stack) -> dict[str, float]:
    text = httpx.get(stack.triton.metrics_url, timeout=10).text
    model = "image_diffusion"
    return {
        "success": metric_value(text, "nv_inference_request_success", model=model),
        "failed": sum(
            metric_value(text, "nv_inference_request_failure", model=model, reason=reason)
            for reason in ("REJECTED", "BACKEND", "OTHER", "CANCELED")
        ),
        "pending": metric_value(text, "nv_inference_pending_request_count", model=model),
    }


def test_a_burst_of_200_splits_into_successes_and_429s_and_leaves_nothing_running(stack: Stack) -> None:
    before = triton_counts(stack)

    async def burst() -> list[tuple[httpx.Response, float]]:
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
        async with httpx.AsyncClient(base_url=stack.url, timeout=300, limits=limits) as client:

            async def one() -> tuple[httpx.Response, float]:
                sent = time.monotonic()
                response = await client.post("/v1/images/generations", json=BODY)
                return response, time.monotonic() - sent

            return await asyncio.gather(*(one() for _ in range(BURST)))

    started = time.monotonic()
    results = asyncio.run(burst())
    elapsed = time.monotonic() - started
    statuses = Counter(response.status_code for response, _ in results)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0, "the excess was refused"
    assert statuses[200] > QUEUE, "the queued requests were served"
    for response, _ in results:
        if response.status_code == 429:
            assert response.headers["retry-after"].isdigit(), response.headers
            assert response.json()["error"]["code"] == "queue_full"
        else:
            assert base64.b64decode(response.json()["data"][0]["b64_json"])[:4] == b"\x89PNG"

    wait_for(lambda: triton_counts(stack)["pending"] == 0, timeout=60, message="Triton's queue draining")
    after = triton_counts(stack)
    # Every 200 ran exactly once in Triton, nothing failed there, and nothing still waits. (Triton 2.51 does not
    # count queue-full rejections among its failures, so the 429s leave no trace there.)
    assert after["success"] - before["success"] == statuses[200]
    assert after["failed"] == before["failed"]
    refused = [seconds for response, seconds in results if response.status_code == 429]
    FIGURES["burst"] = {
        "requests": BURST,
        "max_queue_size": QUEUE,
        "ok": statuses[200],
        "429": statuses[429],
        "other": sum(count for status, count in statuses.items() if status not in (200, 429)),
        "slowest_429_s": round(max(refused), 3),
        "burst_seconds": round(elapsed, 1),
        "pending_after": after["pending"],
    }


def rss_mb(stack: Stack) -> dict[str, float]:
    """Resident memory of the frontend, each model stub and tritonserver itself, in MB."""
    assert stack.frontend.process is not None and stack.triton.process is not None
    triton = psutil.Process(stack.triton.process.pid)
    sizes = {"frontend": psutil.Process(stack.frontend.process.pid).memory_info().rss}
    for child in triton.children():
        model = next((part for part in child.cmdline() if part.endswith("/1/model.py")), None)
        if model is not None:
            sizes[f"stub:{Path(model).parents[1].name}"] = child.memory_info().rss
    sizes["tritonserver"] = triton.memory_info().rss
    return {name: round(size / 2**20, 1) for name, size in sizes.items()}


def test_500_requests_in_a_row_leave_memory_flat(stack: Stack) -> None:
    """Varied requests (sizes, counts, formats, URL and base64) from two clients in turn, after a warm-up."""
    variants = itertools.cycle(
        [
            {"size": "32x32", "response_format": "b64_json"},
            {"size": "32x16", "n": 2, "response_format": "url"},
            {"size": "16x32", "output_format": "jpeg", "output_compression": 50, "response_format": "b64_json"},
            {"size": "16x16", "output_format": "webp", "response_format": "url"},
        ]
    )
    bodies = [{**BODY, "num_inference_steps": 1, **next(variants)} for _ in range(WARM_UP + RUN)]

    def run(batch: list[dict[str, object]]) -> Counter[int]:
        with httpx.Client(base_url=stack.url, timeout=120) as http, ThreadPoolExecutor(2) as pool:
            return Counter(pool.map(lambda body: http.post("/v1/images/generations", json=body).status_code, batch))

    assert run(bodies[:WARM_UP]) == Counter({200: WARM_UP})
    before = rss_mb(stack)
    started = time.monotonic()
    statuses = run(bodies[WARM_UP:])
    elapsed = time.monotonic() - started
    after = rss_mb(stack)
    FIGURES["memory"] = {
        "requests": RUN,
        "warm_up": WARM_UP,
        "seconds": round(elapsed, 1),
        "rss_mb_before": before,
        "rss_mb_after": after,
        "growth": {name: round(after[name] / before[name] - 1, 4) for name in before},
    }
    assert statuses == Counter({200: RUN}), statuses
    for name in before:
        if name != "tritonserver":  # the frontend and the models' stubs: what this project's code runs in
            assert after[name] <= before[name] * (1 + MEMORY_TOLERANCE), FIGURES["memory"]
