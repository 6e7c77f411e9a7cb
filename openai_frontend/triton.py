"""The frontend's view of Triton: which models it serves under which OpenAI ids, readiness, inference, and
bringing back a model whose process died.

Speaks gRPC (``tritonclient.grpc.aio``) because only gRPC carries cancellation: when a caller's task is
cancelled, the gRPC call is cancelled and Triton marks the request cancelled for the model to see.

Recovery: Triton 2.51 does not restart a Python model's stub process that died (or froze, which stops its
health heartbeat); the model answers "Stub process ... is not healthy" until it is reloaded, and Triton keeps
calling it READY. The first such answer marks the model down on that server and starts one reload there
through Triton's repository API (``load_model``; the server runs with ``--model-control-mode=explicit``, see
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
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np
import tritonclient.grpc.aio as grpcclient
from fastapi import Request
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from diffusion_runtime.params import ImageLimits, VideoLimits
from openai_frontend.errors import OpenAIError, from_triton_error, model_unavailable, queue_full, stub_died

log = logging.getLogger(__name__)

TASKS = ("image", "video", "text")
_REFRESH_SECONDS = 5.0
RELOAD_INTERVAL_S = 10.0  # the least time between two reloads of one model on one server
_RELOAD_MAX_INTERVAL_S = 300.0  # the most, after reloads that keep failing
_RELOAD_TIMEOUT_S = 900.0  # a real checkpoint can take minutes to load onto GPUs
RELOAD_PARAMETER = "reload_count"  # config parameter raised by each reload (models ignore it)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(.+)$")
T = TypeVar("T")


@dataclass(frozen=True)
class ServedModel:
    """A Triton model as the OpenAI API shows it. ``id`` is the name clients send as ``model``."""

    id: str
    triton_name: str
    task: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    created: int = 0
    instances: int = 1  # model instances Triton runs: how many generations can proceed at once
    # Calls the frontend lets wait per server beyond one running per instance, for a model Triton does not
    # bound itself (no dynamic batcher, see image_diffusion's config); None: Triton's own queue bound applies.
    max_queue_size: int | None = None

    @property
    def capacity(self) -> int | None:
        """Calls this frontend may have open to the model on one server; beyond them the answer is 429."""
        return None if self.max_queue_size is None else self.instances + self.max_queue_size

    @property
    def video_limits(self) -> VideoLimits:
        return VideoLimits.from_parameters(self.parameters)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits.from_parameters(self.parameters)


def _served_model(name: str, config: Mapping[str, Any], loaded_at: int) -> ServedModel | None:
    parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    task = parameters.get("task", "")
    if task not in TASKS:
        return None
    model_id = parameters.get("served_model_name") or parameters.get("model_path") or name
    instances = sum(
        int(group.get("count", 1)) * max(1, len(group.get("gpus", []))) for group in config.get("instance_group", [])
    )
    queue = parameters.get("max_queue_size", "").strip()
    return ServedModel(
        id=model_id,
        triton_name=name,
        task=task,
        parameters=parameters,
        created=loaded_at,
        instances=max(1, instances),
        max_queue_size=int(queue) if queue and "dynamic_batching" not in config else None,
    )


def _server_unreachable(exc: InferenceServerException) -> bool:
    """Errors that say the server (not the request) is the problem: try another server."""
    status = str(exc.status() or "")
    message = (exc.message() or "").lower()
    return ("UNAVAILABLE" in status and "queue" not in message) or "failed to connect" in message


def _model_control_refused(exc: InferenceServerException) -> bool:
    """The server was not started with ``--model-control-mode=explicit``: it cannot reload a model."""
    return "not allowed" in (exc.message() or "")


def _queue_full(exc: InferenceServerException) -> bool:
    return "queue" in (exc.message() or "").lower() and "UNAVAILABLE" in str(exc.status() or "")


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel options plus a short reconnect backoff: gRPC's default backs off up to 120 s
    between connection attempts, so a restarted tritonserver would stay unreachable for up to two minutes."""
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


@dataclass
class TritonEndpoint:
    """One tritonserver. ``in_flight`` counts this frontend's open calls to it (the load-balancing signal);
    after a connection failure the server is skipped until ``down_until``. ``failed_models`` holds the models
    whose stub process died there (Triton's error, with its message), until a reload brings them back, one
    answers again, or the server restarts; ``reloads`` the reload of each that is under way."""

    url: str
    metrics_url: str | None
    client: grpcclient.InferenceServerClient
    in_flight: int = 0
    model_in_flight: Counter[str] = field(default_factory=Counter)
    down_until: float = 0.0
    failed_models: dict[str, str] = field(default_factory=dict)
    reloads: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    reload_started: dict[str, float] = field(default_factory=dict)  # model → when its last reload began
    reloaded_at: dict[str, float] = field(default_factory=dict)  # model → when its last reload succeeded
    model_control: bool = True  # False once the server refused to reload a model (no explicit model control)
    served: frozenset[str] | None = None  # Triton names of the models it serves, once read (servers may differ)

    def reloading(self, model: str) -> bool:
        task = self.reloads.get(model)
        return task is not None and not task.done()

    def restarted(self) -> None:
        """The server could not be reached: one that comes back starts new model processes in its own mode."""
        self.failed_models.clear()
        self.model_control = True


class TritonBackend:
    """One or several tritonservers serving the same models. Each call goes to the least busy server that is
    not marked down; a server that cannot be reached is marked down for ``retry_after`` seconds and the call
    moves on to the next, so users see no error while another server can take the request."""

    def __init__(
        self,
        urls: Sequence[str],
        metrics_urls: Sequence[str | None] = (),
        retry_after: float = 2.0,
        reload_interval: float = RELOAD_INTERVAL_S,
    ) -> None:
        if not urls:
            raise ValueError("at least one Triton URL is needed")
        metrics = list(metrics_urls) + [None] * (len(urls) - len(metrics_urls))
        self.endpoints = [
            TritonEndpoint(url, metrics_url, grpcclient.InferenceServerClient(url=url, channel_args=channel_args()))
            for url, metrics_url in zip(urls, metrics, strict=True)
        ]
        self.retry_after = retry_after
        self.reload_interval = reload_interval
        self._models: dict[str, ServedModel] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._started = int(time.time())
        self._turn = 0

    async def close(self) -> None:
        for endpoint in self.endpoints:
            for task in endpoint.reloads.values():
                task.cancel()
            await endpoint.client.close()

    def _order(self) -> list[TritonEndpoint]:
        """Servers to try, best first: up before down, then fewest calls in flight, ties taken in turn."""
        now = time.monotonic()
        self._turn += 1
        count = len(self.endpoints)
        rotated = [self.endpoints[(self._turn + i) % count] for i in range(count)]
        return sorted(rotated, key=lambda e: (e.down_until > now, e.in_flight))

    def _model_failed(self, endpoint: TritonEndpoint, model: str, message: str, sent_at: float) -> None:
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
                config = await self._config_for_reload(endpoint.client, model)
                await endpoint.client.load_model(model, config=config, client_timeout=_RELOAD_TIMEOUT_S)
            except InferenceServerException as exc:
                if _model_control_refused(exc):
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
                if _server_unreachable(exc):
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

    @staticmethod
    async def _config_for_reload(client: grpcclient.InferenceServerClient, model: str) -> str:
        """The model's config as Triton runs it, with ``RELOAD_PARAMETER`` one higher: a load that changes the
        config is a real reload, where one of an unchanged model is a no-op."""
        config = (await client.get_model_config(model, as_json=True))["config"]
        parameters = config.setdefault("parameters", {})
        previous = parameters.get(RELOAD_PARAMETER, {}).get("string_value", "")
        parameters[RELOAD_PARAMETER] = {"string_value": str(int(previous) + 1 if previous.isdigit() else 1)}
        return json.dumps(config)

    async def _call(
        self,
        work: Callable[[grpcclient.InferenceServerClient], Awaitable[T]],
        model: str | None = None,
        capacity: int | None = None,
    ) -> T:
        """``work`` on the best server, moving on to the next when one is unreachable, has a full queue (at
        ``capacity`` calls to ``model`` here, or refused by Triton), or (for calls that name their Triton
        ``model``) has lost that model's stub process or is reloading the model."""
        last: InferenceServerException | None = None
        full = False
        for endpoint in self._order():
            if model is not None and (endpoint.reloading(model) or model not in (endpoint.served or {model})):
                continue
            if model is not None and capacity is not None and endpoint.model_in_flight[model] >= capacity:
                full = True
                continue
            endpoint.in_flight += 1
            endpoint.model_in_flight[model or ""] += 1
            sent_at = time.monotonic()
            try:
                result = await work(endpoint.client)
                endpoint.down_until = 0.0
                if model is not None and not endpoint.reloading(model):
                    endpoint.failed_models.pop(model, None)  # e.g. the server was restarted by its supervisor
                return result
            except InferenceServerException as exc:
                last = exc
                if _server_unreachable(exc):
                    log.warning("Triton at %s is unreachable; trying another server", endpoint.url)
                    endpoint.down_until = time.monotonic() + self.retry_after
                    endpoint.restarted()
                    continue
                if _queue_full(exc):
                    continue
                if model is not None and stub_died(exc.message() or ""):
                    self._model_failed(endpoint, model, exc.message(), sent_at)
                    continue
                raise from_triton_error(exc) from exc
            finally:
                endpoint.in_flight -= 1
                endpoint.model_in_flight[model or ""] -= 1
        if last is not None:
            raise from_triton_error(last) from last
        if full:
            raise queue_full()
        raise model_unavailable("its process in the inference server died and it is being reloaded")

    async def _refresh(self) -> None:
        async def fetch(client: grpcclient.InferenceServerClient) -> dict[str, ServedModel]:
            index = await client.get_model_repository_index(as_json=True)
            models: dict[str, ServedModel] = {}
            for entry in index.get("models", []):
                if entry.get("state") != "READY":
                    continue
                config = (await client.get_model_config(entry["name"], as_json=True)).get("config", {})
                served = _served_model(entry["name"], config, self._started)
                if served is not None:
                    models[served.id] = served
            return models

        async def fetch_from(endpoint: TritonEndpoint) -> dict[str, ServedModel] | None:
            """One server's models (None when it cannot answer): servers may serve different models, e.g. one
            Kubernetes Service per model kind."""
            if endpoint.down_until > time.monotonic():
                return None
            try:
                models = await fetch(endpoint.client)
            except InferenceServerException:
                return None
            endpoint.served = frozenset(m.triton_name for m in models.values())
            return models

        found = [m for m in await asyncio.gather(*(fetch_from(e) for e in self.endpoints)) if m is not None]
        self._models = {k: v for models in found for k, v in models.items()} if found else await self._call(fetch)
        self._fetched_at = time.monotonic()

    async def models(self, *, max_age: float = _REFRESH_SECONDS) -> list[ServedModel]:
        async with self._lock:
            if time.monotonic() - self._fetched_at > max_age:
                await self._refresh()
        return list(self._models.values())

    async def resolve(self, model_id: str | None, task: str) -> ServedModel:
        """The served model for a request. Without ``model``, the only model of that task is used."""
        for max_age in (_REFRESH_SECONDS, 0.0):  # a miss re-reads Triton once: the model may have just loaded
            candidates = [m for m in await self.models(max_age=max_age) if m.task == task]
            if model_id is None and len(candidates) == 1:
                return candidates[0]
            for model in candidates:
                if model.id == model_id or model.triton_name == model_id:
                    return model
        served = ", ".join(sorted(m.id for m in candidates)) or "none"
        if model_id is None:
            raise OpenAIError(400, f"model is required (served {task} models: {served})", param="model")
        raise OpenAIError(
            404,
            f"the model '{model_id}' does not exist (served {task} models: {served})",
            param="model",
            code="model_not_found",
        )

    async def _server_readiness(self, endpoint: TritonEndpoint) -> tuple[bool, dict[str, Any]]:
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

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when at least one Triton is ready with every model it lists loaded."""
        results = await asyncio.gather(*(self._server_readiness(e) for e in self.endpoints))
        ready = any(ok for ok, _ in results)
        if len(self.endpoints) == 1:
            detail = dict(results[0][1])
            return ready, {"triton": detail.pop("status"), "models": {}, **detail}
        return ready, {"triton": {e.url: detail for e, (_, detail) in zip(self.endpoints, results, strict=True)}}

    @staticmethod
    def _tensors(inputs: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    async def stream(
        self,
        model: ServedModel,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        is_final: Callable[[dict[str, np.ndarray]], bool],
    ) -> AsyncIterator[dict[str, np.ndarray]]:
        """Responses of a decoupled model, until one ``is_final`` says ends the stream. Closing the iterator
        early (the consumer was cancelled) cancels the gRPC stream, which Triton reports to the model. A server
        that fails before its first response is skipped like in ``infer``."""

        async def request() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": model.triton_name,
                "inputs": self._tensors(inputs),
                "outputs": [grpcclient.InferRequestedOutput(name) for name in outputs],
            }

        async def first_response(client: grpcclient.InferenceServerClient):
            served_by.append((client, time.monotonic()))
            responses = client.stream_infer(request())
            try:
                result, error = await responses.__anext__()
            except StopAsyncIteration:
                raise OpenAIError(500, "the model's response stream ended without a response") from None
            except BaseException:  # no answer yet (server down, or our caller gave up): stop the request
                responses.cancel()
                raise
            if error is not None:  # the model's error response ends its request: nothing to cancel
                raise error
            return responses, result

        served_by: list[tuple[grpcclient.InferenceServerClient, float]] = []  # (server, when the call went)
        responses, result = await self._call(first_response, model.triton_name, model.capacity)
        complete = False  # once the model has ended the request, cancelling would only pin it in Triton
        try:
            while True:
                present = {}
                for name in outputs:
                    value = result.as_numpy(name)
                    if value is not None:
                        present[name] = value
                if is_final(present):
                    complete = True
                yield present
                if complete:
                    return
                try:
                    result, error = await responses.__anext__()
                except StopAsyncIteration:
                    complete = True
                    raise OpenAIError(500, "the model's response stream ended without a final response") from None
                if error is not None:
                    complete = True
                    if stub_died(error.message() or ""):
                        client, sent_at = served_by[-1]
                        endpoint = next(e for e in self.endpoints if e.client is client)
                        self._model_failed(endpoint, model.triton_name, error.message(), sent_at)
                    raise from_triton_error(error)
        except InferenceServerException as exc:
            raise from_triton_error(exc) from exc
        finally:
            if not complete:  # the consumer left early (client gone, job deleted): Triton tells the model
                responses.cancel()

    async def infer(
        self, model: ServedModel, inputs: Mapping[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]

        async def call(client: grpcclient.InferenceServerClient):
            return await client.infer(model.triton_name, self._tensors(inputs), outputs=requested)

        result = await self._call(call, model.triton_name, model.capacity)
        return {name: result.as_numpy(name) for name in outputs}

    async def metrics_text(self) -> str:
        """Each server's Prometheus text; with several servers every sample gets a ``triton`` label."""
        urls = [e.metrics_url for e in self.endpoints]
        async with httpx.AsyncClient(timeout=5.0) as client:
            texts = await asyncio.gather(*(_fetch_text(client, url) for url in urls))
        if len(self.endpoints) == 1:
            return texts[0]
        return _label_samples([(e.url, text) for e, text in zip(self.endpoints, texts, strict=True) if text])


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


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T], timeout: float | None) -> T:
    """Run ``work`` until it finishes, the client disconnects, or ``timeout`` passes; the latter two cancel it
    (and with it the Triton request). The body must already have been read."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        if watcher in done:
            log.info("client disconnected; cancelled its generation")
            raise OpenAIError(499, "the client disconnected", code="cancelled")
        raise OpenAIError(504, f"the generation did not finish within {timeout:g} s", code="timeout")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
