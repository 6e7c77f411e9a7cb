"""Reading Triton's ``/metrics`` (Prometheus text): the benchmarks time the model's own phases from its counters.

The model's ``diffusion_seconds_total{phase="denoise"}`` moves by exactly one call's denoising time when calls
run one at a time, which separates what serving adds from the denoising's own run-to-run noise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


def sample_key(name: str, labels: frozenset[tuple[str, str]]) -> str:
    """A sample as its exposition line names it (labels sorted): ``name{a="x",b="y"}``."""
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels))
    return f"{name}{{{inner}}}" if inner else name


def counter_increase(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """How much each counter of ``after`` grew since ``before`` (counters that did not move left out)."""
    grown = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return {key: value for key, value in grown.items() if value}
