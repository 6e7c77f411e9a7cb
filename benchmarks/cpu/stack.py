"""The served stack the benchmark drives: one tritonserver with every model it measures, and the frontend.

Started as the smoke test starts it (``scripts.gpu.served_stack``: the classes ``scripts/serve.sh`` uses). Idle
diffusers and transformers instances use no CPU, so all models share one server: the image model with one instance
(``image_diffusion``, served as ``tiny-flux``) and the same model with two CPU instances (``image_diffusion_x2``,
``tiny-flux-x2``; ``ModelSpec.instances_per_gpu=2``), the text-to-video model and the dLLM where they exist.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.prometheus import Samples, metric_sum, parse_prometheus
from diffusion_runtime.launcher.processes import Frontend, TritonServer
from diffusion_runtime.launcher.repository import REPOSITORY, ModelSpec
from scripts.gpu.served_stack import start_frontend, start_triton

IMAGE = "image_diffusion"
IMAGE_X2 = "image_diffusion_x2"
IMAGE_X2_T = "image_diffusion_x2_threads"
IMAGE_1T = "image_diffusion_one_thread"
VIDEO = "video_generation"
DLLM = "dllm"
SERVED_NAMES = {
    IMAGE: "tiny-flux",
    IMAGE_X2: "tiny-flux-x2",
    IMAGE_X2_T: "tiny-flux-x2-threads",
    IMAGE_1T: "tiny-flux-one-thread",
    VIDEO: "tiny-wan-t2v",
    DLLM: "tiny-llada",
}


def cpu_count() -> int:
    return os.cpu_count() or 1


def dllm_available() -> bool:
    return (REPOSITORY / DLLM / "config.pbtxt").exists() and (REPOSITORY / DLLM / "1" / "model.py").exists()


def video_available() -> bool:
    return (REPOSITORY / VIDEO / "config.pbtxt").exists()


def bench_specs(models: dict[str, Path], *, video: bool, dllm: bool) -> list[ModelSpec]:
    image = {
        "model_path": str(models["tiny-flux"]),
        "served_model_name": SERVED_NAMES[IMAGE],
        "engine": "diffusers",
        "default_width": "64",
        "default_height": "64",
    }
    specs = [
        ModelSpec(IMAGE, image),
        ModelSpec(
            IMAGE_X2,
            {**image, "served_model_name": SERVED_NAMES[IMAGE_X2]},
            instances_per_gpu=2,
            source=REPOSITORY / IMAGE,
        ),
        # Two instances that split the cores between them instead of each using them all.
        ModelSpec(
            IMAGE_X2_T,
            {**image, "served_model_name": SERVED_NAMES[IMAGE_X2_T], "cpu_threads": str(max(1, cpu_count() // 2))},
            instances_per_gpu=2,
            source=REPOSITORY / IMAGE,
        ),
        # One instance on one torch thread: the control that leaves the serving path a core of its own.
        ModelSpec(
            IMAGE_1T,
            {**image, "served_model_name": SERVED_NAMES[IMAGE_1T], "cpu_threads": "1"},
            source=REPOSITORY / IMAGE,
        ),
    ]
    if video:
        specs.append(
            ModelSpec(
                VIDEO,
                {
                    "model_path": str(models["tiny-wan-t2v"]),
                    "served_model_name": SERVED_NAMES[VIDEO],
                    "engine": "diffusers",
                    "video_mode": "t2v",
                    "default_width": "64",
                    "default_height": "64",
                },
            )
        )
    if dllm:
        specs.append(
            ModelSpec(
                DLLM,
                {
                    "model_path": str(models["tiny-llada"]),
                    "served_model_name": SERVED_NAMES[DLLM],
                    "engine": "transformers",
                },
            )
        )
    return specs


@dataclass
class Stack:
    triton: TritonServer
    frontend: Frontend
    repository: Path
    workdir: Path

    @property
    def url(self) -> str:
        return self.frontend.url

    def scrape(self) -> Samples:
        return parse_prometheus(httpx.get(self.triton.metrics_url, timeout=30).text)

    def model_counters(self, model: str, samples: Samples | None = None) -> dict[str, float]:
        """Cumulative per-model counters from Triton's /metrics: requests, failures, queue and compute time,
        and the model's own denoise and encode seconds."""
        s = samples if samples is not None else self.scrape()
        return {
            "success": metric_sum(s, "nv_inference_request_success", model=model),
            "pending": metric_sum(s, "nv_inference_pending_request_count", model=model),
            "failure": metric_sum(s, "nv_inference_request_failure", model=model),
            "executions": metric_sum(s, "nv_inference_exec_count", model=model),
            "request_us": metric_sum(s, "nv_inference_request_duration_us", model=model),
            "queue_us": metric_sum(s, "nv_inference_queue_duration_us", model=model),
            "compute_infer_us": metric_sum(s, "nv_inference_compute_infer_duration_us", model=model),
            "denoise_s": metric_sum(s, "diffusion_seconds_total", model=model, phase="denoise"),
            "encode_s": metric_sum(s, "diffusion_seconds_total", model=model, phase="encode"),
        }

    def wait_idle(self, model: str, timeout: float = 300.0) -> None:
        """Until the model has no request queued or running (one left over from a previous block, e.g. one
        perf_analyzer abandoned at exit, would otherwise hold up the next block's first request)."""
        deadline = time.monotonic() + timeout
        while self.model_counters(model)["pending"] > 0 and time.monotonic() < deadline:
            time.sleep(0.05)


@contextmanager
def running_stack(specs: list[ModelSpec], workdir: Path) -> Iterator[Stack]:
    """The stack on this host's CPU, started as the smoke test starts it. The frontend logs at ``info``, its
    default, with an access line per request (as the committed CPU figures were measured: the line costs the
    frontend ~0.15 ms of CPU per request)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf")}
    started = time.perf_counter()
    triton = start_triton(specs, [], workdir, env)
    frontend = None
    try:
        frontend = start_frontend(
            triton, workdir, env, load_timeout=1800, extra_args=("--video-poll-ms", "100"), log_level="info"
        )
        print(f"[bench] stack ready in {time.perf_counter() - started:.0f} s: {frontend.url}", flush=True)
        yield Stack(triton, frontend, triton.repository, workdir)
    finally:
        if frontend is not None:
            frontend.stop()
        triton.stop()
