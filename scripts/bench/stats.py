"""Statistics the benchmark reports, kept free of I/O so ``tests/test_bench.py`` can check them.

Shared machines are noisy, so every comparison is made on interleaved runs and reported as medians and
spreads; a difference between two paths is reported both as the difference of their medians and as the
median of per-round (paired) differences, with a bootstrap interval for the latter.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summarize(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """n, p50, p95, mean, min, max and the interquartile range of ``values`` (each multiplied by ``scale``,
    e.g. 1000 for seconds to milliseconds)."""
    if not values:
        return {"n": 0}
    scaled = [v * scale for v in values]
    return {
        "n": len(scaled),
        "p50": percentile(scaled, 50),
        "p95": percentile(scaled, 95),
        "mean": sum(scaled) / len(scaled),
        "min": min(scaled),
        "max": max(scaled),
        "iqr": percentile(scaled, 75) - percentile(scaled, 25),
    }


def bootstrap_median_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A percentile-bootstrap interval for the median (deterministic: a fixed seed)."""
    if not values:
        raise ValueError("bootstrap of no values")
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(median([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    tail = (1 - confidence) / 2 * 100
    return percentile(medians, tail), percentile(medians, 100 - tail)


def paired_difference(
    a: Sequence[float], b: Sequence[float], scale: float = 1.0
) -> dict[str, float | int | list[float]]:
    """``a - b`` for runs made side by side (round ``i`` of ``a`` next to round ``i`` of ``b``): the difference
    of the medians, and the median of per-round differences with its 95% bootstrap interval (robust to drift
    of the machine's load between rounds)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if not a:
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


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios ``numerators[i] / denominators[i]``: their median with its 95% bootstrap interval, min,
    max, and the ratio of medians."""
    if len(numerators) != len(denominators):
        raise ValueError("ratio of samples of different lengths")
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if d > 0]
    if not ratios:
        return {"n": 0}
    return {
        "n": len(ratios),
        "median": median(ratios),
        "ci95": list(bootstrap_median_ci(ratios)),
        "min": min(ratios),
        "max": max(ratios),
        "ratio_of_medians": median(numerators) / median(denominators),
    }


def verdict(measured: float, ci95: Sequence[float] | None, goal: float, *, higher_is_better: bool) -> str:
    """``met`` when the measured median is on the goal's side; ``missed`` when even the 95% interval lies wholly on
    the wrong side; ``inconclusive`` when the interval straddles the goal (the machine's noise is larger than the
    distance to it, so more rounds or a quieter machine would decide)."""
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


# --- Prometheus text (Triton's /metrics) ---------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_prometheus(text: str) -> Samples:
    """Prometheus text exposition → ``{(name, labels): value}`` (comments and unparsable lines skipped)."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = number
    return samples


def metric_sum(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in set(after) | set(before)}


def rows_as_table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
