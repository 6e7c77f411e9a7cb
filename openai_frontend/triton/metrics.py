"""Triton's Prometheus metrics as the frontend's ``/metrics`` shows them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import httpx

from openai_frontend.triton.endpoint import TritonEndpoint

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(.+)$")


async def metrics_text(endpoints: Sequence[TritonEndpoint]) -> str:
    """Each server's Prometheus text; with several servers every sample gets a ``triton`` label."""
    urls = [e.metrics_url for e in endpoints]
    async with httpx.AsyncClient(timeout=5.0) as client:
        texts = await asyncio.gather(*(_fetch_text(client, url) for url in urls))
    if len(endpoints) == 1:
        return texts[0]
    return _label_samples([(e.url, text) for e, text in zip(endpoints, texts, strict=True) if text])


async def _fetch_text(client: httpx.AsyncClient, url: str | None) -> str:
    if not url:
        return ""
    try:
        response = await client.get(url)
        return response.text if response.status_code == 200 else ""
    except httpx.HTTPError:
        return ""


def _label_samples(texts: list[tuple[str, str]]) -> str:
    """Merge several servers' exposition text: HELP/TYPE once per family, a ``triton`` label on samples."""
    seen_meta: set[str] = set()
    lines: list[str] = []
    for server, text in texts:
        label = f'triton="{server}"'
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                if line not in seen_meta:
                    seen_meta.add(line)
                    lines.append(line)
                continue
            match = _SAMPLE.match(line)
            if not match:
                continue
            name, labels, value = match.groups()
            merged = f"{label},{labels[1:-1]}" if labels and labels != "{}" else label
            lines.append(f"{name}{{{merged}}} {value}")
    return "\n".join(lines) + "\n"
