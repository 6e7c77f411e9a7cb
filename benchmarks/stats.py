"""The statistics every benchmark reports, CPU and GPU alike, kept free of I/O so the tests can check them.

Machines are noisy (a shared 2-core CPU more than a GPU, but clocks and temperature drift there too), so every
comparison is made on runs interleaved side by side and read from medians and spreads; a difference or a ratio
between two paths is reported both between the medians and as the median of per-round (paired) values, with a
95% bootstrap interval for the latter. A goal is judged from that interval: ``met``, ``inconclusive`` or
``missed`` (``verdict``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly between order statistics (numpy's default)."""
    if len(values) == 0:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summarize(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """Count, quantiles, mean, extremes and spread of ``values``, each multiplied by ``scale`` (e.g. 1000 for
    seconds to milliseconds). ``median`` and ``p50`` are the same number: the GPU results have always called it
    the one, the CPU results the other, and their readers (reports, committed result files) keep both names."""
    if len(values) == 0:
        return {"n": 0}
    scaled = np.asarray(values, dtype=float) * scale
    p25, p50, p75, p95 = (float(v) for v in np.percentile(scaled, [25, 50, 75, 95]))
    return {
        "n": len(scaled),
        "median": p50,
        "p25": p25,
        "p50": p50,
        "p75": p75,
        "p95": p95,
        "mean": float(scaled.mean()),
        "min": float(scaled.min()),
        "max": float(scaled.max()),
        "iqr": p75 - p25,
        "iqr_over_median": (p75 - p25) / p50 if p50 else 0.0,
        "stdev": float(scaled.std(ddof=1)) if len(scaled) > 1 else 0.0,
    }


def bootstrap_median_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """A percentile-bootstrap interval for the median: the middle ``confidence`` of the medians of ``resamples``
    resamples drawn with replacement. Deterministic (a fixed seed), so a report rebuilt from its JSON says the
    same."""
    if len(values) == 0:
        raise ValueError("bootstrap of no values")
    data = np.asarray(values, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    medians = np.median(data[draws], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def _check_paired(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")


def paired_difference(
    a: Sequence[float], b: Sequence[float], scale: float = 1.0
) -> dict[str, float | int | list[float]]:
    """``a - b`` for runs made side by side (round ``i`` of ``a`` next to round ``i`` of ``b``): the difference
    of the medians, and the median of per-round differences with its 95% bootstrap interval (robust to drift
    of the machine's load between rounds)."""
    _check_paired(a, b)
    if len(a) == 0:
        return {"n": 0}
    diffs = [(x - y) * scale for x, y in zip(a, b, strict=True)]
    low, high = bootstrap_median_ci(diffs)
    return {
        "n": len(diffs),
        "median_of_differences": median(diffs),
        "ci95": [low, high],
        "difference_of_medians": (median(a) - median(b)) * scale,
        "p95_difference": (percentile(a, 95) - percentile(b, 95)) * scale,
    }


def ratio_of_medians(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    return median(numerators) / median(denominators)


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios ``numerators[i] / denominators[i]`` of interleaved runs (rounds with a zero denominator
    left out), robust to drift that moves both sides of a round: their summary (``summarize``), the 95%
    bootstrap interval of their median (``ci95``), and the ratio of the medians of the two series."""
    _check_paired(numerators, denominators)
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if d > 0]
    if not ratios:
        return {"n": 0}
    return {
        **summarize(ratios),
        "ci95": list(bootstrap_median_ci(ratios)),
        "ratio_of_medians": ratio_of_medians(numerators, denominators),
    }


def verdict(measured: float, ci95: Sequence[float] | None, goal: float, *, higher_is_better: bool) -> str:
    """``met`` when the measured value is on the goal's side; ``missed`` when even the 95% interval lies wholly on
    the wrong side (or there is no interval); ``inconclusive`` when the interval straddles the goal (the machine's
    noise is larger than the distance to it, so more rounds or a quieter machine would decide)."""
    sign = 1 if higher_is_better else -1
    if sign * (measured - goal) >= 0:
        return "met"
    if ci95 and max(sign * (bound - goal) for bound in ci95) >= 0:
        return "inconclusive"
    return "missed"


def throughput(count: float, start: float, end: float) -> float:
    """Items per second over ``[start, end]``."""
    if end <= start:
        raise ValueError("throughput over an empty interval")
    return count / (end - start)


def interleaved_order(paths: Sequence[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """The order of paths in each round: every path once per round, rotated and shuffled so that no path
    always runs first (right after another path warmed the caches) or last."""
    rng = random.Random(seed)
    order = []
    for r in range(rounds):
        rotated = list(paths[r % len(paths) :]) + list(paths[: r % len(paths)])
        if r >= len(paths):
            rng.shuffle(rotated)
        order.append(rotated)
    return order
