"""Our served stack beside SGLang's own OpenAI-compatible diffusion server (``sglang serve``), on one GPU.

Both serve the same model folder with the same SGLang settings: ours through Triton with the ``sglang`` engine, the
peer as ``sglang serve --model-type diffusion`` with the flags our engine would pass to ``DiffGenerator`` (derived
by the engine's own ``generator_kwargs``, so the two cannot drift apart). Both are loaded at once, so requests to
the two can be interleaved, which cancels drift out of the ratios:

- latency at concurrency 1: pairs of one request to each, the order alternating;
- throughput at concurrency C: rounds of ``count`` images from C clients, ours and the peer's alternating (ABBA).

The client pays for the same things on both sides: an HTTP request, the base64 JSON answer and its decoding.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from benchmarks.prometheus import counter_increase
from benchmarks.stats import median, paired_ratios, ratio_of_medians, summarize
from benchmarks.workloads import ImageJob

if TYPE_CHECKING:
    from benchmarks.gpu.bench import Deadline, Settings
    from scripts.gpu.results_file import ResultsFile

log = logging.getLogger("benchmarks.gpu.peer")
PEER_HEALTH_PATH = "/health"  # 200 once the server has loaded the model (503 before)
# The ``sglang`` command, run by this interpreter: its console script exists only where pip installed SGLang, and its
# module has no ``__main__`` guard.
SGLANG_CLI = (sys.executable, "-c", "from sglang.cli.main import main; main()")


def peer_flags(parameters: Mapping[str, str], device: str) -> list[str]:
    """``sglang serve`` flags for the ``DiffGenerator`` our ``sglang`` engine starts with these parameters."""
    from diffusion_runtime.engines import EngineConfig
    from diffusion_runtime.engines.sglang_engine import generator_kwargs

    flags: list[str] = []
    for key, value in generator_kwargs(EngineConfig.from_parameters(parameters, device)).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


@dataclass
class PeerServer:
    """``sglang serve`` as a subprocess on a free loopback port."""

    process: subprocess.Popen
    url: str
    log_file: Path

    @classmethod
    def start(cls, parameters: Mapping[str, str], settings: Settings, workdir: Path) -> PeerServer:
        from diffusion_runtime.launcher.processes import stack_environment
        from diffusion_runtime.net import free_port

        port = free_port()
        command = [*SGLANG_CLI, "serve", "--model-type", "diffusion", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--master-port", str(free_port()), "--scheduler-port", str(free_port())]
        command += ["--output-path", ""]  # no copy of each image on disk: ours answers b64_json without storing
        command += peer_flags(parameters, settings.device)
        env = stack_environment(settings.env)
        if settings.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in settings.gpus[:1])
        log_file = workdir / "sglang-serve.log"
        log.info("starting the peer: %s", " ".join(command))
        with open(log_file, "ab") as output:
            process = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(process, f"http://127.0.0.1:{port}", log_file)

    def wait_ready(self, timeout: float) -> None:
        from diffusion_runtime.launcher.processes import wait_until_ready

        wait_until_ready(self.url + PEER_HEALTH_PATH, self.process, timeout, "sglang serve", self.log_file)

    def stop(self) -> None:
        from diffusion_runtime.launcher.processes import stop_process

        stop_process(self.process)


@dataclass(frozen=True)
class Reply:
    seconds: float  # from sending the request to having its file decoded
    file_bytes: int
    inference_time_s: float | None  # the server's own account, where its answer has one (``sglang serve``'s does)


def post(base_url: str, body: dict[str, Any], timeout: float = 1800) -> Reply:
    """One image request, timed as a client sees it."""
    start = time.perf_counter()
    response = httpx.post(base_url + "/v1/images/generations", json=body, timeout=timeout)
    if response.status_code != 200:
        raise RuntimeError(f"{base_url} answered {response.status_code}: {response.text[:500]}")
    answer = response.json()
    file = base64.b64decode(answer["data"][0]["b64_json"])
    return Reply(time.perf_counter() - start, len(file), answer.get("inference_time_s"))


def where_ours_went(delta: Mapping[str, float], requests: int, ours_s: list[float]) -> dict[str, float]:
    """Our model's seconds per request by phase (``diffusion_seconds_total``: the engine call, the file encoding),
    from the growth of its counters over ``requests`` requests, and what is left of the client's median latency:
    the frontend, Triton and the HTTP answer."""
    phases = {
        phase: sum(
            value
            for key, value in delta.items()
            if key.startswith("diffusion_seconds_total{") and f'phase="{phase}"' in key
        )
        / requests
        for phase in ("denoise", "encode")
    }
    return {**{f"{phase}_s": value for phase, value in phases.items()}, "rest_s": median(ours_s) - sum(phases.values())}


def measure_peer(settings: Settings, results: ResultsFile, deadline: Deadline) -> None:
    """The ``peer`` plan: FLUX through our stack (``sglang`` engine) against ``sglang serve``, same folder, same GPU."""
    from benchmarks.gpu.bench import (
        SERVED_NAME,
        closed_loop,
        ensure_model,
        finish_stack,
        fit_repetitions,
        image_job,
        image_parameters,
        tear_down,
    )
    from diffusion_runtime.launcher.repository import ModelSpec
    from diffusion_runtime.params import ImageLimits
    from scripts.gpu.served_stack import start_triton

    key = ["peer", "image"]
    parameters = image_parameters(settings, "sglang", ensure_model(settings, "flux", results))
    results.put([*key, "parameters"], parameters)
    workdir = settings.work / "peer-image"
    workdir.mkdir(parents=True, exist_ok=True)
    size, steps = settings.image_size, settings.image_steps

    guidance = ImageLimits.from_parameters(parameters).default_guidance_scale  # named: the servers' defaults differ

    def job(seed: int) -> ImageJob:
        return replace(image_job(size, steps, seed), guidance_scale=guidance)

    replies: dict[str, list[Reply]] = {"ours": [], "peer": []}

    def ours(seed: int) -> float:
        replies["ours"].append(post(served.frontend.url, job(seed).openai_body(served.model)))
        return replies["ours"][-1].seconds

    def theirs(seed: int) -> float:  # SGLang's images API takes the same fields (and ignores ``model``)
        replies["peer"].append(post(peer.url, job(seed).openai_body("peer")))
        return replies["peer"][-1].seconds

    triton = start_triton([ModelSpec("image_diffusion", parameters)], settings.gpus, workdir, settings.env)
    served = peer = None
    try:
        peer = PeerServer.start(parameters, settings, workdir)
        served = finish_stack(triton, workdir, SERVED_NAME["image"], settings.env, settings.load_timeout)
        peer.wait_ready(settings.load_timeout)
        results.put([*key, "peer_command"], peer.process.args)
        warmup = {"ours": [ours(1), ours(2)], "peer": [theirs(1), theirs(2)]}
        results.put([*key, "warmup_s"], warmup)
        each = warmup["ours"][-1] + warmup["peer"][-1]
        throughput_cost = 2 * settings.throughput_images * max(warmup["ours"][-1], warmup["peer"][-1]) + 30
        pairs = fit_repetitions(settings.pairs, each, deadline.left(), reserve=throughput_cost + 30, minimum=3)
        metrics_before = served.metrics()
        replies["ours"].clear()  # from here on, the timed pairs only
        replies["peer"].clear()
        for index in range(pairs):
            for send in (ours, theirs) if index % 2 == 0 else (theirs, ours):
                send(100 + index)
        ours_s = [reply.seconds for reply in replies["ours"]]
        peer_s = [reply.seconds for reply in replies["peer"]]
        latency = {
            "pairs": pairs,
            "ours_s": ours_s,
            "peer_s": peer_s,
            "ours": summarize(ours_s),
            "peer": summarize(peer_s),
            "ours_over_peer": ratio_of_medians(ours_s, peer_s),
            "ours_over_peer_paired": paired_ratios(ours_s, peer_s),
            "file_bytes": {side: [reply.file_bytes for reply in done] for side, done in replies.items()},
            "ours_by_phase_s": where_ours_went(counter_increase(metrics_before, served.metrics()), pairs, ours_s),
            "peer_inference_time_s": [reply.inference_time_s for reply in replies["peer"]],
        }
        results.put([*key, "latency"], latency)
        log.info(
            "[peer] latency, %d pairs: ours %.3f s, sglang serve %.3f s, ratio %.4f",
            pairs,
            latency["ours"]["median"],
            latency["peer"]["median"],
            latency["ours_over_peer"],
        )
        log.info("[peer] ours per request by phase: %s", latency["ours_by_phase_s"])

        count = max(settings.concurrency, settings.throughput_images // 2)
        walls: dict[str, list[float]] = {"ours": [], "peer": []}
        for round_index, side in enumerate(("ours", "peer", "peer", "ours")):  # ABBA: drift cancels out
            seeds = range(1000 * (round_index + 1), 1000 * (round_index + 1) + count)
            walls[side].append(closed_loop(ours if side == "ours" else theirs, seeds, settings.concurrency)[0])
        rates = {side: 2 * count / sum(wall) for side, wall in walls.items()}
        throughput = {
            "images_per_round": count,
            "concurrency": settings.concurrency,
            "wall_s": walls,
            "ours_images_per_s": rates["ours"],
            "peer_images_per_s": rates["peer"],
            "ours_over_peer": rates["ours"] / rates["peer"],
        }
        results.put([*key, "throughput"], throughput)
        log.info(
            "[peer] throughput at concurrency %d: ours %.4f img/s, sglang serve %.4f img/s, ratio %.4f",
            settings.concurrency,
            rates["ours"],
            rates["peer"],
            throughput["ours_over_peer"],
        )
    finally:
        if peer is not None:
            peer.stop()
        tear_down(triton, served, None)


def summary(data: dict[str, Any]) -> list[str]:
    entry = data.get("peer", {}).get("image", {})
    lines = []
    if latency := entry.get("latency"):
        lines.append(
            f"peer image: latency ours {latency['ours']['median']:.3f} s / sglang serve "
            f"{latency['peer']['median']:.3f} s = {latency['ours_over_peer']:.4f} over {latency['pairs']} pairs"
        )
    if throughput := entry.get("throughput"):
        lines.append(
            f"peer image: throughput ours {throughput['ours_images_per_s']:.4f} img/s / sglang serve "
            f"{throughput['peer_images_per_s']:.4f} img/s = {throughput['ours_over_peer']:.4f} "
            f"(concurrency {throughput['concurrency']})"
        )
    return lines
