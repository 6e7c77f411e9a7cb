"""Which Triton models the frontend serves, under which OpenAI ids, read from each model's config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import tritonclient.grpc.aio as grpcclient

from diffusion_runtime.params import ImageLimits, VideoLimits

TASKS = ("image", "video", "text")


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


def served_model(name: str, config: Mapping[str, Any], loaded_at: int) -> ServedModel | None:
    """The model a Triton config describes, or None for a model that is no generation task of ours."""
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


async def served_models(client: grpcclient.InferenceServerClient, loaded_at: int) -> dict[str, ServedModel]:
    """The ready models of one server that serve a task, by OpenAI id."""
    index = await client.get_model_repository_index(as_json=True)
    models: dict[str, ServedModel] = {}
    for entry in index.get("models", []):
        if entry.get("state") != "READY":
            continue
        config = (await client.get_model_config(entry["name"], as_json=True)).get("config", {})
        served = served_model(entry["name"], config, loaded_at)
        if served is not None:
            models[served.id] = served
    return models
