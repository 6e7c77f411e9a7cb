"""What serving costs on a GPU, and what the SGLang engine gains over diffusers.

Every measurement puts the served product — OpenAI HTTP request → frontend → Triton (gRPC) → the model's Python
stub → engine → encoded file → back to the client, decoded — beside the *bare* engine: the project's own engine class
called in this process with the same parameters and seed, plus the same file encoding (``encode_image`` /
``encode_mp4``), producing the same bytes. Both run on the same GPU at once (two copies of the weights), so a served
request and a bare call can be interleaved pair by pair, which cancels drift (clocks, temperature) out of the ratio.

Plans (``--plan``):
- ``image``: for each engine of ``--engines`` (FLUX.1-dev shape, 1024², 28 steps by default): latency at
  concurrency 1 (interleaved pairs after warm-up; medians and spreads), then throughput with one instance: the
  served stack at concurrency 4 against the bare loop, images/s.
- ``video``: the video model (Wan2.1 1.3B shape, 832×480, 33 frames, 20 steps): served (the blocking form of
  ``POST /v1/videos``, which returns the MP4 inline) against the bare engine + ``encode_mp4``, interleaved.
- ``multi-gpu``: images/s with one instance per GPU on every visible GPU against one instance on GPU 0.
- ``peer``: the image model on the ``sglang`` engine against SGLang's own server, ``sglang serve``, with the same
  folder and settings (``benchmarks.gpu.peer``): latency at concurrency 1 and images/s at ``--concurrency``.
- ``image-variants``: for each engine of ``--engines``, the image engine alone (no server) under each set of speed
  settings of ``--image-variants`` in turn: load and warm-up seconds, first request, latency, and the pixel error
  against the first variant for the same seeds (``benchmarks/gpu/variants.py``).

``--image-settings`` adds speed settings to the model of the ``image`` and ``multi-gpu`` plans (all engines, or
``ENGINE=SPEC`` for one), in the variants' syntax, so the served stack is measured with the settings chosen.

Everything is written to ``--out/results.json`` after each phase, so a run stopped at its time limit keeps what it
measured. ``--deadline`` (seconds from start) shrinks repetitions to what still fits. ``--tiny`` builds toy models
of the same classes on the CPU for a dry run of this whole script.

usage (from the project root, in its environment): python -m benchmarks.gpu.bench --plan image,video,multi-gpu
    python -m benchmarks.gpu.bench --plan image-variants --engines diffusers --image-variants eager,compile
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.gpu import step_floor, variants
from benchmarks.gpu.peer import measure_peer
from benchmarks.gpu.peer import summary as peer_summary
from benchmarks.paths import BareImage, BareVideo
from benchmarks.prometheus import counter_increase, parse_prometheus, sample_key
from benchmarks.stats import median, paired_ratios, ratio_of_medians, summarize
from benchmarks.workloads import ImageJob, VideoJob
from scripts.gpu.engine_parameters import DEFAULT_SGLANG_ATTENTION_BACKEND, engine_parameters
from scripts.gpu.host import (
    command_line,
    describe_device,
    git_commit,
    gpu_memory,
    library_versions,
    release_gpu,
)
from scripts.gpu.make_models import ensure_built
from scripts.gpu.results_file import ResultsFile
from scripts.gpu.served_stack import start_frontend, start_triton

log = logging.getLogger("benchmarks.gpu")
PROMPT = "a photograph of a red fox standing in fresh snow at golden hour, detailed fur"
SERVED_NAME = {"image": "flux-dev-random", "video": "wan-1.3b-random"}
# The models' own counters on Triton's /metrics: cumulative seconds per phase, requests, denoising steps.
MODEL_COUNTERS = ("diffusion_seconds_total", "diffusion_requests_total", "diffusion_steps_total")

# --- time ---------------------------------------------------------------------------------------------------------


def fit_repetitions(wanted: int, seconds_each: float, seconds_left: float, reserve: float, minimum: int = 1) -> int:
    """How many repetitions of a ``seconds_each`` step fit in what is left after ``reserve`` (at least ``minimum``)."""
    if seconds_each <= 0:
        return wanted
    return max(minimum, min(wanted, int((seconds_left - reserve) // seconds_each)))


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# --- the served stack --------------------------------------------------------------------------------------------


@dataclass
class Served:
    triton: Any
    frontend: Any
    model: str

    def metrics(self) -> dict[str, float]:
        """The image/video models' own counters on Triton's /metrics (cumulative seconds per phase, requests)."""
        try:
            text = httpx.get(self.triton.metrics_url, timeout=10).text
        except Exception:  # metrics are context, never a reason to fail a run
            return {}
        return {
            sample_key(name, labels): value
            for (name, labels), value in parse_prometheus(text).items()
            if name in MODEL_COUNTERS
        }

    def stop(self) -> None:
        self.frontend.stop()
        self.triton.stop()


def finish_stack(triton, workdir: Path, model: str, env: dict[str, str], load_timeout: float) -> Served:
    return Served(triton, start_frontend(triton, workdir, env, load_timeout), model)


def image_job(size: tuple[int, int], steps: int, seed: int) -> ImageJob:
    return ImageJob(PROMPT, width=size[0], height=size[1], n=1, steps=steps, seed=seed, output_format="png")


def video_job(size: tuple[int, int], frames: int, steps: int, seed: int) -> VideoJob:
    """A video at the model's default frame rate, as a client that names none gets."""
    return VideoJob(PROMPT, width=size[0], height=size[1], num_frames=frames, fps=None, steps=steps, seed=seed)


def post_image(client: httpx.Client, model: str, job: ImageJob) -> tuple[float, bytes]:
    """One served image, b64_json: seconds from sending to having the decoded file, and the file."""
    return _post_decoded(client, "/v1/images/generations", job.openai_body(model))


def post_video(client: httpx.Client, model: str, job: VideoJob) -> tuple[float, bytes]:
    """One served video through the blocking create (``response_format``): the MP4 comes back inline."""
    return _post_decoded(client, "/v1/videos", job.openai_body(model))


def _post_decoded(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[float, bytes]:
    """Seconds from sending ``body`` to having the first file decoded (a GPU-size file's base64 decoding is part of
    what a client pays for), and the file."""
    start = time.perf_counter()
    response = client.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{path} failed: {response.status_code} {response.text[:500]}")
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    return time.perf_counter() - start, data


# --- settings ------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    tiny: bool
    out: Path
    work: Path
    model_root: Path
    device: str
    gpus: list[int]
    image_size: tuple[int, int]
    image_steps: int
    video_size: tuple[int, int]
    video_frames: int
    video_steps: int
    pairs: int
    throughput_images: int
    concurrency: int
    video_pairs: int
    load_timeout: float
    sglang_attention_backend: str
    image_variants: str = ""  # "": each engine's default list (variants.DEFAULT_VARIANTS, SGLANG_VARIANTS)
    image_settings: dict[str, dict[str, str]] = field(default_factory=dict)  # engine ("*": all) -> parameters
    env: dict[str, str] = field(default_factory=dict)


def image_parameters(settings: Settings, engine: str, model_path: Path) -> dict[str, str]:
    return {
        "model_path": str(model_path),
        "served_model_name": SERVED_NAME["image"],
        "max_size": "2048",
        # The measured size is the model's default, so a warm-up at load (warmup parameter) compiles for it.
        "default_width": str(settings.image_size[0]),
        "default_height": str(settings.image_size[1]),
        **engine_parameters(
            "flux", engine, on_gpu=not settings.tiny, attention_backend=settings.sglang_attention_backend
        ),
        **settings.image_settings.get("*", {}),
        **settings.image_settings.get(engine, {}),
    }


def video_parameters(settings: Settings, engine: str, model_path: Path) -> dict[str, str]:
    return {
        "model_path": str(model_path),
        "served_model_name": SERVED_NAME["video"],
        "video_mode": "t2v",
        **engine_parameters(
            "wan-t2v", engine, on_gpu=not settings.tiny, attention_backend=settings.sglang_attention_backend
        ),
    }


def ensure_model(settings: Settings, kind: str, results: ResultsFile) -> Path:
    """The random-weight model folder (toy widths with ``--tiny``), built once per machine."""
    target, built = ensure_built(
        kind,
        settings.model_root,
        mini=settings.tiny,
        device="cpu" if settings.tiny else "cuda",
        env=settings.env,
        log_file=settings.work / f"make_{kind}.log",
    )
    if built is not None:
        results.put(["models", kind], built)
        log.info("built %s in %.0f s: %s", kind, built["wall_s"], built)
    return target


# --- phases ------------------------------------------------------------------------------------------------------


def latency_record(
    pairs: int, served_s: list[float], bare_s: list[float], bare_engine_s: list[float], bare_encode_s: list[float]
) -> dict[str, Any]:
    """The timings of interleaved served/bare pairs and their summaries, as every latency phase records them."""
    return {
        "pairs": pairs,
        "served_s": served_s,
        "bare_s": bare_s,
        "bare_engine_s": bare_engine_s,
        "bare_encode_s": bare_encode_s,
        "served": summarize(served_s),
        "bare": summarize(bare_s),
        "bare_engine": summarize(bare_engine_s),
        "bare_encode": summarize(bare_encode_s),
        "served_over_bare": ratio_of_medians(served_s, bare_s),
        "served_over_bare_paired": paired_ratios(served_s, bare_s),
    }


def log_latency(label: str, pairs: int, latency: dict[str, Any], same: Any) -> None:
    """One line per measured latency phase: the medians served and bare (engine, encode) and their ratio."""
    log.info(
        "[%s] latency over %d pairs: served %.3f s, bare %.3f s (engine %.3f, encode %.3f), ratio %.4f, identical %s",
        label,
        pairs,
        latency["served"]["median"],
        latency["bare"]["median"],
        latency["bare_engine"]["median"],
        latency["bare_encode"]["median"],
        latency["served_over_bare"],
        same,
    )


def measure_image_engine(settings: Settings, engine: str, results: ResultsFile, deadline: Deadline) -> None:
    from diffusion_runtime.launcher.repository import ModelSpec, served_parameters

    key = ["image", engine]
    model_path = ensure_model(settings, "flux", results)
    parameters = image_parameters(settings, engine, model_path)
    results.put([*key, "parameters"], parameters)
    workdir = settings.work / f"image-{engine}"
    workdir.mkdir(parents=True, exist_ok=True)
    size, steps = settings.image_size, settings.image_steps

    t0 = time.perf_counter()
    triton = start_triton([ModelSpec("image_diffusion", parameters)], settings.gpus, workdir, settings.env)
    served = None
    bare = None
    try:
        # The engine as the served model configures it (config.pbtxt under the overrides); it loads while Triton
        # loads its own copy.
        bare = BareImage(served_parameters("image_diffusion", parameters), settings.device)
        bare_loaded = time.perf_counter() - t0
        served = finish_stack(triton, workdir, SERVED_NAME["image"], settings.env, settings.load_timeout)
        results.put([*key, "load_s"], {"bare": bare_loaded, "served_ready": time.perf_counter() - t0})
        log.info("[%s] loaded: bare %.1f s, served ready after %.1f s", engine, bare_loaded, time.perf_counter() - t0)

        client = httpx.Client(base_url=served.frontend.url, timeout=900)
        # Warm-up: the bare engine first (SGLang compiles its Triton kernels into the shared on-disk cache), then
        # the served stack, which then finds them compiled.
        first_bare = bare(image_job(size, steps, seed=1))
        first_served, _ = post_image(client, served.model, image_job(size, steps, seed=1))
        second_bare = bare(image_job(size, steps, seed=2))
        second_served, _ = post_image(client, served.model, image_job(size, steps, seed=2))
        results.put(
            [*key, "warmup_s"],
            {"bare": [first_bare.wall_s, second_bare.wall_s], "served": [first_served, second_served]},
        )
        log.info(
            "[%s] warm-up: bare %.2f/%.2f s, served %.2f/%.2f s",
            engine,
            first_bare.wall_s,
            second_bare.wall_s,
            first_served,
            second_served,
        )

        # Latency at concurrency 1: interleaved pairs (served first on even pairs, bare first on odd ones).
        per_pair = max(second_bare.wall_s, 0.01) + max(second_served, 0.01)
        throughput_cost = 2 * settings.throughput_images * second_bare.wall_s + 30
        pairs = fit_repetitions(settings.pairs, per_pair, deadline.left(), reserve=throughput_cost + 60, minimum=3)
        metrics_before = served.metrics()
        served_s, bare_s, bare_engine_s, bare_encode_s, same, sizes = [], [], [], [], [], []
        for index in range(pairs):
            seed = 100 + index
            order = ("served", "bare") if index % 2 == 0 else ("bare", "served")
            for side in order:
                if side == "served":
                    seconds, served_file = post_image(client, served.model, image_job(size, steps, seed))
                    served_s.append(seconds)
                else:
                    timing = bare(image_job(size, steps, seed))
                    bare_s.append(timing.wall_s)
                    bare_engine_s.append(timing.gen_s)
                    bare_encode_s.append(timing.extra["encode_s"])
                    bare_file = timing.files[0]
            same.append(served_file == bare_file)
            sizes.append(len(bare_file))
            if index == 0:
                (settings.work / f"sample-image-{engine}.png").write_bytes(served_file)
        metrics_after = served.metrics()
        latency = {
            **latency_record(pairs, served_s, bare_s, bare_engine_s, bare_encode_s),
            "served_minus_bare_median_s": median(served_s) - median(bare_s),
            "identical_files": same,
            "file_bytes": sizes,
            "served_model_metrics_delta": counter_increase(metrics_before, metrics_after),
        }
        results.put([*key, "latency"], latency)
        log_latency(engine, pairs, latency, same)

        # Throughput with one instance: the served stack at concurrency C against the bare loop.
        each = median(bare_s)
        count = fit_repetitions(settings.throughput_images, 2 * each, deadline.left(), reserve=45, minimum=2)
        count = max(count, min(settings.concurrency, settings.throughput_images))
        bare_wall = _bare_loop(bare, size, steps, count)
        served_wall, served_each = _served_concurrent(served, size, steps, count, settings.concurrency)
        throughput = {
            "images": count,
            "concurrency": settings.concurrency,
            "served_wall_s": served_wall,
            "bare_wall_s": bare_wall,
            "served_images_per_s": count / served_wall,
            "bare_images_per_s": count / bare_wall,
            "served_over_bare": (count / served_wall) / (count / bare_wall),
            "served_request_s": served_each,
        }
        results.put([*key, "throughput"], throughput)
        log.info(
            "[%s] throughput, %d images: served %.4f img/s at concurrency %d, bare loop %.4f img/s, ratio %.4f",
            engine,
            count,
            throughput["served_images_per_s"],
            settings.concurrency,
            throughput["bare_images_per_s"],
            throughput["served_over_bare"],
        )
        results.put([*key, "gpu_memory_mib"], gpu_memory())
    finally:
        tear_down(triton, served, bare)


def measure_image_variants(settings: Settings, engine: str, results: ResultsFile, deadline: Deadline) -> None:
    """The engine alone under each speed-settings variant (``variants.py``), on the image plan's workload."""
    spec = settings.image_variants or (variants.SGLANG_VARIANTS if engine == "sglang" else variants.DEFAULT_VARIANTS)
    chosen = variants.parse_variants(spec)
    model_path = ensure_model(settings, "flux", results)
    base = image_parameters(settings, engine, model_path)
    results.put(["image_variants", engine, "_base_parameters"], base)
    size, steps = settings.image_size, settings.image_steps
    variants.measure_variants(
        chosen,
        base,
        settings.device,
        job=lambda seed: image_job(size, steps, seed),
        runs=lambda first_s, left_s: fit_repetitions(settings.pairs, first_s, left_s, reserve=15, minimum=2),
        seconds_left=deadline.left,
        put=lambda keys, value: results.put(["image_variants", engine, *keys], value),
        release=release_gpu,
    )
    if deadline.left() > 30:  # what the kernels alone take per step, to read the variants' step time against
        transformer = json.loads((model_path / "transformer" / "config.json").read_text())
        floor = step_floor.measure_step_floor(transformer, size[1], size[0], settings.device)
        results.put(["image_variants", engine, "_step_floor"], floor)
        log.info("[image-variants] %s", step_floor.floor_text(floor, steps=steps))
        release_gpu()


def tear_down(triton: Any, served: Served | None, bare: Any) -> None:
    """Stop the stack (the frontend too once it started) and the bare engine (closing it drops its pipeline), then
    hand the GPU memory back."""
    if served is not None:
        served.stop()
    else:
        triton.stop()
    if bare is not None:
        bare.close()
    release_gpu()


def _bare_loop(bare: BareImage, size, steps: int, count: int) -> float:
    start = time.perf_counter()
    for index in range(count):
        bare(image_job(size, steps, seed=500 + index))
    return time.perf_counter() - start


def closed_loop(send: Callable[[int], float], seeds: Iterable[int], concurrency: int) -> tuple[float, list[float]]:
    """``concurrency`` clients, each sending the next seed's request when its last one returned (``send`` returns
    that request's seconds): the wall time for all of them, and each request's seconds."""
    pending = iter(seeds)
    lock = threading.Lock()
    durations: list[float] = []

    def client() -> None:
        while True:
            with lock:
                seed = next(pending, None)
            if seed is None:
                return
            seconds = send(seed)
            with lock:
                durations.append(seconds)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return time.perf_counter() - start, durations


def _served_concurrent(served: Served, size, steps: int, count: int, concurrency: int) -> tuple[float, list[float]]:
    """``count`` served images from ``concurrency`` clients in a closed loop."""
    with httpx.Client(base_url=served.frontend.url, timeout=1800) as client:
        return closed_loop(
            lambda seed: post_image(client, served.model, image_job(size, steps, seed))[0],
            range(900, 900 + count),
            concurrency,
        )


def measure_video(settings: Settings, engine: str, results: ResultsFile, deadline: Deadline) -> None:
    from diffusion_runtime.launcher.repository import REPOSITORY, ModelSpec, served_parameters

    key = ["video", engine]
    if not (REPOSITORY / "video_generation" / "config.pbtxt").exists():
        results.put([*key, "skipped"], "no video_generation model in this checkout")
        return
    model_path = ensure_model(settings, "wan", results)
    parameters = video_parameters(settings, engine, model_path)
    results.put([*key, "parameters"], parameters)
    workdir = settings.work / f"video-{engine}"
    workdir.mkdir(parents=True, exist_ok=True)
    size, frames, steps = settings.video_size, settings.video_frames, settings.video_steps

    t0 = time.perf_counter()
    triton = start_triton([ModelSpec("video_generation", parameters)], settings.gpus, workdir, settings.env)
    served = None
    bare = None
    try:
        bare = BareVideo(served_parameters("video_generation", parameters), settings.device)
        served = finish_stack(triton, workdir, SERVED_NAME["video"], settings.env, settings.load_timeout)
        results.put([*key, "load_s"], {"served_ready": time.perf_counter() - t0})
        client = httpx.Client(base_url=served.frontend.url, timeout=1800)
        warm_bare = bare(video_job(size, frames, steps, seed=1))
        warm_served, _ = post_video(client, served.model, video_job(size, frames, steps, seed=1))
        results.put([*key, "warmup_s"], {"bare": warm_bare.wall_s, "served": warm_served})
        log.info("[video %s] warm-up: bare %.2f s, served %.2f s", engine, warm_bare.wall_s, warm_served)
        pairs = fit_repetitions(settings.video_pairs, warm_bare.wall_s + warm_served, deadline.left(), 20, minimum=1)
        metrics_before = served.metrics()
        served_s, bare_s, bare_engine_s, bare_encode_s, same, sizes = [], [], [], [], [], []
        for index in range(pairs):
            seed = 100 + index
            for side in ("served", "bare") if index % 2 == 0 else ("bare", "served"):
                if side == "served":
                    seconds, served_file = post_video(client, served.model, video_job(size, frames, steps, seed))
                    served_s.append(seconds)
                else:
                    timing = bare(video_job(size, frames, steps, seed))
                    bare_s.append(timing.wall_s)
                    bare_engine_s.append(timing.gen_s)
                    bare_encode_s.append(timing.extra["encode_s"])
                    bare_file = timing.files[0]
            same.append(served_file == bare_file)
            sizes.append(len(bare_file))
            if index == 0:
                (settings.work / f"sample-video-{engine}.mp4").write_bytes(served_file)
        latency = {
            **latency_record(pairs, served_s, bare_s, bare_engine_s, bare_encode_s),
            "identical_files": same,
            "file_bytes": sizes,
            "served_model_metrics_delta": counter_increase(metrics_before, served.metrics()),
        }
        results.put([*key, "latency"], latency)
        log_latency(f"video {engine}", pairs, latency, same)
        results.put([*key, "gpu_memory_mib"], gpu_memory())
    finally:
        tear_down(triton, served, bare)


def measure_multi_gpu(settings: Settings, engine: str, results: ResultsFile, deadline: Deadline) -> None:
    """Images/s with one instance on GPU 0, then one instance on each visible GPU; same request mix."""
    from diffusion_runtime.launcher.repository import ModelSpec

    key = ["multi_gpu", engine]
    model_path = ensure_model(settings, "flux", results)
    parameters = image_parameters(settings, engine, model_path)
    results.put([*key, "parameters"], parameters)
    size, steps = settings.image_size, settings.image_steps
    layouts = [settings.gpus[:1], settings.gpus] if len(settings.gpus) > 1 else [settings.gpus]
    for index, gpus in enumerate(layouts):
        share = Deadline(deadline.left() / (len(layouts) - index))
        label = f"{len(gpus)}_gpu" if gpus else "cpu"
        workdir = settings.work / f"multi-{engine}-{label}"
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        triton = start_triton([ModelSpec("image_diffusion", parameters)], gpus, workdir, settings.env)
        served = None
        try:
            served = finish_stack(triton, workdir, SERVED_NAME["image"], settings.env, settings.load_timeout)
            loaded = time.perf_counter() - t0
            instances = max(1, len(gpus))
            # Warm every instance: as many concurrent requests as instances (Triton hands each to an idle one).
            warm_wall, warm_each = _served_concurrent(served, size, steps, instances, instances)
            per_image = max(warm_each) if warm_each else 1.0
            wanted = settings.throughput_images * instances
            count = fit_repetitions(wanted, per_image / instances, share.left(), reserve=30, minimum=2 * instances)
            concurrency = settings.concurrency * instances  # the same load per instance as the one-GPU runs
            wall, each = _served_concurrent(served, size, steps, count, concurrency)
            entry = {
                "gpus": gpus,
                "instances": instances,
                "load_s": loaded,
                "warmup_wall_s": warm_wall,
                "images": count,
                "concurrency": concurrency,
                "wall_s": wall,
                "images_per_s": count / wall,
                "request_s": summarize(each),
            }
            results.put([*key, label], entry)
            log.info("[multi-gpu %s] %s: %d images in %.1f s = %.4f img/s", engine, label, count, wall, count / wall)
        finally:
            if served is not None:
                served.stop()
            else:
                triton.stop()
            release_gpu()
    one, many = results.data[key[0]][engine].get("1_gpu"), results.data[key[0]][engine].get(f"{len(settings.gpus)}_gpu")
    if one and many and many is not one:
        results.put([*key, "speedup"], many["images_per_s"] / one["images_per_s"])


def summary_lines(data: dict[str, Any]) -> str:
    """The headline numbers, last in the output (where a log shown by its tail keeps them)."""
    lines = ["=== summary", f"device: {data.get('device', {}).get('gpus')}"]
    for kind in ("image", "video"):
        for engine, entry in data.get(kind, {}).items():
            latency, throughput = entry.get("latency"), entry.get("throughput")
            if latency:
                lines.append(
                    f"{kind} {engine}: latency served {latency['served']['median']:.3f} s / bare "
                    f"{latency['bare']['median']:.3f} s (engine {latency['bare_engine']['median']:.3f}, encode "
                    f"{latency['bare_encode']['median']:.3f}) = {latency['served_over_bare']:.4f} over "
                    f"{latency['pairs']} pairs; identical files {sum(latency['identical_files'])}"
                    f"/{len(latency['identical_files'])}"
                )
            if throughput:
                lines.append(
                    f"{kind} {engine}: throughput served {throughput['served_images_per_s']:.4f} img/s / bare "
                    f"{throughput['bare_images_per_s']:.4f} img/s = {throughput['served_over_bare']:.4f} "
                    f"({throughput['images']} images, concurrency {throughput['concurrency']})"
                )
    for engine, entry in data.get("image_variants", {}).items():
        for name, variant in entry.items():
            if not name.startswith("_"):
                lines.append(f"variant {engine} {name}: {variants.variant_line(variant)}")
    for engine, entry in data.get("multi_gpu", {}).items():
        for label, layout in entry.items():
            if isinstance(layout, dict) and "images_per_s" in layout:
                lines.append(
                    f"multi-gpu {engine} {label}: {layout['images_per_s']:.4f} img/s ({layout['images']} images)"
                )
        if "speedup" in entry:
            lines.append(f"multi-gpu {engine}: speedup {entry['speedup']:.3f}")
    lines += peer_summary(data)
    for name, error in data.get("errors", {}).items():
        lines.append(f"ERROR {name}: {error.strip().splitlines()[-1][:300]}")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


# --- environment -------------------------------------------------------------------------------------------------


def visible_gpus() -> list[int]:
    from diffusion_runtime.launcher.repository import detect_gpus

    return detect_gpus()


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def build_settings(args: argparse.Namespace) -> Settings:
    tiny = args.tiny
    gpus = [] if tiny else visible_gpus()
    if args.gpus is not None:
        gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(args.work / "hf")}
    return Settings(
        tiny=tiny,
        out=args.out,
        work=args.work,
        model_root=args.model_root,
        device="cuda:0" if gpus else "cpu",
        gpus=gpus,
        image_size=parse_size(args.image_size or ("64x64" if tiny else "1024x1024")),
        image_steps=args.image_steps or (2 if tiny else 28),
        video_size=parse_size(args.video_size or ("64x64" if tiny else "832x480")),
        video_frames=args.video_frames or (9 if tiny else 33),
        video_steps=args.video_steps or (2 if tiny else 20),
        pairs=args.pairs,
        throughput_images=args.throughput_images,
        concurrency=args.concurrency,
        video_pairs=args.video_pairs,
        load_timeout=args.load_timeout,
        sglang_attention_backend=args.sglang_attention_backend,
        image_variants=args.image_variants,
        image_settings=variants.parse_settings(args.image_settings),
        env=env,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", required=True, help="comma list of image, video, multi-gpu, peer, image-variants")
    parser.add_argument("--engines", default="sglang,diffusers", help="image engines, in order")
    parser.add_argument("--video-engines", default="diffusers")
    parser.add_argument("--multi-gpu-engine", default="diffusers")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-gpu-out")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-gpu-work")
    parser.add_argument("--model-root", type=Path, default=None, help="where model folders are built (default: RAM)")
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds this run may take")
    parser.add_argument("--tiny", action="store_true", help="toy models on the CPU: a dry run of everything")
    parser.add_argument("--gpus", default=None)
    parser.add_argument("--image-size", default=None)
    parser.add_argument("--image-steps", type=int, default=None)
    parser.add_argument("--video-size", default=None)
    parser.add_argument("--video-frames", type=int, default=None)
    parser.add_argument("--video-steps", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--video-pairs", type=int, default=3)
    parser.add_argument("--throughput-images", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--load-timeout", type=float, default=400.0)
    parser.add_argument("--sglang-attention-backend", default=DEFAULT_SGLANG_ATTENTION_BACKEND)
    parser.add_argument("--image-variants", default="", help="see benchmarks/gpu/variants.py (default: per engine)")
    parser.add_argument("--image-settings", action="append", default=[], help="[ENGINE=]SPEC, e.g. compile+fuse")
    args = parser.parse_args(argv)
    if args.model_root is None:
        shm = Path("/dev/shm")
        free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize if shm.exists() else 0
        in_memory = free > 40 * 2**30 or args.tiny
        args.model_root = shm / "td-models" if in_memory else Path(tempfile.gettempdir()) / "td-models"
    for folder in (args.out, args.work, args.model_root):
        folder.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the measurements
    deadline = Deadline(args.deadline)
    settings = build_settings(args)
    results = ResultsFile(
        args.out / "results.json",
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line("benchmarks.gpu.bench", sys.argv[1:] if argv is None else argv),
            "commit": git_commit(),
            "device": describe_device(),
            "versions": library_versions(),
            "settings": {k: v for k, v in vars(settings).items() if k != "env"},
        },
    )
    log.info("device: %s", results.data["device"])
    plans = [p.strip() for p in args.plan.split(",") if p.strip()]
    unknown = set(plans) - {"image", "video", "multi-gpu", "peer", "image-variants"}
    if unknown:
        raise SystemExit(f"unknown plan(s) {sorted(unknown)}")
    if args.image_variants:
        try:
            variants.parse_variants(args.image_variants)  # a typo stops the run before any model is built
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
    phases: list[tuple[str, Callable[[Deadline], None]]] = []
    for plan in plans:
        if plan == "image":
            for engine in args.engines.split(","):
                phases.append((f"image {engine}", lambda d, e=engine: measure_image_engine(settings, e, results, d)))
        elif plan == "peer":
            phases.append(("peer image", lambda d: measure_peer(settings, results, d)))
        elif plan == "image-variants":
            for engine in args.engines.split(","):
                phases.append(
                    (f"variants {engine}", lambda d, e=engine: measure_image_variants(settings, e, results, d))
                )
        elif plan == "video":
            for engine in args.video_engines.split(","):
                phases.append((f"video {engine}", lambda d, e=engine: measure_video(settings, e, results, d)))
        else:
            engine = args.multi_gpu_engine
            phases.append((f"multi-gpu {engine}", lambda d, e=engine: measure_multi_gpu(settings, e, results, d)))
    failures = 0
    # Models first (one process each, GPU memory freed when it exits), then the phases share what time is left.
    needed = (["flux"] if {"image", "multi-gpu", "image-variants", "peer"} & set(plans) else []) + (
        ["wan"] if "video" in plans else []
    )
    for kind in needed:
        try:
            ensure_model(settings, kind, results)
        except Exception as exc:  # noqa: BLE001 - recorded; the phases needing it fail on their own
            failures += 1
            results.put(["errors", f"build {kind}"], "".join(traceback.format_exception(exc))[-6000:])
            log.error("building %s failed: %s", kind, exc)
    for index, (name, phase) in enumerate(phases):
        if deadline.left() < 60:
            results.put(["skipped", name], f"out of time ({deadline.left():.0f} s left)")
            log.info("skipping %s: out of time", name)
            continue
        share = Deadline(deadline.left() / (len(phases) - index))
        log.info("=== %s (%.0f s of %.0f s left)", name, share.left(), deadline.left())
        try:
            phase(share)
        except Exception as exc:  # noqa: BLE001 - one phase failing must not lose the others' results
            failures += 1
            results.put(["errors", name], "".join(traceback.format_exception(exc))[-6000:])
            log.error("%s failed: %s", name, exc)
    results.put(["finished"], time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    print(summary_lines(results.data), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
