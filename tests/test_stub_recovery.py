"""A model whose Triton stub process dies or freezes comes back without a human.

Triton 2.51 neither restarts such a stub nor stops calling the model READY; the frontend marks the model down on
that server, answers 503 with Retry-After while nothing can serve it, and has that server reload the model
(``tritonserver --model-control-mode=explicit``, as ``TritonServer`` starts it). Most tests here drive the
frontend's recovery logic against a stand-in for the gRPC client; the last kills a real stub on one of two real
tritonservers behind a real frontend. Killing and freezing a stub on one server is in ``test_faults``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tritonclient.utils import InferenceServerException

from openai_frontend.errors import OpenAIError
from openai_frontend.triton import TritonBackend
from tests.conftest import wait_for
from tests.test_faults import BACK_WITHIN_S, probe, stub_of

IMAGE = "image_diffusion"


# --- the recovery logic, against a stand-in for tritonclient's aio client --------------------------------------


@dataclass
class StandInTriton:
    """What the frontend sees of one tritonserver: models whose stub died answer Triton's error until reloaded;
    as in Triton 2.51, a load whose config is unchanged does nothing. ``load_model`` waits for ``reload_done``
    (so a test can look while a reload is under way)."""

    dead: set[str] = field(default_factory=set)
    model_control: bool = True
    failing_loads: int = 0
    config: dict = field(default_factory=lambda: {"name": IMAGE, "parameters": {"task": {"string_value": "image"}}})
    loads: list[tuple[str, float]] = field(default_factory=list)
    reload_done: asyncio.Event = field(default_factory=asyncio.Event)

    async def get_model_config(self, model: str, as_json: bool = True) -> dict:
        return {"config": json.loads(json.dumps(self.config))}

    async def load_model(self, model: str, config: str | None = None, client_timeout: float | None = None) -> None:
        self.loads.append((model, time.monotonic()))
        if not self.model_control:
            raise InferenceServerException(
                "explicit model load / unload is not allowed if polling is enabled", status="StatusCode.UNAVAILABLE"
            )
        await self.reload_done.wait()
        if self.failing_loads:
            self.failing_loads -= 1
            raise InferenceServerException("failed to load 'image_diffusion': out of memory", status="INTERNAL")
        if config is not None and json.loads(config) != self.config:
            self.config = json.loads(config)
            self.dead.discard(model)

    def reload_count(self) -> str:
        return self.config["parameters"].get("reload_count", {}).get("string_value", "")

    async def is_server_ready(self) -> bool:
        return True

    async def get_model_repository_index(self, as_json: bool = True) -> dict:
        return {"models": [{"name": IMAGE, "version": "1", "state": "READY"}]}  # Triton 2.51: READY regardless

    async def generate(self, model: str) -> str:
        await asyncio.sleep(0)  # a network call: other tasks (the reload) run meanwhile
        if model in self.dead:
            raise InferenceServerException(f"Stub process '{model}_0_0' is not healthy.", status="INTERNAL")
        return "image"

    async def close(self) -> None:
        pass


def backend_over(*servers: StandInTriton, reload_interval: float = 10.0) -> TritonBackend:
    backend = TritonBackend([f"127.0.0.1:{9000 + i}" for i in range(len(servers))], reload_interval=reload_interval)
    for endpoint, server in zip(backend.endpoints, servers, strict=True):
        endpoint.client = server  # type: ignore[assignment]
    return backend


async def generate(backend: TritonBackend) -> str | OpenAIError:
    try:
        return await backend._call(lambda client: client.generate(IMAGE), IMAGE)
    except OpenAIError as exc:
        return exc


async def until(predicate, timeout: float = 5.0, poll_s: float = 0.01) -> None:
    """Poll ``predicate`` (other tasks run between polls) until it holds, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(poll_s)


def test_a_dead_model_gets_one_reload_and_503_with_retry_after_until_it_is_back(caplog) -> None:
    caplog.set_level(logging.INFO, logger="openai_frontend.triton")

    async def scenario() -> None:
        server = StandInTriton(dead={IMAGE})
        backend = backend_over(server)
        answers = await asyncio.gather(*(generate(backend) for _ in range(20)))
        answers += [await generate(backend) for _ in range(5)]  # while the reload is under way
        assert [model for model, _ in server.loads] == [IMAGE], "one reload, not one per request"
        assert all(isinstance(a, OpenAIError) and a.status == 503 for a in answers), answers
        response = answers[-1].response()  # type: ignore[union-attr]
        assert response.headers["retry-after"].isdigit() and answers[-1].code == "model_unavailable"
        ready, detail = await backend.readiness()
        assert not ready and detail["models"] == {IMAGE: "UNAVAILABLE"} and detail["reloading"] == [IMAGE], detail

        server.reload_done.set()
        await until(lambda: IMAGE not in backend.endpoints[0].failed_models)
        assert await generate(backend) == "image"
        assert server.reload_count() == "1" and server.config["parameters"]["task"] == {"string_value": "image"}
        await backend.close()

    asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert any("reloading model image_diffusion" in m for m in messages)
    assert any("is back: reloaded in" in m for m in messages)


def test_reloads_are_spaced_and_back_off_while_they_fail() -> None:
    async def scenario() -> None:
        server = StandInTriton(dead={IMAGE}, failing_loads=2)
        server.reload_done.set()
        backend = backend_over(server, reload_interval=0.2)
        assert isinstance(await generate(backend), OpenAIError)
        await until(lambda: IMAGE not in backend.endpoints[0].failed_models)
        starts = [at for _, at in server.loads]
        assert len(starts) == 3
        assert starts[1] - starts[0] >= 0.19 and starts[2] - starts[1] >= 0.39, "spaced, doubling after failures"

        server.dead.add(IMAGE)  # dies again right after coming back: the next reload waits out the interval
        assert isinstance(await generate(backend), OpenAIError)
        await until(lambda: IMAGE not in backend.endpoints[0].failed_models)
        assert len(server.loads) == 4 and server.loads[3][1] - starts[2] >= 0.19
        assert await generate(backend) == "image" and server.reload_count() == "2"
        await backend.close()

    asyncio.run(scenario())


def test_an_error_from_the_copy_a_reload_replaced_starts_no_new_reload() -> None:
    async def scenario() -> None:
        server = StandInTriton(dead={IMAGE})
        server.reload_done.set()
        backend = backend_over(server)
        endpoint = backend.endpoints[0]
        sent_before_reload = time.monotonic()
        assert isinstance(await generate(backend), OpenAIError)
        await until(lambda: IMAGE not in endpoint.failed_models)
        backend._model_failed(endpoint, IMAGE, "Stub process 'image_diffusion_0_0' is not healthy.", sent_before_reload)
        assert IMAGE not in endpoint.failed_models and len(server.loads) == 1
        await backend.close()

    asyncio.run(scenario())


def test_frontends_reloading_at_once_make_one_reload() -> None:
    async def scenario() -> None:
        server = StandInTriton(dead={IMAGE})
        frontends = [backend_over(server), backend_over(server)]
        for backend in frontends:
            assert isinstance(await generate(backend), OpenAIError)
        server.reload_done.set()
        for backend in frontends:
            await until(lambda backend=backend: not backend.endpoints[0].failed_models)
        assert len(server.loads) == 2 and server.reload_count() == "1", "both asked for the same change"
        for backend in frontends:
            await backend.close()

    asyncio.run(scenario())


def test_other_servers_serve_while_one_reloads_and_only_that_one_reloads() -> None:
    async def scenario() -> None:
        healthy, broken = StandInTriton(), StandInTriton(dead={IMAGE})
        backend = backend_over(healthy, broken)
        answers = [await generate(backend) for _ in range(10)]
        assert answers == ["image"] * 10, "no user-visible error while another server has the model"
        assert broken.loads and not healthy.loads
        broken.reload_done.set()
        await until(lambda: not backend.endpoints[1].failed_models)
        await backend.close()

    asyncio.run(scenario())


def test_a_server_without_model_control_is_told_once_and_still_tried(caplog) -> None:
    async def scenario() -> None:
        server = StandInTriton(dead={IMAGE}, model_control=False)
        backend = backend_over(server)
        first = await generate(backend)
        await until(lambda: not backend.endpoints[0].model_control)
        later = [await generate(backend) for _ in range(5)]
        assert len(server.loads) == 1, "a refused reload is not asked for again"
        assert all(isinstance(a, OpenAIError) and a.code == "model_unavailable" for a in [first, *later])
        server.dead.clear()  # a supervisor restarted tritonserver
        assert await generate(backend) == "image"
        assert not backend.endpoints[0].failed_models
        await backend.close()

    asyncio.run(scenario())
    assert sum("--model-control-mode=explicit" in r.getMessage() for r in caplog.records) == 1


# --- real processes --------------------------------------------------------------------------------------------


@pytest.mark.e2e  # starts two tritonservers and the frontend
def test_with_two_servers_the_other_serves_and_only_the_failed_one_reloads(two_servers, tmp_path: Path) -> None:
    servers, frontend, _ = two_servers
    healthy, broken = servers
    healthy_stub, dead_stub = stub_of(healthy, IMAGE), stub_of(broken, IMAGE)
    assert healthy_stub is not None and dead_stub is not None
    dead_stub.kill()
    killed = time.monotonic()
    # Every request succeeds: the one that finds the dead stub moves on to the other server.
    probes = [probe(frontend.url) for _ in range(6)]
    assert [p.status for p in probes] == [200] * 6, probes

    def reloaded() -> bool:
        stub = stub_of(broken, IMAGE)
        ready = httpx.get(f"{frontend.url}/health/ready", timeout=10).json()["triton"][broken.grpc_url]
        return stub is not None and stub.pid != dead_stub.pid and ready["models"][IMAGE] == "READY"

    wait_for(reloaded, timeout=BACK_WITHIN_S - (time.monotonic() - killed), interval=1.0, message="the reload")
    untouched = stub_of(healthy, IMAGE)
    assert untouched is not None and untouched.pid == healthy_stub.pid, "the healthy server's model is left alone"
    log = (tmp_path / "frontend.log").read_text()
    assert f"reloading model image_diffusion on Triton at {broken.grpc_url}" in log
    assert f"on Triton at {healthy.grpc_url}" not in log
