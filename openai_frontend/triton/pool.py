"""The pool of tritonservers the frontend sends work to: which one takes a call, and moving on when one fails.

Speaks gRPC (``tritonclient.grpc.aio``) because only gRPC carries cancellation: when a caller's task is
cancelled, the gRPC call is cancelled and Triton marks the request cancelled for the model to see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from openai_frontend.errors import Failure, OpenAIError, failure_error, model_unavailable, queue_full
from openai_frontend.triton.discovery import ServedModel, served_models
from openai_frontend.triton.endpoint import TritonEndpoint
from openai_frontend.triton.failures import TritonFailure, as_triton_error, classify, openai_error
from openai_frontend.triton.metrics import metrics_text
from openai_frontend.triton.readiness import readiness
from openai_frontend.triton.recovery import RELOAD_INTERVAL_S, ModelReloader
from openai_frontend.triton.targets import ServerSet

log = logging.getLogger(__name__)

_REFRESH_SECONDS = 5.0
DNS_REFRESH_S = 10.0  # how often a dns: target's name is resolved again (and at once after a failure behind it)
T = TypeVar("T")


def infer_inputs(arrays: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """tritonclient's input tensors for a request's arrays (one class serves its sync and asyncio gRPC clients)."""
    tensors = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


class TritonBackend:
    """One or several tritonservers serving the same models. Each call goes to the least busy server that is
    not marked down; a server that cannot be reached is marked down for ``retry_after`` seconds and the call
    moves on to the next, so users see no error while another server can take the request.

    The servers are the ``urls``, each one server, or for a ``dns:///host:port`` URL every address the name
    resolves to, resolved again every ``dns_refresh_s`` seconds (see ``targets``)."""

    def __init__(
        self,
        urls: Sequence[str],
        metrics_urls: Sequence[str | None] = (),
        retry_after: float = 2.0,
        reload_interval: float = RELOAD_INTERVAL_S,
        dns_refresh_s: float = DNS_REFRESH_S,
    ) -> None:
        if not urls:
            raise ValueError("at least one Triton URL is needed")
        self.servers = ServerSet(urls, metrics_urls, dns_refresh_s)
        self.retry_after = retry_after
        self.reloader = ModelReloader(reload_interval)
        self._models: dict[str, ServedModel] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._started = int(time.time())
        self._turn = 0

    @property
    def endpoints(self) -> list[TritonEndpoint]:
        return self.servers.endpoints

    async def close(self) -> None:
        await self.servers.close()

    def _order(self) -> list[TritonEndpoint]:
        """Servers to try, best first: up before down, then fewest calls in flight, ties taken in turn."""
        now = time.monotonic()
        self._turn += 1
        count = len(self.endpoints)
        rotated = [self.endpoints[(self._turn + i) % count] for i in range(count)]
        return sorted(rotated, key=lambda e: (e.down_until > now, e.in_flight))

    def _model_failed(self, endpoint: TritonEndpoint, model: str, message: str, sent_at: float) -> None:
        self.reloader.model_failed(endpoint, model, message, sent_at)

    async def _call(
        self,
        work: Callable[[grpcclient.InferenceServerClient], Awaitable[T]],
        model: str | None = None,
        capacity: int | None = None,
    ) -> T:
        """``work`` on the best server, moving on to the next when one is unreachable, has a full queue (at
        ``capacity`` calls to ``model`` here, or refused by Triton), or (for calls that name their Triton
        ``model``) has lost that model's stub process or is reloading the model."""
        await self.servers.refresh()
        last: TritonFailure | None = None
        full = False
        order = self._order()
        if not order:
            raise failure_error(Failure.SERVER_UNAVAILABLE, f"{self.servers.names()} resolves to no server")
        for endpoint in order:
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
            except (InferenceServerException, grpc.RpcError) as exc:
                failed = last = classify(as_triton_error(exc))
                if failed.failure is Failure.SERVER_UNAVAILABLE:
                    log.warning("Triton at %s is unreachable; trying another server", endpoint.url)
                    endpoint.down_until = time.monotonic() + self.retry_after
                    endpoint.restarted()
                    self.servers.lost(endpoint)
                    continue
                if failed.failure is Failure.QUEUE_FULL:
                    continue
                if model is not None and failed.failure is Failure.MODEL_DOWN:
                    self._model_failed(endpoint, model, failed.message, sent_at)
                    continue
                raise failed.error() from exc
            finally:
                endpoint.in_flight -= 1
                endpoint.model_in_flight[model or ""] -= 1
        if last is not None:
            raise last.error()
        if full:
            raise queue_full()
        raise model_unavailable("its process in the inference server died and it is being reloaded")

    async def _refresh(self) -> None:
        """Every reachable server's models: servers may serve different ones (e.g. one Kubernetes Service per
        model kind), and each remembers its own so that a call goes only where its model is."""

        async def fetch_from(endpoint: TritonEndpoint) -> dict[str, ServedModel] | None:
            if endpoint.down_until > time.monotonic():
                return None
            try:
                models = await served_models(endpoint.client, self._started)
            except (InferenceServerException, grpc.RpcError):
                return None
            endpoint.served = frozenset(m.triton_name for m in models.values())
            return models

        await self.servers.refresh()
        found = [m for m in await asyncio.gather(*(fetch_from(e) for e in self.endpoints)) if m is not None]
        if found:
            self._models = {name: model for models in found for name, model in models.items()}
        else:  # none answered: one more try through the failover path, which raises the right error
            self._models = await self._call(lambda client: served_models(client, self._started))
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

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        await self.servers.refresh()
        return await readiness(self.endpoints)

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
                "inputs": infer_inputs(inputs),
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
                    failed = classify(error)
                    if failed.failure is Failure.MODEL_DOWN:
                        client, sent_at = served_by[-1]
                        endpoint = next((e for e in self.endpoints if e.client is client), None)
                        if endpoint is not None:  # else no longer resolved: nothing to reload there
                            self._model_failed(endpoint, model.triton_name, failed.message, sent_at)
                    raise failed.error()
        except (InferenceServerException, grpc.RpcError) as exc:
            raise openai_error(as_triton_error(exc)) from exc
        finally:
            if not complete:  # the consumer left early (client gone, job deleted): Triton tells the model
                responses.cancel()

    async def infer(
        self, model: ServedModel, inputs: Mapping[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]

        async def call(client: grpcclient.InferenceServerClient):
            return await client.infer(model.triton_name, infer_inputs(inputs), outputs=requested)

        result = await self._call(call, model.triton_name, model.capacity)
        return {name: result.as_numpy(name) for name in outputs}

    async def metrics_text(self) -> str:
        await self.servers.refresh()
        return await metrics_text(self.endpoints)
