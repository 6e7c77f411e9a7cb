"""Image-engine settings side by side (the ``image-variants`` plan of ``benchmarks.gpu.bench``).

Each variant is a set of the image model's speed parameters (``config.pbtxt``: ``torch_compile``,
``fuse_qkv_projections``, ``attention_backend``, ``pixels_on_device``, ``step_cache``, ...) on top of the plan's
own. One variant after another, in this process, the project's engine is loaded with them exactly as the served
model loads (warm-up included), then generates the same seeds as every other variant: load and warm-up seconds,
the first request's seconds, and the latency of the timed ones. Every variant's images are compared with those of
the first variant (the reference, ``eager`` unless told otherwise) for the same seeds: maximum and mean
absolute pixel difference and PSNR. Exact settings should differ by rounding only (a few levels at most); step
caches by what they trade for speed.

A variant is named by presets joined with ``+`` (``compile+fuse+cudnn``), or the whole list is a JSON object of
name -> parameters (inline, or ``@file.json``).
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stats import median, summarize

log = logging.getLogger("benchmarks.gpu")

PRESETS: dict[str, dict[str, str]] = {
    "eager": {"torch_compile": "off"},  # the plain engine: the reference for pixel errors
    "default": {},  # the committed config.pbtxt's settings (torch_compile=auto: compiled blocks on a GPU)
    "pixels": {"pixels_on_device": "true"},
    "fuse": {"fuse_qkv_projections": "true"},
    "sdpa": {"attention_backend": "native"},
    "cudnn": {"attention_backend": "_native_cudnn"},
    "flash": {"attention_backend": "_native_flash"},
    "efficient": {"attention_backend": "_native_efficient"},
    "fa3": {"attention_backend": "_flash_3"},  # needs FlashAttention 3 installed
    "compile": {"torch_compile": "transformer"},
    "compile-blocks": {"torch_compile": "blocks"},
    "autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
    "cudagraphs": {"compile_mode": "max-autotune"},
    "first-block": {"step_cache": "first-block", "step_cache_args": '{"threshold": 0.08}'},
    "taylorseer": {"step_cache": "taylorseer"},
    "cache-dit": {"step_cache": "cache-dit"},
}
DEFAULT_VARIANTS = (
    "eager,default,pixels,fuse,cudnn,flash,compile,compile+fuse+cudnn+pixels,compile-blocks+fuse+cudnn+pixels,"
    "compile+autotune+fuse+cudnn+pixels,compile+fuse+cudnn+pixels+first-block,compile+fuse+cudnn+pixels+cache-dit"
)
SGLANG_VARIANTS = "eager,compile,compile-blocks,cache-dit"  # the levers DiffGenerator has


def parse_variants(text: str) -> dict[str, dict[str, str]]:
    """``a,b+c`` (presets, ``+`` merging them left to right) or a JSON object name -> parameters, inline or
    ``@path``; in order, so the first is the reference."""
    text = text.strip()
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    if text.startswith("{"):
        variants = json.loads(text)
        return {name: {k: str(v) for k, v in parameters.items()} for name, parameters in variants.items()}
    return {name: combine(name) for name in (part.strip() for part in text.split(",")) if name}


def parse_settings(specs: list[str]) -> dict[str, dict[str, str]]:
    """``--image-settings`` values: ``SPEC`` for every engine or ``ENGINE=SPEC`` for one (SPEC as for variants)."""
    parsed: dict[str, dict[str, str]] = {}
    for spec in specs:
        engine, _, rest = spec.partition("=")
        if rest and engine in ("diffusers", "sglang"):
            parsed.setdefault(engine, {}).update(combine(rest))
        else:
            parsed.setdefault("*", {}).update(combine(spec))
    return parsed


def combine(name: str) -> dict[str, str]:
    """The parameters of presets joined by ``+``."""
    parameters: dict[str, str] = {}
    for preset in name.split("+"):
        if preset not in PRESETS:
            raise ValueError(f"unknown image variant {preset!r}; presets: {', '.join(PRESETS)}")
        parameters.update(PRESETS[preset])
    return parameters


def pixel_error(images: list[np.ndarray], references: list[np.ndarray]) -> dict[str, Any]:
    """How far ``images`` are from ``references`` (same seeds), over all of them: the largest and the mean absolute
    difference in 8-bit levels, and PSNR in dB (None when identical)."""
    diffs = [np.abs(i.astype(np.int16) - r.astype(np.int16)) for i, r in zip(images, references, strict=True)]
    squared = float(np.mean([np.mean(d.astype(np.float64) ** 2) for d in diffs]))
    return {
        "images": len(diffs),
        "identical": all(not d.any() for d in diffs),
        "max_abs": max(int(d.max()) for d in diffs),
        "mean_abs": float(np.mean([d.mean() for d in diffs])),
        "psnr_db": None if squared == 0 else 10 * math.log10(255.0**2 / squared),
    }


def measure_variant(
    parameters: dict[str, str],
    device: str,
    job: Callable[[int], Any],
    runs: Callable[[float], int],
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Load the engine with ``parameters`` (timed, warm-up included), one first request, then ``runs(first_s)``
    timed requests (asked once the first one is done) with seeds 100, 101, ...; the record and the images by seed."""
    from benchmarks.paths import BareImage
    from diffusion_runtime.launcher.repository import served_parameters

    start = time.perf_counter()
    bare = BareImage(served_parameters("image_diffusion", parameters), device)
    try:
        load_s = time.perf_counter() - start
        _, first_s = bare.generate(job(1))
        seconds: list[float] = []
        images: dict[int, np.ndarray] = {}
        phases: list[dict[str, float]] = []
        for index in range(runs(first_s)):
            generated, elapsed = bare.generate(job(100 + index))
            seconds.append(elapsed)
            images[100 + index] = generated[0]
            split = step_phases(bare.step_marks)
            if split is not None:
                phases.append(split)
    finally:
        bare.close()
    record = {
        "load_s": load_s,
        "warmup_s": bare.warmup_s,
        "first_request_s": first_s,
        "seconds": seconds,
        "latency": summarize(seconds),
    }
    if phases:
        record["phases"] = {key: median([p[key] for p in phases]) for key in phases[0]}
    return record, images


def step_phases(marks: list[float]) -> dict[str, float] | None:
    """Where one image's time went, from the request's start, the end of each denoising step and the request's
    end: the median step, all the steps, what came before the first step's work (text encoding: the first
    interval less one step) and what came after the last (VAE decoding, pixels to the host). None when the engine
    reports no steps (SGLang's: one mark at the start, one at the end)."""
    intervals = np.diff(marks)
    if len(intervals) < 4:
        return None
    steps = len(intervals) - 1
    step = float(np.median(intervals[1:-1]))
    return {
        "step_s": step,
        "steps_s": float(np.sum(intervals[1:-1])) + step,
        "before_steps_s": float(intervals[0]) - step,
        "after_steps_s": float(intervals[-1]),
        "steps": steps,
    }


def measure_variants(
    variants: dict[str, dict[str, str]],
    base: dict[str, str],
    device: str,
    job: Callable[[int], Any],
    runs: Callable[[float, float], int],
    seconds_left: Callable[[], float],
    put: Callable[[list[str], Any], None],
    release: Callable[[], None],
) -> None:
    """Every variant in turn (``base`` parameters plus its own), each recorded under its name as soon as measured;
    one that fails to load or run is recorded with its error and the others go on. ``runs(first_s, left_s)``:
    how many timed requests fit in what is left of the variant's share of the time."""
    reference: dict[int, np.ndarray] = {}
    reference_median: float | None = None
    names = list(variants)
    for index, name in enumerate(names):
        left = seconds_left()
        if left < 60:
            put([name], {"parameters": variants[name], "skipped": f"out of time ({left:.0f} s left)"})
            continue
        share_end = time.monotonic() + left / (len(names) - index)
        entry: dict[str, Any] = {"parameters": variants[name]}
        try:
            record, images = measure_variant(
                {**base, **variants[name]},
                device,
                job,
                lambda first_s, end=share_end: runs(first_s, end - time.monotonic()),
            )
            entry.update(record)
            if index == 0:
                reference, reference_median = images, median(record["seconds"])
                entry["reference"] = True
            seeds = sorted(set(images) & set(reference))
            if seeds and index > 0:
                entry["error_vs_reference"] = pixel_error([images[s] for s in seeds], [reference[s] for s in seeds])
            if reference_median:
                entry["speedup_vs_reference"] = reference_median / median(record["seconds"])
        except Exception as exc:  # noqa: BLE001 - a variant this host cannot run is a result, not the end of the run
            entry["error"] = "".join(traceback.format_exception(exc))[-4000:]
        finally:
            release()
        put([name], entry)
        log.info("[variant %s] %s", name, variant_line(entry))


def not_measured(entry: dict[str, Any]) -> str | None:
    """Why a variant has no timings (out of time, or its error's last line); None when it was measured."""
    if "skipped" in entry:
        return entry["skipped"]
    return entry["error"].strip().splitlines()[-1][:200] if "error" in entry else None


def phase_text(phases: dict[str, float]) -> str:
    """``step_phases``' split of an image's time, in words."""
    return (
        f"{phases['steps']:.0f} steps of {phases['step_s']:.3f} s + {phases['before_steps_s']:.3f} s before"
        f" + {phases['after_steps_s']:.3f} s after"
    )


def error_text(error: dict[str, Any]) -> str:
    """``pixel_error``'s result, in 8-bit levels."""
    if error["identical"]:
        return "identical"
    return f"max {error['max_abs']}, mean {error['mean_abs']:.2f}, {error['psnr_db']:.1f} dB"


def variant_line(entry: dict[str, Any]) -> str:
    """One line per variant for the log and the summary."""
    why = not_measured(entry)
    if why is not None:
        return f"not measured: {why}"
    line = (
        f"median {entry['latency']['median']:.3f} s over {entry['latency']['n']} (first request "
        f"{entry['first_request_s']:.2f} s, load {entry['load_s']:.1f} s"
    )
    if entry.get("warmup_s") is not None:
        line += f", warm-up {entry['warmup_s']:.1f} s"
    line += ")"
    if "speedup_vs_reference" in entry:
        line += f", {entry['speedup_vs_reference']:.3f}x"
    if entry.get("phases"):
        line += ", " + phase_text(entry["phases"])
    if entry.get("error_vs_reference"):
        line += ", pixels " + error_text(entry["error_vs_reference"])
    return line
