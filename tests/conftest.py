"""Fixtures that start the real stack: tritonserver and the frontend as subprocesses on free loopback ports.

Stacks are module-scoped: each test module that needs one gets its own, started through the same classes
``scripts/serve.sh`` uses, and stopped when the module is done (so two engines never compete for the CPU).

Two lanes. A test that starts the stack's processes (tritonserver, the frontend, moto's S3 server,
perf_analyzer), the project's scripts or any other Python process is end to end and carries the ``e2e`` mark,
by its module's ``pytestmark`` or its own decorator; every other test is a unit test and runs in the fast lane,
``pytest -m "not e2e"``. The mark cannot be forgotten silently: while an unmarked test (or a fixture it sets
up) runs, starting such a process raises, and the test fails saying it needs the mark. Tools that libraries
run for a moment (``ffmpeg``, ``lscpu``, ``git``...) stay allowed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from diffusion_runtime.launcher.postgres import LocalPostgres
from diffusion_runtime.launcher.processes import Frontend, TritonServer
from diffusion_runtime.launcher.repository import REPOSITORY, ModelSpec, render_repository
from diffusion_runtime.net import free_port
from diffusion_runtime.tiny_models import ensure_tiny_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# --- the two lanes ---------------------------------------------------------------------------------------------

_running: list[pytest.Item] = []  # the test whose setup, call or teardown is under way
_refused: dict[str, list[str]] = {}  # node id -> the processes an unmarked test tried to start


def is_end_to_end_process(program: str) -> bool:
    """Whether running ``program`` (an executable's name) makes a test end to end: a server of the stack, the
    load generator, a Python interpreter (the frontend, moto, builders, command lines) or a project script."""
    return program in ("tritonserver", "perf_analyzer") or program.startswith("python") or program.endswith(".sh")


def _refuse_processes_outside_e2e(event: str, args: tuple) -> None:
    """Audit hook: a test not marked e2e may not start an end-to-end process (see the module docstring)."""
    if event != "subprocess.Popen" or not _running or _running[-1].get_closest_marker("e2e"):
        return
    program = Path(os.fsdecode(args[0])).name  # the executable Popen is about to run
    if not is_end_to_end_process(program):
        return
    test = _running[-1].nodeid
    _refused.setdefault(test, []).append(program)
    raise RuntimeError(f"{test} starts {program!r} but is not marked e2e: mark it (pytest.mark.e2e)")


sys.addaudithook(_refuse_processes_outside_e2e)


def _lane_guarded(item: pytest.Item) -> Generator[None, object, object]:
    """Run one phase of ``item`` with the audit hook watching; fail it if it started a process it may not."""
    _running.append(item)
    try:
        result = yield
    except BaseException:
        _refused.pop(item.nodeid, None)  # the phase failed already, with the hook's error if it was that
        raise
    finally:
        _running.pop()
    if item.nodeid in _refused:  # the test caught the hook's error itself
        pytest.fail(f"starts {', '.join(_refused.pop(item.nodeid))} but is not marked e2e (pytest.mark.e2e)")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _lane_guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _lane_guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _lane_guarded(item))


@dataclass
class Stack:
    triton: TritonServer
    frontend: Frontend
    media_dir: Path

    def restart_frontend(self) -> None:
        """Stop the frontend and start a new one with the same settings (same media and job store)."""
        old = self.frontend
        old.stop()
        self.frontend = Frontend(
            old.triton,
            fs_url=old.fs_url,
            http_url=old.http_url,
            extra_args=old.extra_args,
            log_file=old.log_file,
            env=old.extra_env,
        )
        self.frontend.start().wait_ready()

    @property
    def url(self) -> str:
        return self.frontend.url

    def client(self) -> openai.OpenAI:
        # max_retries=0: an SDK retry must never hide a server error from a test.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=300)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=300)


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    return ensure_tiny_models()


def tiny_video_specs(tiny_models: dict[str, Path], engine: str, **parameters: str) -> list[ModelSpec]:
    """The tiny text-to-video model as ``video_generation`` and the tiny image-to-video one beside it."""
    common = {
        "engine": engine,
        "sglang_backend": "diffusers",
        "sglang_sleep_on_idle": "true",
        "default_width": "64",
        "default_height": "64",
        **parameters,
    }
    source = REPOSITORY / "video_generation"
    return [
        ModelSpec(
            "video_generation",
            {
                **common,
                "model_path": str(tiny_models["tiny-wan-t2v"]),
                "served_model_name": "tiny-wan-t2v",
                "video_mode": "t2v",
            },
            source=source,
        ),
        ModelSpec(
            "video_generation_i2v",
            {
                **common,
                "model_path": str(tiny_models["tiny-wan-i2v"]),
                "served_model_name": "tiny-wan-i2v",
                "video_mode": "i2v",
            },
            source=source,
        ),
    ]


def tiny_image_spec(tiny_models: dict[str, Path], engine: str, **parameters: str) -> ModelSpec:
    params = {
        "model_path": str(tiny_models["tiny-flux"]),
        "served_model_name": "tiny-flux",
        "engine": engine,
        "sglang_model_id": "FLUX.1-dev",
        "sglang_sleep_on_idle": "true",
        "default_width": "64",
        "default_height": "64",
    }
    params.update(parameters)
    return ModelSpec("image_diffusion", params)


def start_stack(
    specs: list[ModelSpec],
    workdir: Path,
    *,
    frontend_args: tuple[str, ...] = (),
    fs_url: str | None = None,
    frontend_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    repository = render_repository(specs, workdir / "model_repository", gpus=[])
    media = workdir / "media"
    triton = TritonServer(
        repository, log_file=workdir / "tritonserver.log", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf")}
    )
    frontend = Frontend(
        triton,
        fs_url=fs_url or f"file://{media}",
        log_file=workdir / "frontend.log",
        extra_args=("--state-dir", str(workdir / "state"), "--video-poll-ms", "100", *frontend_args),
        env=frontend_env,
    )
    stack = Stack(triton, frontend, media)
    try:
        triton.start().wait_ready(timeout=900)
        frontend.start().wait_ready()
        yield stack
    finally:
        stack.frontend.stop()  # the one running now: a test may have restarted it
        frontend.stop()
        stack.triton.stop()
        triton.stop()


@pytest.fixture(scope="module")
def diffusers_stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The image model on the portable (diffusers) engine."""
    yield from start_stack([tiny_image_spec(tiny_models, "diffusers")], tmp_path_factory.mktemp("stack"))


def wait_for(predicate, timeout: float, interval: float = 0.2, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} did not happen within {timeout} s")


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, 0.0 when absent."""
    import re

    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name) : line.index("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass
class S3Server:
    """A real S3-protocol server process (moto's server mode) on loopback, and the environment that points
    boto3 at it."""

    process: subprocess.Popen
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = S3Server(process, f"http://127.0.0.1:{port}")

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(server.endpoint, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, message="moto's S3 server starting")
        yield server
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def two_servers(tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[tuple[list[TritonServer], Frontend, Path]]:
    """Two tritonservers over one repository with the tiny image model, and one frontend in front of both."""
    repository = render_repository([tiny_image_spec(tiny_models, "diffusers")], tmp_path / "repo", gpus=[])
    servers = [
        TritonServer(repository, log_file=tmp_path / f"triton{i}.log", env={"HF_HUB_OFFLINE": "1"}) for i in range(2)
    ]
    frontend = Frontend(
        servers,
        fs_url=f"file://{tmp_path}/media",
        log_file=tmp_path / "frontend.log",
        extra_args=("--state-dir", str(tmp_path / "state")),
    )
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        frontend.start().wait_ready()
        yield servers, frontend, repository
    finally:
        frontend.stop()
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A throwaway PostgreSQL cluster (Debian's package) on a free loopback port, shared by the session's tests;
    each test takes a database of its own with ``create_database``."""
    root = Path(tempfile.mkdtemp(prefix="td-postgres-"))  # outside pytest's private folder: the server's user
    root.chmod(0o711)  # (postgres, when the tests run as root) must reach it
    server = LocalPostgres(root / "data", durable=False)
    try:
        yield server.start()
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
