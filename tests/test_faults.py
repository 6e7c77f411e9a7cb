"""Faults, on real processes: a model's Triton stub process killed or frozen mid-request, tritonserver killed
and restarted under load, and the S3 endpoint going away mid-run. Each must end requests quickly with a clear 5xx
(never a hang or a lost result), be visible on ``/health/ready``, and heal without a human and without
restarting the frontend.

What Triton 2.51 does when a Python model's stub process dies or freezes (observed here): the request in flight
fails within seconds ("Stub process '<instance>' is not healthy."), every later request to that model fails the
same way, the stub is *not* restarted, and Triton keeps reporting the model READY (``/v2/health/ready`` and the
repository index). The frontend therefore tracks such models itself: it reports the model UNAVAILABLE on
``/health/ready``, answers 503 ``model_unavailable`` with Retry-After, and has Triton reload the model
(``openai_frontend.triton``), which serves again within a minute. A frontend restart (completed video jobs and
their files kept, interrupted ones ``failed``) is covered by ``test_videos_api``; several servers and the
recovery logic itself by ``test_stub_recovery``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from diffusion_runtime.launcher.processes import Frontend, TritonServer
from diffusion_runtime.net import free_port
from scripts.reliability_report import record
from tests.conftest import S3Server, Stack, start_stack, tiny_image_spec, tiny_video_specs, wait_for

pytestmark = pytest.mark.e2e  # starts, kills and restarts tritonserver, the frontend and moto's S3 server

IMAGE, T2V = "tiny-flux", "tiny-wan-t2v"
QUICK = {"model": IMAGE, "prompt": "x", "size": "16x16", "num_inference_steps": 1, "response_format": "b64_json"}
LONG = {"model": IMAGE, "prompt": "long", "size": "256x256", "num_inference_steps": 200, "response_format": "b64_json"}
FAST_S = 10.0  # "fails fast": a failing request answers within this, against minutes for a generation
BACK_WITHIN_S = 60.0  # from a stub's death until its model answers a real generation again
FIGURES: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="module")
def stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    specs = [tiny_image_spec(tiny_models, "diffusers"), tiny_video_specs(tiny_models, "diffusers")[0]]
    stacks = start_stack(specs, tmp_path_factory.mktemp("faults"))
    stack = next(stacks)
    original = stack.triton
    try:
        yield stack
    finally:
        if stack.triton is not original:  # a restarted server is this module's to stop
            stack.triton.stop()
        next(stacks, None)
        record("faults", FIGURES)


def stub_of(triton: TritonServer, model: str) -> psutil.Process | None:
    """The live ``triton_python_backend_stub`` child of ``triton`` that runs ``model`` (not a dead or frozen one
    that a reload replaced)."""
    assert triton.process is not None
    for child in psutil.Process(triton.process.pid).children():
        try:
            live = child.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED)
            if live and f"/{model}/1/model.py" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def kill_triton(triton: TritonServer) -> None:
    """SIGKILL tritonserver and its stubs (one process group): a crash, not a shutdown."""
    assert triton.process is not None
    os.killpg(triton.process.pid, signal.SIGKILL)
    triton.process.wait(30)


def same_server(triton: TritonServer) -> TritonServer:
    """A new tritonserver on the old one's ports and repository: what a supervisor's restart gives."""
    return TritonServer(
        triton.repository,
        http_port=triton.http_port,
        grpc_port=triton.grpc_port,
        metrics_port=triton.metrics_port,
        log_file=triton.log_file,
        env=triton.extra_env,
    )


def readiness(stack: Stack) -> httpx.Response:
    return httpx.get(f"{stack.url}/health/ready", timeout=10)


@dataclass
class Outcome:
    sent_at: float
    seconds: float
    status: int
    code: str | None


@dataclass
class Load:
    """Image requests from a few threads until stopped (bounded in count and time), every outcome kept."""

    url: str
    workers: int = 2
    interval: float = 0.05  # between one worker's requests: a paced client, not a spin loop
    max_requests: int = 3000
    max_seconds: float = 300.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set() and time.monotonic() < deadline and len(self.outcomes) < self.max_requests:
                sent = time.monotonic()
                response = http.post("/v1/images/generations", json=QUICK)
                code = response.json()["error"]["code"] if response.status_code != 200 else None
                self.outcomes.append(Outcome(sent, time.monotonic() - sent, response.status_code, code))
                self._stop.wait(self.interval)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if start <= o.sent_at < end]


@dataclass
class Probe:
    """One image request's answer, as a client sees it."""

    seconds: float
    status: int
    code: str | None
    retry_after: str | None


def probe(url: str, body: dict[str, object] = QUICK) -> Probe:
    sent = time.monotonic()
    response = httpx.post(f"{url}/v1/images/generations", json=body, timeout=300)
    code = response.json()["error"]["code"] if response.status_code != 200 else None
    return Probe(time.monotonic() - sent, response.status_code, code, response.headers.get("retry-after"))


def fault_under_a_request(url: str, stub: psutil.Process, fault: signal.Signals) -> tuple[Probe, float, float]:
    """Send a long generation and deliver ``fault`` to ``stub`` while it denoises it: the request's answer,
    when the fault happened, and how soon after it the answer came (which must be fast)."""
    answer: list[Probe] = []
    caller = threading.Thread(target=lambda: answer.append(probe(url, LONG)))
    idle_cpu = sum(stub.cpu_times()[:2])
    caller.start()
    # The stub was idle: once it has burnt a second of CPU, it is denoising this request.
    wait_for(lambda: sum(stub.cpu_times()[:2]) - idle_cpu > 1.0, timeout=60, message="the stub generating")
    os.kill(stub.pid, fault)
    faulted = time.monotonic()
    caller.join(120)
    assert answer, "the request in flight hangs after its stub died"
    answered_after = time.monotonic() - faulted
    assert answered_after < FAST_S, "the request in flight fails fast"
    return answer[0], faulted, answered_after


def image_back(url: str, since: float) -> list[Probe]:
    """Real image generations, one a second, until one succeeds within ``BACK_WITHIN_S`` of ``since``; all of
    them. Every failure among them must be a fast 503 ``model_unavailable`` with Retry-After."""
    seen: list[Probe] = []

    def serves() -> bool:
        seen.append(probe(url))
        return seen[-1].status == 200

    wait_for(serves, timeout=BACK_WITHIN_S - (time.monotonic() - since), interval=1.0, message="the model back")
    for p in seen[:-1]:
        assert p.status == 503 and p.code == "model_unavailable", p
        assert p.retry_after is not None and p.retry_after.isdigit() and p.seconds < FAST_S, p
    return seen


def test_a_killed_stub_fails_its_request_fast_and_the_model_is_back_within_60_s(stack: Stack) -> None:
    """Triton 2.51 does not restart a dead stub: the frontend has Triton reload the model, answers 503 with
    Retry-After meanwhile, and says so on readiness; other models are not blamed. The same for a streaming
    (decoupled) model whose stub dies mid-job: the job ends ``failed`` at once, and the model comes back."""
    wait_for(lambda: readiness(stack).status_code == 200, timeout=300, message="a ready stack")
    stub = stub_of(stack.triton, "image_diffusion")
    assert stub is not None
    response, killed, failed_after = fault_under_a_request(stack.url, stub, signal.SIGKILL)
    assert response.status == 503 and response.code == "model_unavailable", response
    assert response.retry_after is not None and response.retry_after.isdigit()
    ready = readiness(stack)
    assert ready.status_code == 503, ready.text
    assert ready.json()["models"]["image_diffusion"] == "UNAVAILABLE", ready.text
    assert ready.json()["models"]["video_generation"] == "READY", "other models are not blamed"
    other = {"model": T2V, "prompt": "x", "size": "16x16", "num_frames": 5, "response_format": "url"}
    assert httpx.post(f"{stack.url}/v1/videos", json=other, timeout=120).status_code == 200, "other models serve"

    in_between = image_back(stack.url, killed)
    image_back_after = time.monotonic() - killed
    new_stub = stub_of(stack.triton, "image_diffusion")
    assert new_stub is not None and new_stub.pid != stub.pid, "a new stub process runs the model"

    video_stub = stub_of(stack.triton, "video_generation")
    assert video_stub is not None
    long_video = {"model": T2V, "prompt": "long", "size": "256x256", "num_frames": 33, "num_inference_steps": 200}
    job = httpx.post(f"{stack.url}/v1/videos", json=long_video, timeout=60).json()

    def job_state() -> dict[str, object]:
        return httpx.get(f"{stack.url}/v1/videos/{job['id']}", timeout=10).json()

    wait_for(lambda: job_state()["progress"] > 0, timeout=120, message="the video job progressing")
    video_stub.kill()
    video_killed = time.monotonic()
    ended = wait_for(lambda: (state := job_state())["status"] != "in_progress" and state, timeout=60, message="end")
    job_failed_after = time.monotonic() - video_killed
    assert ended["status"] == "failed" and ended["error"]["code"] == "model_unavailable", ended
    assert job_failed_after < FAST_S
    video_statuses: list[int] = []

    def video_serves() -> bool:  # a blocking create answers as the job ends: 503 while the model is down
        video_statuses.append(httpx.post(f"{stack.url}/v1/videos", json=other, timeout=120).status_code)
        return video_statuses[-1] == 200

    wait_for(video_serves, timeout=BACK_WITHIN_S - job_failed_after, interval=1.0, message="the video model back")
    assert set(video_statuses) <= {200, 503}, video_statuses
    video_back_after = time.monotonic() - video_killed
    wait_for(lambda: readiness(stack).status_code == 200, timeout=30, interval=0.25, message="readiness again")
    FIGURES["stub_kill"] = {
        "request_status": response.status,
        "request_failed_after_kill_s": round(failed_after, 2),
        "requests_while_down": len(in_between) - 1,
        "slowest_503_while_down_s": round(max((p.seconds for p in in_between[:-1]), default=0.0), 3),
        "retry_after_s": response.retry_after,
        "image_model_serving_again_after_kill_s": round(image_back_after, 1),
        "video_job_failed_after_kill_s": round(job_failed_after, 2),
        "video_job_error": ended["error"],
        "video_model_serving_again_after_kill_s": round(video_back_after, 1),
    }


def test_a_frozen_stub_fails_its_request_fast_and_the_model_is_back_within_60_s(stack: Stack) -> None:
    """A stub frozen mid-request (SIGSTOP: the whole process, its health heartbeat included) is a hang Triton
    notices: the request fails within seconds as for a dead stub, and the model is reloaded the same way. The
    frozen process belongs to the replaced copy, which Triton 2.51 never finishes unloading; it is killed here."""
    wait_for(lambda: readiness(stack).status_code == 200, timeout=300, message="a ready stack")
    stub = stub_of(stack.triton, "image_diffusion")
    assert stub is not None
    try:
        response, frozen, failed_after = fault_under_a_request(stack.url, stub, signal.SIGSTOP)
        assert response.status == 503 and response.code == "model_unavailable", response
        assert readiness(stack).json()["models"]["image_diffusion"] == "UNAVAILABLE"
        in_between = image_back(stack.url, frozen)
        back_after = time.monotonic() - frozen
        new_stub = stub_of(stack.triton, "image_diffusion")
        assert new_stub is not None and new_stub.pid != stub.pid, "a new stub process runs the model"
    finally:
        if stub.is_running():
            stub.kill()
    wait_for(lambda: readiness(stack).status_code == 200, timeout=30, interval=0.25, message="readiness again")
    FIGURES["stub_freeze"] = {
        "request_status": response.status,
        "request_failed_after_freeze_s": round(failed_after, 2),
        "requests_while_down": len(in_between) - 1,
        "model_serving_again_after_freeze_s": round(back_after, 1),
    }


def test_tritonserver_restart_under_load_gives_fast_503s_then_recovers(stack: Stack) -> None:
    wait_for(lambda: readiness(stack).status_code == 200, timeout=300, message="a ready stack")
    with Load(stack.url) as load:
        wait_for(lambda: sum(o.status == 200 for o in load.outcomes) >= 5, timeout=120, message="load flowing")
        killed = time.monotonic()
        kill_triton(stack.triton)
        wait_for(
            lambda: sum(o.status == 503 for o in load.between(killed, time.monotonic())) >= 10,
            timeout=30,
            message="503s while tritonserver is down",
        )
        assert readiness(stack).status_code == 503
        restarting = time.monotonic()  # until now the server was certainly down
        stack.triton = same_server(stack.triton).start().wait_ready(timeout=300)
        back = time.monotonic()
        wait_for(
            lambda: any(o.status == 200 for o in load.between(restarting, time.monotonic())),
            timeout=60,
            message="requests succeeding again",
        )
        wait_for(lambda: load.between(back + 3, time.monotonic()), timeout=30, message="load after the restart")
    down = load.between(killed, restarting)
    statuses = {o.status for o in load.outcomes}
    assert statuses <= {200, 503}, f"only successes and fast 503s: {statuses}"
    assert down and all(o.status == 503 for o in down), "down means 503"
    assert all(o.code in ("triton_unavailable", "model_unavailable") for o in load.outcomes if o.status == 503)
    assert max(o.seconds for o in down) < FAST_S, "no request waits on a dead server"
    first_ok = min(o.sent_at for o in load.between(restarting, time.monotonic()) if o.status == 200)
    late_failures = [o for o in load.between(back, time.monotonic()) if o.status != 200]
    # gRPC's reconnect backoff is capped at 1 s (openai_frontend.triton.channel_args), not its default 120 s.
    assert all(o.sent_at < back + 3 for o in late_failures), "the frontend reconnects within seconds"
    assert ready_stack_serves(stack)
    FIGURES["tritonserver_restart"] = {
        "requests": len(load.outcomes),
        "ok": sum(o.status == 200 for o in load.outcomes),
        "503_while_down": len(down),
        "slowest_503_s": round(max(o.seconds for o in down), 3),
        "tritonserver_ready_after_restart_s": round(back - restarting, 1),
        "first_success_after_restart_s": round(first_ok - restarting, 2),
        "failures_after_ready": len(late_failures),
        "last_failure_after_ready_s": round(max((o.sent_at - back for o in late_failures), default=0.0), 2),
    }


def ready_stack_serves(stack: Stack) -> bool:
    return (
        readiness(stack).status_code == 200
        and httpx.post(f"{stack.url}/v1/images/generations", json=QUICK, timeout=120).status_code == 200
    )


def start_moto(port: int, log: Path) -> S3Server:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    server = S3Server(process, f"http://127.0.0.1:{port}")

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(server.endpoint, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, message="moto's S3 server starting")
    return server


def test_storage_outage_is_a_clear_503_and_storage_returning_heals(stack: Stack, tmp_path: Path) -> None:
    """The S3 endpoint goes away mid-run: results that must be stored fail with a 503 that says storage failed
    (a video job ends ``failed`` saying so), work that needs no storage goes on, and storing works again once
    the endpoint is back (moto starts empty, so the bucket is made again, as a restored store would have it)."""
    wait_for(lambda: readiness(stack).status_code == 200, timeout=300, message="a ready stack")
    port, bucket = free_port(), "reliability"
    moto = start_moto(port, tmp_path / "moto.log")
    frontend: Frontend | None = None
    try:
        moto.client().create_bucket(Bucket=bucket)
        frontend = Frontend(
            stack.triton,
            fs_url=f"s3://{bucket}/media",
            log_file=tmp_path / "frontend.log",
            extra_args=("--state-dir", str(tmp_path / "state"), "--video-poll-ms", "100"),
            env=moto.env,
        ).start()
        frontend.wait_ready()
        stored = {**QUICK, "response_format": "url"}
        with httpx.Client(base_url=frontend.url, timeout=120) as http:
            assert http.post("/v1/images/generations", json=stored).status_code == 200

            moto.process.terminate()
            moto.process.wait(30)
            sent = time.monotonic()
            failed = http.post("/v1/images/generations", json=stored)
            failed_in = time.monotonic() - sent
            assert failed.status_code == 503, failed.text
            error = failed.json()["error"]
            assert error["code"] == "storage_unavailable" and "storage failed" in error["message"], error
            assert failed_in < 30
            assert http.post("/v1/images/generations", json=QUICK).status_code == 200, "b64 needs no storage"
            job = http.post("/v1/videos", json={"model": T2V, "prompt": "x", "size": "16x16", "num_frames": 5}).json()
            ended = wait_for(
                lambda: (j := http.get(f"/v1/videos/{job['id']}").json())["status"] in ("completed", "failed") and j,
                timeout=120,
                message="the video job ending",
            )
            assert ended["status"] == "failed" and "S3" in ended["error"]["message"], ended

            moto = start_moto(port, tmp_path / "moto.log")
            moto.client().create_bucket(Bucket=bucket)
            back = time.monotonic()
            healed = http.post("/v1/images/generations", json=stored)
            assert healed.status_code == 200, healed.text
            assert httpx.get(healed.json()["data"][0]["url"], timeout=30).status_code == 200
        FIGURES["storage_outage"] = {
            "failed_request_s": round(failed_in, 2),
            "failed_status": failed.status_code,
            "video_job_error": ended["error"],
            "first_success_after_storage_back_s": round(time.monotonic() - back, 2),
        }
    finally:
        if frontend is not None:
            frontend.stop()
        if moto.process.poll() is None:
            moto.process.terminate()
            moto.process.wait(30)
