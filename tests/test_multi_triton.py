"""Several tritonservers behind one frontend: load spreads, a dead server is skipped, a revived one is used."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from diffusion_runtime.launcher.processes import TritonServer
from tests.conftest import metric_value, wait_for

pytestmark = pytest.mark.e2e  # starts two tritonservers and the frontend

BODY = {"model": "tiny-flux", "prompt": "x", "size": "64x64", "response_format": "b64_json", "num_inference_steps": 1}


def served(server: TritonServer) -> float:
    try:
        text = httpx.get(server.metrics_url, timeout=5).text
    except httpx.HTTPError:
        return 0.0
    return metric_value(text, "nv_inference_request_success", model="image_diffusion")


def test_requests_spread_survive_a_dead_server_and_return_to_a_revived_one(two_servers) -> None:
    servers, frontend, repository = two_servers
    with httpx.Client(base_url=frontend.url, timeout=120) as http:
        for _ in range(6):
            assert http.post("/v1/images/generations", json=BODY).status_code == 200
        assert served(servers[0]) > 0 and served(servers[1]) > 0, "both servers took work"
        merged = http.get("/metrics").text
        for server in servers:  # the frontend's /metrics: one family, each server's samples labelled with its URL
            labels = {"model": "image_diffusion", "triton": server.grpc_url}
            assert metric_value(merged, "nv_inference_request_success", **labels) == served(server)
        assert merged.count("# TYPE nv_inference_request_success ") == 1

        dead = servers[1]
        os.killpg(dead.process.pid, signal.SIGKILL)
        dead.process.wait(30)
        statuses = [http.post("/v1/images/generations", json=BODY).status_code for _ in range(6)]
        assert statuses == [200] * 6, "no user-visible error while the other server can serve"
        ready = http.get("/health/ready").json()
        assert ready["triton"][servers[0].grpc_url]["status"] == "ready"
        assert ready["triton"][dead.grpc_url]["status"].startswith("unreachable")

        revived = TritonServer(
            repository,
            http_port=dead.http_port,
            grpc_port=dead.grpc_port,
            metrics_port=dead.metrics_port,
            log_file=dead.log_file,
            env={"HF_HUB_OFFLINE": "1"},
        )
        servers[1] = revived
        revived.start().wait_ready()

        def revived_takes_work() -> bool:
            assert http.post("/v1/images/generations", json=BODY).status_code == 200
            return served(revived) > 0

        wait_for(revived_takes_work, timeout=60, interval=0.1, message="the revived server taking requests")
