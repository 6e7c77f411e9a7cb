"""The SGLang engine: ``DiffGenerator`` (its own scheduler and GPU worker processes) driven from the stub.

What SGLang does not give us, and how it is made up for here:
- ``num_outputs_per_prompt > 1`` returns nothing with SGLang's diffusers backend, so ``n`` images are ``n``
  calls with seeds ``seed, seed+1, ...`` — the same seeds-per-image rule as the diffusers engine.
- Failures are logged and swallowed (``generate`` returns None or fewer results), so counts are checked.
- The denoising loop runs in SGLang's worker process with no step callback, so cancellation is honoured
  before each image rather than between steps.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from diffusion_runtime.engines.base import EngineConfig, StepHook
from diffusion_runtime.errors import EngineFailure
from diffusion_runtime.media import to_uint8_hwc
from diffusion_runtime.params import ImageParams

log = logging.getLogger(__name__)


def generator_kwargs(config: EngineConfig) -> dict[str, Any]:
    """``DiffGenerator.from_pretrained`` kwargs for a config (kept separate so it can be unit-tested)."""
    kwargs: dict[str, Any] = {
        "model_path": config.model_path,
        "backend": config.sglang_backend,
        "num_gpus": config.num_gpus,
    }
    if config.sglang_model_id:
        kwargs["model_id"] = config.sglang_model_id
    if config.sglang_attention_backend:
        kwargs["attention_backend"] = config.sglang_attention_backend
    if config.sglang_sleep_on_idle:
        kwargs["sleep_on_idle"] = True
    if config.sglang_args:
        extra = json.loads(config.sglang_args)
        if not isinstance(extra, dict):
            raise ValueError("sglang_args must be a JSON object")
        kwargs.update(extra)
    return kwargs


def first_frame(result: Any) -> np.ndarray:
    """An image from a ``GenerationResult``: ``frames`` is a list of HWC arrays, ``samples`` HWC or THWC."""
    frames = getattr(result, "frames", None)
    if frames is not None and len(frames) > 0:
        return to_uint8_hwc(np.asarray(frames[0]))
    samples = getattr(result, "samples", None)
    if samples is None:
        raise EngineFailure("SGLang returned a result without pixels")
    array = np.asarray(samples.cpu() if hasattr(samples, "cpu") else samples)
    while array.ndim > 3:
        array = array[0]
    return to_uint8_hwc(array)


class SGLangImageEngine:
    name = "sglang"

    def __init__(self, config: EngineConfig) -> None:
        from sglang.multimodal_gen import DiffGenerator

        self.config = config
        kwargs = generator_kwargs(config)
        log.info("starting SGLang DiffGenerator: %s", kwargs)
        self.generator = DiffGenerator.from_pretrained(**kwargs)

    def _one(self, params: ImageParams, seed: int) -> np.ndarray:
        sampling: dict[str, Any] = {
            "prompt": params.prompt,
            "height": params.height,
            "width": params.width,
            "num_inference_steps": params.num_inference_steps,
            "guidance_scale": params.guidance_scale,
            "seed": seed,
            "num_outputs_per_prompt": 1,
            "save_output": False,
            "return_frames": True,
        }
        if params.negative_prompt:
            sampling["negative_prompt"] = params.negative_prompt
        result = self.generator.generate(sampling_params_kwargs=sampling)
        if isinstance(result, list):
            if len(result) != 1:
                raise EngineFailure(f"SGLang returned {len(result)} results for one image")
            result = result[0]
        if result is None:
            raise EngineFailure("SGLang generated nothing (its error is in the tritonserver log)")
        return first_frame(result)

    def generate(self, params: ImageParams, on_step: StepHook) -> list[np.ndarray]:
        steps = params.num_inference_steps
        images = []
        for index, seed in enumerate(params.seeds):
            on_step(index * steps, params.n * steps)
            images.append(self._one(params, seed))
        on_step(params.n * steps, params.n * steps)
        return images

    def close(self) -> None:
        generator, self.generator = getattr(self, "generator", None), None
        if generator is not None:
            generator.shutdown()
