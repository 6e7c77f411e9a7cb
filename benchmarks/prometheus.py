"""Reading Triton's ``/metrics`` (Prometheus text): the benchmarks time the model's own phases from its counters.

The model's ``diffusion_seconds_total{phase="denoise"}`` moves by exactly one call's denoising time when calls
run one at a time, which separates what serving adds from the denoising's own run-to-run noise.
"""

from __future__ import annotations

from collections.abc import Mapping

from openai_frontend.triton.metrics import parse_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_prometheus(text: str) -> Samples:
    """Prometheus text exposition → ``{(name, labels): value}``, read as the frontend reads Triton's (its
    ``prometheus_client`` parsing, Triton's counter names kept); text that does not parse gives no samples."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in parse_families(text, source="the benchmark's scrape")
        for sample in family.samples
    }


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
