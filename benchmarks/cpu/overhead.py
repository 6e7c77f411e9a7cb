"""Overhead: the same generation bare, through Triton alone, and served, in interleaved rounds.

Per call the benchmark records the wall time and the generation time (the bare path times its engine call;
for Triton and the frontend the model's ``diffusion_seconds_total{phase="denoise"}`` counter moves by exactly
that call's denoising time, the calls being one at a time). ``wall - gen`` is everything but the denoising:
encoding, tensors, gRPC, HTTP, base64. Comparing that between paths measures what serving adds without the
denoising's own run-to-run noise, which on a shared 2-core machine is far larger than the overhead. The
plain end-to-end p50 difference is reported too (it is what the target names), with its paired interval.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from benchmarks.cpu.stack import Stack
from benchmarks.paths import Call
from benchmarks.stats import interleaved_order, paired_difference, paired_ratios, summarize


def _digest(files: list[bytes]) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(f).digest() for f in files)).hexdigest()[:16]


def counters_after(stack: Stack, model: str, before: dict[str, float], requests: int, timeout: float = 5.0):
    """Triton reports a request's statistics just after sending its response: wait until they are in."""
    deadline = time.monotonic() + timeout
    while True:
        after = stack.model_counters(model)
        done = after["success"] + after["failure"] - before["success"] - before["failure"]
        if done >= requests or time.monotonic() > deadline:
            return after
        time.sleep(0.002)


def measured_call(stack: Stack, model: str, call: Callable[[], Call]) -> tuple[Call, dict[str, float]]:
    """One served call, with the model's counters before and after it (denoise and compute time, queueing)."""
    before = stack.model_counters(model)
    result = call()
    after = counters_after(stack, model, before, 1)
    moved = {key: after[key] - before[key] for key in after}
    result.gen_s = moved["denoise_s"]
    result.extra.update(
        execute_s=moved["compute_infer_us"] / 1e6, queue_s=moved["queue_us"] / 1e6, failures=moved["failure"]
    )
    return result, moved


def identity(call: Call) -> str:
    """What must be the same on every path: the files' bytes, or the text."""
    if call.files:
        return _digest(call.files)
    return hashlib.sha256((call.text or "").encode()).hexdigest()[:16]


def compare_paths(
    name: str,
    stack: Stack,
    model: str,
    calls: dict[str, Callable[[], Call]],
    rounds: int,
    warmup: int,
    pairs: tuple[tuple[str, str, str], ...] = (
        ("served_minus_bare", "served", "bare"),
        ("triton_minus_bare", "triton", "bare"),  # Triton's share
        ("served_minus_triton", "served", "triton"),  # the frontend's share
    ),
) -> tuple[dict[str, Any], dict[str, list[Call]]]:
    """Run each path ``warmup`` times, then ``rounds`` interleaved rounds (``calls``' first path is the bare
    reference); check every answer is the same as the bare one; summarise wall, generation and
    non-generation time per path and the paired differences (milliseconds) between paths."""
    paths = list(calls)
    print(f"[bench] {name}: warm-up", flush=True)
    reference: str | None = None
    for _ in range(warmup):
        for path in paths:
            digest = identity(_run(stack, model, path, calls[path]))
            reference = reference or digest
    records: dict[str, list[Call]] = {path: [] for path in paths}
    mismatches: list[str] = []
    for index, order in enumerate(interleaved_order(paths, rounds)):
        for path in order:
            result = _run(stack, model, path, calls[path])
            if identity(result) != reference:
                mismatches.append(f"round {index} {path}")
            records[path].append(result)
        times = ", ".join(f"{p} {records[p][-1].wall_s * 1000:.1f} ms" for p in paths)
        print(f"[bench] {name} round {index + 1}/{rounds}: {times}", flush=True)
    if mismatches:
        raise AssertionError(f"{name}: answers differ from the bare engine's: {mismatches}")

    def series(path: str, what: str) -> list[float]:
        calls_ = records[path]
        if what == "wall":
            return [c.wall_s for c in calls_]
        if what == "gen":
            return [c.gen_s or 0.0 for c in calls_]
        if what == "other":  # everything but the denoising
            return [c.wall_s - (c.gen_s or 0.0) for c in calls_]
        raise ValueError(what)

    bare = paths[0]
    result: dict[str, Any] = {"rounds": rounds, "warmup": warmup, "same_output": True, "sha256_16": reference}
    for path in paths:
        result[path] = {what: summarize(series(path, what), 1000) for what in ("wall", "gen", "other")}
        if path == bare:
            if all("encode_s" in c.extra for c in records[path]):
                result[path]["encode"] = summarize([c.extra["encode_s"] for c in records[path]], 1000)
            continue
        execute = [c.extra["execute_s"] for c in records[path]]
        gen = series(path, "gen")
        result[path]["model_execute"] = summarize(execute, 1000)
        result[path]["in_model_not_denoise"] = summarize([e - g for e, g in zip(execute, gen, strict=True)], 1000)
        result[path]["outside_model"] = summarize([c.wall_s - c.extra["execute_s"] for c in records[path]], 1000)
        result[path]["queue"] = summarize([c.extra["queue_s"] for c in records[path]], 1000)
        reported = [abs(c.extra["model_gen_s"] - (c.gen_s or 0.0)) for c in records[path] if c.extra.get("model_gen_s")]
        if reported:
            result[path]["model_reported_gen_minus_counter_abs"] = summarize(reported, 1000)
    result["differences_ms"] = {
        label: {
            "wall": paired_difference(series(a, "wall"), series(b, "wall"), 1000),
            "other": paired_difference(series(a, "other"), series(b, "other"), 1000),
        }
        for label, a, b in pairs
    }
    result["gen_ratio_vs_bare"] = {
        path: paired_ratios(series(path, "gen"), series(bare, "gen")) for path in paths if path != bare
    }
    return result, records


def _run(stack: Stack, model: str, path: str, call: Callable[[], Call]) -> Call:
    if path == "bare":
        result = call()
        result.extra.setdefault("execute_s", result.wall_s)
        return result
    result, _ = measured_call(stack, model, call)
    return result
