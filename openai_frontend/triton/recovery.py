"""Bringing back a model whose Triton stub process died.

Triton 2.51 does not restart a Python model's stub process that died (or froze, which stops its health
heartbeat); the model answers "Stub process ... is not healthy" until it is reloaded, and Triton keeps calling it
READY. The first such answer marks the model down on that server and starts one reload there through Triton's
repository API (``load_model``; the server runs with ``--model-control-mode=explicit``, see
``diffusion_runtime.launcher.TritonServer``). Triton treats a load of a model whose files have not changed as
already done, so the reload hands Triton the model's own config with its ``reload_count`` parameter raised by
one, which makes it a change: Triton starts new stub processes and keeps the old copy answering until the new
one is ready (several frontends that reload at once raise it to the same count, and Triton loads it once).
While it reloads, requests for the model go to the other servers, or get 503 with Retry-After when none has
it; the mark is cleared once the reload succeeds. Reloads of a model on a server start at most every
``reload_interval`` seconds (the wait doubling while they fail). A server that refuses the repository API
(started without explicit model control) is logged and left to its supervisor: requests keep reaching it and
fail fast until it is restarted.

A model that hangs inside its own code while its process stays responsive is not reloaded: its requests end
with 504 at the request timeout, and a timeout cannot tell such a model from a slow one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from openai_frontend.triton.endpoint import TritonEndpoint
from openai_frontend.triton.failures import model_control_refused, server_unreachable

log = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 10.0  # the least time between two reloads of one model on one server
_RELOAD_MAX_INTERVAL_S = 300.0  # the most, after reloads that keep failing
_RELOAD_TIMEOUT_S = 900.0  # a real checkpoint can take minutes to load onto GPUs
RELOAD_PARAMETER = "reload_count"  # config parameter raised by each reload (models ignore it)


class ModelReloader:
    """Marks models down where their stub died and reloads each there, one reload at a time per model."""

    def __init__(self, reload_interval: float = RELOAD_INTERVAL_S) -> None:
        self.reload_interval = reload_interval

    def model_failed(self, endpoint: TritonEndpoint, model: str, message: str, sent_at: float) -> None:
        """A call sent at ``sent_at`` found ``model``'s stub process dead on ``endpoint``: mark the model down
        there and have it reloaded, unless the call went to the model a reload has since replaced."""
        if sent_at < endpoint.reloaded_at.get(model, -1.0):
            return
        if model not in endpoint.failed_models:
            log.error("model %s on Triton at %s is down: %s", model, endpoint.url, message)
            endpoint.failed_models[model] = message
        if endpoint.model_control and not endpoint.reloading(model):
            endpoint.reloads[model] = asyncio.create_task(self._reload(endpoint, model), name=f"reload {model}")

    async def _reload(self, endpoint: TritonEndpoint, model: str) -> None:
        """Reload ``model`` on ``endpoint`` until it is back: Triton loads a new copy (new stub processes) and
        serves it once ready. A reload starts no sooner than ``reload_interval`` after the last one began (at
        once the first time), and that wait doubles while reloads fail."""
        failures = 0
        while model in endpoint.failed_models:
            if (last := endpoint.reload_started.get(model)) is not None:
                wait = min(self.reload_interval * 2 ** max(failures - 1, 0), _RELOAD_MAX_INTERVAL_S)
                await asyncio.sleep(max(0.0, last + wait - time.monotonic()))
                if model not in endpoint.failed_models:  # the server was restarted meanwhile
                    return
            log.warning("reloading model %s on Triton at %s", model, endpoint.url)
            started = endpoint.reload_started[model] = time.monotonic()
            try:
                config = await config_for_reload(endpoint.client, model)
                await endpoint.client.load_model(model, config=config, client_timeout=_RELOAD_TIMEOUT_S)
            except InferenceServerException as exc:
                if model_control_refused(exc):
                    endpoint.model_control = False
                    log.error(
                        "Triton at %s cannot reload model %s (%s): start it with --model-control-mode=explicit "
                        "--load-model=* to have failed models reloaded; until tritonserver restarts, requests "
                        "for %s there fail",
                        endpoint.url,
                        model,
                        exc.message(),
                        model,
                    )
                    return
                if server_unreachable(exc):
                    endpoint.restarted()
                    return
                log.error("reloading model %s on Triton at %s failed: %s", model, endpoint.url, exc.message())
                failures += 1
            except Exception:  # a task nobody awaits: say what went wrong, and try again later
                log.exception("reloading model %s on Triton at %s failed", model, endpoint.url)
                failures += 1
            else:
                endpoint.reloaded_at[model] = time.monotonic()
                endpoint.failed_models.pop(model, None)
                seconds = time.monotonic() - started
                log.warning("model %s on Triton at %s is back: reloaded in %.1f s", model, endpoint.url, seconds)
                return


async def config_for_reload(client: grpcclient.InferenceServerClient, model: str) -> str:
    """The model's config as Triton runs it, with ``RELOAD_PARAMETER`` one higher: a load that changes the
    config is a real reload, where one of an unchanged model is a no-op."""
    config = (await client.get_model_config(model, as_json=True))["config"]
    parameters = config.setdefault("parameters", {})
    previous = parameters.get(RELOAD_PARAMETER, {}).get("string_value", "")
    parameters[RELOAD_PARAMETER] = {"string_value": str(int(previous) + 1 if previous.isdigit() else 1)}
    return json.dumps(config)
