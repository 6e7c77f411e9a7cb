"""API keys and body limits, on a real frontend in front of a real tritonserver."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from diffusion_runtime.serve import Frontend
from tests.conftest import Stack

KEYS = ("key-one", "key-two")


@pytest.fixture(scope="module")
def guarded(diffusers_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    workdir = tmp_path_factory.mktemp("guarded")
    frontend = Frontend(
        diffusers_stack.triton,
        fs_url=f"file://{workdir}/media",
        log_file=workdir / "frontend.log",
        extra_args=("--state-dir", str(workdir / "state"), "--api-key", KEYS[0], "--max-body-mb", "1"),
        env={"TRITON_DIFFUSION_API_KEYS": KEYS[1]},
    )
    try:
        yield frontend.start().wait_ready()
    finally:
        frontend.stop()


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic a2V5LW9uZQ==", f"bearer {KEYS[0]}x", "Bearer"])
def test_missing_or_wrong_keys_get_401_in_openai_shape(guarded: Frontend, header: str | None) -> None:
    headers = {"authorization": header} if header else {}
    response = httpx.get(f"{guarded.url}/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"


def test_every_configured_key_works_and_health_stays_open(guarded: Frontend) -> None:
    for key in KEYS:
        client = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=key, max_retries=0)
        assert "tiny-flux" in [m.id for m in client.models.list().data]
    assert httpx.get(f"{guarded.url}/health").status_code == 200
    assert httpx.get(f"{guarded.url}/health/ready").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0).models.list()


def test_bodies_over_the_limit_get_413_and_the_server_keeps_serving(guarded: Frontend) -> None:
    headers = {"authorization": f"Bearer {KEYS[0]}"}
    big = {"model": "tiny-flux", "prompt": "x" * (2 * 1024 * 1024)}
    response = httpx.post(f"{guarded.url}/v1/images/generations", json=big, headers=headers, timeout=60)
    assert response.status_code == 413 and "larger than" in response.json()["error"]["message"]

    def chunks():  # no content-length: the limit is enforced while reading
        for _ in range(40):
            yield b"x" * 65536

    response = httpx.post(
        f"{guarded.url}/v1/videos",
        content=chunks(),
        timeout=60,
        headers={**headers, "content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    ok = httpx.post(
        f"{guarded.url}/v1/images/generations",
        headers=headers,
        timeout=120,
        json={
            "model": "tiny-flux",
            "prompt": "ok",
            "size": "64x64",
            "response_format": "b64_json",
            "num_inference_steps": 1,
        },
    )
    assert ok.status_code == 200 and base64.b64decode(ok.json()["data"][0]["b64_json"])[:4] == b"\x89PNG"


def test_binding_beyond_loopback_demands_keys(diffusers_stack: Stack, tmp_path: Path) -> None:
    frontend = Frontend(
        diffusers_stack.triton,
        host="0.0.0.0",
        log_file=tmp_path / "frontend.log",
        extra_args=("--state-dir", str(tmp_path / "state")),
    ).start()
    assert frontend.process.wait(timeout=60) != 0
    assert "give --api-key" in (tmp_path / "frontend.log").read_text()
