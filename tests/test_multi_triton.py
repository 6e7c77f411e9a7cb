"""Several tritonservers behind one frontend: load spreads, a dead server is skipped, a revived one is used, and the
servers behind a DNS name follow the name."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from diffusion_runtime.launcher.processes import Frontend, TritonServer
from diffusion_runtime.launcher.repository import render_repository
from diffusion_runtime.net import free_port
from tests.conftest import metric_value, tiny_image_spec, wait_for

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


def test_a_dns_name_spreads_calls_over_every_server_it_resolves_to_as_they_come_and_go(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A Kubernetes headless Service as the frontend meets it: ``dns:///triton-pods:PORT`` resolves to the ready
    pods' addresses. A pod that the autoscaler adds gets calls within a refresh; calls spread over the pods; a pod
    that leaves the name and dies costs no request. The name's addresses come from a hosts file read through
    nss_wrapper (preloaded into the frontend only), the pods are tritonservers on 127.0.0.2 and 127.0.0.3 with the
    same ports, as pods share a container port."""
    hosts = tmp_path / "hosts"

    def publish(*addresses: str) -> None:  # replaced whole, as a DNS answer changes
        staged = tmp_path / "hosts.new"
        staged.write_text("".join(f"{address} triton-pods\n" for address in addresses))
        staged.replace(hosts)

    repository = render_repository([tiny_image_spec(tiny_models, "diffusers")], tmp_path / "repo", gpus=[])
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    offline = {"HF_HUB_OFFLINE": "1"}
    pods = [
        TritonServer(repository, address=address, log_file=tmp_path / f"{address}.log", env=offline, **ports)
        for address in ("127.0.0.2", "127.0.0.3")
    ]
    frontend = Frontend(
        f"dns:///triton-pods:{ports['grpc_port']}",
        fs_url=f"file://{tmp_path}/media",
        log_file=tmp_path / "frontend.log",
        extra_args=(
            "--triton-metrics-url",
            f"http://triton-pods:{ports['metrics_port']}/metrics",
            "--triton-dns-refresh-s",
            "1",
            "--state-dir",
            str(tmp_path / "state"),
        ),
        env={"LD_PRELOAD": "libnss_wrapper.so", "NSS_WRAPPER_HOSTS": str(hosts)},
    )
    try:
        publish("127.0.0.2")
        pods[0].start().wait_ready()
        frontend.start().wait_ready()
        with httpx.Client(base_url=frontend.url, timeout=120) as http:
            for _ in range(3):
                assert http.post("/v1/images/generations", json=BODY).status_code == 200
            assert served(pods[0]) == 3

            pods[1].start().wait_ready()  # scale-up: the new pod is ready, then the name lists it
            publish("127.0.0.2", "127.0.0.3")

            def new_pod_takes_work() -> bool:
                assert http.post("/v1/images/generations", json=BODY).status_code == 200
                return served(pods[1]) > 0

            wait_for(new_pod_takes_work, timeout=60, interval=0.1, message="the added pod taking calls")
            before = [served(pod) for pod in pods]
            for _ in range(6):
                assert http.post("/v1/images/generations", json=BODY).status_code == 200
            taken = [served(pod) - count for pod, count in zip(pods, before, strict=True)]
            assert sum(taken) == 6 and min(taken) >= 2, f"calls per pod: {taken}"
            merged = http.get("/metrics").text
            for pod in pods:  # each pod's metrics, read from its own address and labelled with it
                labels = {"model": "image_diffusion", "triton": pod.grpc_url}
                assert metric_value(merged, "nv_inference_request_success", **labels) == served(pod)

            publish("127.0.0.3")  # scale-down: the pod leaves the name, then stops
            os.killpg(pods[0].process.pid, signal.SIGKILL)
            pods[0].process.wait(30)
            statuses = [http.post("/v1/images/generations", json=BODY).status_code for _ in range(6)]
            assert statuses == [200] * 6, "no user-visible error while a pod is left"
            # Once resolved again, the pool is the one pod left: readiness shows one server, not a dead one.
            wait_for(lambda: http.get("/health/ready").json()["triton"] == "ready", timeout=30, message="one pod")
    finally:
        frontend.stop()
        for pod in pods:
            pod.stop()
