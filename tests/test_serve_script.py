"""``scripts/serve.sh`` as a user runs it: everything comes up, serves, and Ctrl-C stops all it started."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from PIL import Image

from diffusion_runtime.launcher.repository import PROJECT_ROOT
from diffusion_runtime.net import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e  # runs scripts/serve.sh


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serve_script_serves_tiny_models_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [
                str(PROJECT_ROOT / "scripts" / "serve.sh"),
                "--port",
                str(port),
                "--run-dir",
                str(tmp_path / "run"),
                "--fs-url",
                f"file://{tmp_path}/media",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:

        def ready() -> bool:
            assert serve.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=900, interval=1.0, message="serve.sh becoming ready")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert "tiny-flux" in [m.id for m in client.models.list().data]
        result = client.images.generate(
            model="tiny-flux",
            prompt="a boat",
            size="64x64",
            response_format="b64_json",
            extra_body={"num_inference_steps": 2},
        )
        assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (64, 64)
        page = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=True, timeout=30)  # what a browser opens
        assert page.url.path == "/playground/" and "<title>Triton diffusion playground</title>" in page.text
        # serve.sh prints it once its own readiness poll (backing off to 1 s) sees the frontend ready, which can be
        # after this test's poll did.
        wait_for(lambda: "playground: open" in log.read_text(), timeout=30, message="serve.sh naming the playground")

        triton_http = int(re.search(r"tritonserver: HTTP http://127.0.0.1:(\d+)", log.read_text()).group(1))
        children = psutil.Process(serve.pid).children(recursive=True)
        assert any("tritonserver" in " ".join(c.cmdline()) for c in children)
        os.killpg(serve.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert serve.wait(timeout=120) == 0
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
        assert not port_open(port) and not port_open(triton_http)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
