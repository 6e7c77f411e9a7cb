"""The portable engine: a ``diffusers`` pipeline in this process, on CPU or GPU."""

from __future__ import annotations

import inspect
import logging

import numpy as np

from diffusion_runtime.engines.base import EngineConfig, StepHook
from diffusion_runtime.errors import EngineFailure
from diffusion_runtime.media import to_uint8_hwc
from diffusion_runtime.params import ImageParams

log = logging.getLogger(__name__)


def load_pipeline(config: EngineConfig):
    import torch
    from diffusers import DiffusionPipeline

    torch.set_grad_enabled(False)
    pipe = DiffusionPipeline.from_pretrained(config.model_path, torch_dtype=config.torch_dtype())
    pipe.to(config.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded_generators(seeds: list[int]):
    """One CPU generator per output: noise is drawn on the CPU, so a seed gives the same image on any device
    and image ``i`` of a batch equals a single generation with ``seeds[i]``."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def step_callback(on_step: StepHook, total: int):
    """Adapt a ``StepHook`` to diffusers' ``callback_on_step_end`` (which must return a dict)."""

    def callback(_pipe, step_index: int, _timestep, _kwargs):
        on_step(step_index + 1, total)
        return {}

    return callback


class DiffusersImageEngine:
    name = "diffusers"

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pipe = load_pipeline(config)
        self._call_params = set(inspect.signature(self.pipe.__call__).parameters)

    def generate(self, params: ImageParams, on_step: StepHook) -> list[np.ndarray]:
        import torch

        on_step(0, params.num_inference_steps)  # a request cancelled while queued stops before any work
        kwargs = dict(
            prompt=params.prompt,
            height=params.height,
            width=params.width,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            num_images_per_prompt=params.n,
            generator=seeded_generators(params.seeds),
            output_type="np",
            callback_on_step_end=step_callback(on_step, params.num_inference_steps),
        )
        if params.negative_prompt and "negative_prompt" in self._call_params:
            kwargs["negative_prompt"] = params.negative_prompt
        with torch.inference_mode():
            images = self.pipe(**kwargs).images
        if len(images) != params.n:
            raise EngineFailure(f"the pipeline returned {len(images)} images, {params.n} were asked for")
        return [to_uint8_hwc(image) for image in images]

    def close(self) -> None:
        self.pipe = None
