"""Stopping a tritonserver that serves a model on the sglang engine, the way ``TritonServer.stop`` (and so
``scripts/serve.sh``) does: SIGINT, and tritonserver's exit timeout of 10 s.

Such a stop used to run into the exit timeout (exit code 1, models still loaded): SGLang's ``DiffGenerator.shutdown``
waits up to 10 s for each worker, whose interpreter takes seconds to tear down, and the stub itself, holding
SGLang's million objects, took seconds more and then segfaulted freeing its metric families. The second test
covers the last resort of the bounded worker stop, which the first never reaches: SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient

from diffusion_runtime.engines.sglang_engine import WORKER_SIGNAL_WAIT_S, stop_processes
from diffusion_runtime.launcher.processes import TritonServer
from diffusion_runtime.launcher.repository import render_repository
from tests.conftest import tiny_image_spec, wait_for

STOP_WITHIN_S = 15.0  # tritonserver's exit timeout (10 s) and its one-second polls around it
CRASH_MARKERS = ("Segfault", "Segmentation fault")  # TVM FFI's crash handler (loaded by SGLang); faulthandler's


def live_processes_in_session(session: int) -> list[psutil.Process]:
    """Processes of ``session`` that still run (zombies, which only wait to be reaped, excluded)."""
    live = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getsid(process.pid) == session and process.info["status"] != psutil.STATUS_ZOMBIE:
                live.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return live


def generate_one_image(server: TritonServer) -> None:
    """One small text-to-image request straight to Triton, so the stop follows real work."""

    def scalar(name: str, value: int) -> httpclient.InferInput:
        tensor = httpclient.InferInput(name, [1], "INT32")
        tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
        return tensor

    prompt = httpclient.InferInput("PROMPT", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a red fox"], dtype=np.object_))
    inputs = [prompt, scalar("HEIGHT", 64), scalar("WIDTH", 64), scalar("NUM_INFERENCE_STEPS", 1)]
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=300) as client:
        images = client.infer("image_diffusion", inputs).as_numpy("IMAGES")
    assert images.shape == (1,) and images[0][:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e  # starts tritonserver
def test_tritonserver_with_an_sglang_model_stops_promptly_and_cleanly(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    repository = render_repository([tiny_image_spec(tiny_models, "sglang")], tmp_path / "repository", gpus=[])
    log = tmp_path / "tritonserver.log"
    server = TritonServer(repository, log_file=log, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    server.start()
    assert server.process is not None
    session = server.process.pid  # started in a session of its own: its stubs and SGLang's workers are in it
    try:
        server.wait_ready(timeout=600)
        assert len(live_processes_in_session(session)) >= 3, "expected tritonserver, the stub and SGLang's worker"
        generate_one_image(server)
    finally:
        started = time.monotonic()
        server.stop()
        stop_s = time.monotonic() - started

    text = log.read_text(errors="replace")
    assert server.process.returncode == 0, f"exit code {server.process.returncode} after {stop_s:.1f} s\n{text[-4000:]}"
    assert stop_s < STOP_WITHIN_S, f"the stop took {stop_s:.1f} s\n{text[-4000:]}"
    crashes = [marker for marker in CRASH_MARKERS if marker in text]
    assert not crashes, f"a process crashed on the way out ({crashes})\n{text[-4000:]}"
    wait_for(
        lambda: not live_processes_in_session(session),
        timeout=5.0,
        message="every process of tritonserver's session (stub, SGLang's workers) exiting",
    )


def ignore_sigterm(ready: EventType) -> None:
    """A worker that SIGTERM does not stop (as one whose Python SIGTERM handler never runs, stuck in native code)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    threading.Event().wait()


def test_workers_that_outlast_the_grace_are_terminated_then_killed() -> None:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    stubborn = context.Process(target=ignore_sigterm, args=(ready,), daemon=True)
    stubborn.start()
    try:
        assert ready.wait(30)
        started = time.monotonic()
        stop_processes([stubborn], grace_s=0.1)
        took = time.monotonic() - started
    finally:
        if stubborn.is_alive():
            stubborn.kill()
    assert stubborn.exitcode == -signal.SIGKILL
    assert took < 0.1 + 2 * WORKER_SIGNAL_WAIT_S + 1.0
