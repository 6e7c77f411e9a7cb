"""``/health/ready``'s view of the servers: reachable, and every model they list loaded and answering."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tritonclient.utils import InferenceServerException

from openai_frontend.triton.endpoint import TritonEndpoint


async def server_readiness(endpoint: TritonEndpoint) -> tuple[bool, dict[str, Any]]:
    try:
        if not await endpoint.client.is_server_ready():
            return False, {"status": "not ready"}
        index = await endpoint.client.get_model_repository_index(as_json=True)
    except InferenceServerException as exc:
        endpoint.restarted()
        return False, {"status": f"unreachable: {exc.message()}"}
    states = {m["name"]: m.get("state", "UNKNOWN") for m in index.get("models", [])}
    # Triton 2.51 still calls a model whose stub process died READY: say what requests to it found.
    states.update({name: "UNAVAILABLE" for name in endpoint.failed_models if name in states})
    detail: dict[str, Any] = {"status": "ready", "models": states}
    if endpoint.failed_models:
        detail["errors"] = dict(endpoint.failed_models)
    if reloading := sorted(name for name in endpoint.failed_models if endpoint.reloading(name)):
        detail["reloading"] = reloading
    return bool(states) and all(state == "READY" for state in states.values()), detail


async def readiness(endpoints: Sequence[TritonEndpoint]) -> tuple[bool, dict[str, Any]]:
    """Ready when at least one Triton is ready with every model it lists loaded. One server's detail is shown
    flat (``triton``: its status, ``models``: their states); several servers' by URL."""
    results = await asyncio.gather(*(server_readiness(e) for e in endpoints))
    ready = any(ok for ok, _ in results)
    if len(endpoints) == 1:
        detail = dict(results[0][1])
        return ready, {"triton": detail.pop("status"), "models": {}, **detail}
    return ready, {"triton": {e.url: detail for e, (_, detail) in zip(endpoints, results, strict=True)}}
