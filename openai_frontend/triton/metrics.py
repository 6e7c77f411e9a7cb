"""Triton's Prometheus metrics as the frontend's ``/metrics`` shows them, after the frontend's own.

Each server's text is read with ``prometheus_client``'s parser and written again with its exposition, so what
the frontend serves is well-formed whatever it merges: with several servers, each family appears once, its
samples from every server, each with a ``triton`` label naming the server it came from.

Triton names its own counters without the ``_total`` suffix (``nv_inference_request_success``), the names its
dashboards query. ``prometheus_client`` only writes counter families whose samples end in ``_total`` (its parser
adds the suffix to the samples of such a counter), so those families keep their names and are shown untyped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import httpx
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from openai_frontend.triton.endpoint import TritonEndpoint

log = logging.getLogger(__name__)
SERVER_LABEL = "triton"


async def metrics_text(endpoints: Sequence[TritonEndpoint]) -> str:
    """The servers' metrics as Prometheus text; with several servers every sample gets a ``triton`` label."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        texts = await asyncio.gather(*(_fetch_text(client, e.metrics_url) for e in endpoints))
    served = [(e.url, text) for e, text in zip(endpoints, texts, strict=True) if text]
    return exposition(merge_families(served, label_servers=len(endpoints) > 1))


async def _fetch_text(client: httpx.AsyncClient, url: str | None) -> str:
    if not url:
        return ""
    try:
        response = await client.get(url)
        return response.text if response.status_code == 200 else ""
    except httpx.HTTPError:
        return ""


def merge_families(texts: Sequence[tuple[str, str]], label_servers: bool) -> list[Metric]:
    """The families of several servers' texts (``(server, text)``), one family per name in first-seen order;
    ``label_servers`` adds the ``triton`` label to each sample."""
    merged: dict[str, Metric] = {}
    for server, text in texts:
        for family in parse_families(text, source=server):
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for sample in family.samples:
                labels = {**sample.labels, SERVER_LABEL: server} if label_servers else sample.labels
                into.samples.append(sample._replace(labels=labels))
    return list(merged.values())


def parse_families(text: str, source: str = "Triton") -> list[Metric]:
    """One server's families as Triton named them. Text that does not parse is logged and left out: a scrape of
    the frontend should not fail for one server's bad metrics."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        log.warning("the metrics of %s could not be parsed (%s); they are left out", source, exc)
        return []
    unsuffixed = _counters_named_without_total(text)
    return [_keep_triton_name(f) if f.type == "counter" and f.name in unsuffixed else f for f in families]


def exposition(families: Iterable[Metric]) -> str:
    """Prometheus text of ``families``, as ``prometheus_client`` writes a registry's."""
    return generate_latest(_Families(list(families))).decode()


def _counters_named_without_total(text: str) -> set[str]:
    """Counters declared under a name without ``_total`` (the parser gives their samples that suffix)."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["#", "TYPE"] and len(parts) == 4 and parts[3] == "counter":
            names.add(parts[2])
    return {name for name in names if not name.endswith("_total")}


def _keep_triton_name(family: Metric) -> Metric:
    kept = Metric(family.name, family.documentation, "unknown")
    kept.samples = [s._replace(name=s.name.removesuffix("_total")) for s in family.samples]
    return kept


class _Families:
    """Parsed families in the shape ``generate_latest`` collects from."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
