"""The frontend's view of Triton: which models it serves under which OpenAI ids, readiness, and inference.

Speaks gRPC (``tritonclient.grpc.aio``) because only gRPC carries cancellation: when a caller's task is
cancelled, the gRPC call is cancelled and Triton marks the request cancelled for the model to see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np
import tritonclient.grpc.aio as grpcclient
from fastapi import Request
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from diffusion_runtime.params import ImageLimits, VideoLimits
from openai_frontend.errors import OpenAIError, from_triton_error

log = logging.getLogger(__name__)

TASKS = ("image", "video", "text")
_REFRESH_SECONDS = 5.0
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
    return ServedModel(
        id=model_id, triton_name=name, task=task, parameters=parameters, created=loaded_at, instances=max(1, instances)
    )


class TritonBackend:
    def __init__(self, url: str, metrics_url: str | None = None) -> None:
        self.url = url
        self.metrics_url = metrics_url
        self._client = grpcclient.InferenceServerClient(url=url)
        self._models: dict[str, ServedModel] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._started = int(time.time())

    async def close(self) -> None:
        await self._client.close()

    async def _refresh(self) -> None:
        index = await self._client.get_model_repository_index(as_json=True)
        models: dict[str, ServedModel] = {}
        for entry in index.get("models", []):
            if entry.get("state") != "READY":
                continue
            config = (await self._client.get_model_config(entry["name"], as_json=True)).get("config", {})
            served = _served_model(entry["name"], config, self._started)
            if served is not None:
                models[served.id] = served
        self._models = models
        self._fetched_at = time.monotonic()

    async def models(self, *, max_age: float = _REFRESH_SECONDS) -> list[ServedModel]:
        async with self._lock:
            if time.monotonic() - self._fetched_at > max_age:
                try:
                    await self._refresh()
                except InferenceServerException as exc:
                    raise OpenAIError(503, f"the inference server is unavailable: {exc.message()}") from exc
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
        """Ready when Triton is and every model it lists is loaded, with at least one served."""
        try:
            if not await self._client.is_server_ready():
                return False, {"triton": "not ready"}
            index = await self._client.get_model_repository_index(as_json=True)
        except InferenceServerException as exc:
            return False, {"triton": f"unreachable: {exc.message()}"}
        states = {m["name"]: m.get("state", "UNKNOWN") for m in index.get("models", [])}
        ready = bool(states) and all(state == "READY" for state in states.values())
        return ready, {"triton": "ready", "models": states}

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
        early (the consumer was cancelled) cancels the gRPC stream, which Triton reports to the model."""

        async def request() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": model.triton_name,
                "inputs": self._tensors(inputs),
                "outputs": [grpcclient.InferRequestedOutput(name) for name in outputs],
            }

        responses = self._client.stream_infer(request())
        try:
            async for result, error in responses:
                if error is not None:
                    raise from_triton_error(error)
                present = {}
                for name in outputs:
                    value = result.as_numpy(name)
                    if value is not None:
                        present[name] = value
                yield present
                if is_final(present):
                    return
            raise OpenAIError(500, "the model's response stream ended without a final response")
        except InferenceServerException as exc:
            raise from_triton_error(exc) from exc
        finally:
            responses.cancel()  # a no-op for Triton once the final response was sent

    async def infer(
        self, model: ServedModel, inputs: Mapping[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        try:
            result = await self._client.infer(model.triton_name, self._tensors(inputs), outputs=requested)
        except InferenceServerException as exc:
            raise from_triton_error(exc) from exc
        return {name: result.as_numpy(name) for name in outputs}

    async def metrics_text(self) -> str:
        if not self.metrics_url:
            return ""
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(self.metrics_url)
            return response.text if response.status_code == 200 else ""
        except httpx.HTTPError:
            return ""


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
