"""The portable engine: a ``diffusers`` pipeline in this process, on CPU or GPU."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from diffusion_runtime.engines.base import EngineConfig, StepHook, check_video
from diffusion_runtime.engines.diffusers_speed import apply_speed_settings, reset_step_cache, to_uint8_images
from diffusion_runtime.errors import EngineFailure, InvalidRequest
from diffusion_runtime.media import to_uint8_hwc, to_uint8_video
from diffusion_runtime.params import ImageParams, VideoParams

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


def load_pipeline(config: EngineConfig):
    import torch
    from diffusers import DiffusionPipeline

    torch.set_grad_enabled(False)
    if config.cpu_threads > 0 and config.device == "cpu":
        # Instances sharing the cores: OpenMP threads that outnumber the cores spin against each other (observed:
        # two tiny-FLUX instances with 2 threads each on 2 cores made 5x fewer images than with 1 thread each).
        torch.set_num_threads(config.cpu_threads)
    pipe = DiffusionPipeline.from_pretrained(config.model_path, torch_dtype=config.torch_dtype())
    pipe.to(config.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded_generators(seeds: list[int]):
    """One CPU generator per output: noise is drawn on the CPU, so a seed gives the same image on any device
    and image ``i`` of a batch is the picture a single generation with ``seeds[i]`` gives (batched matrix products
    may round the last float bits differently, so a pixel may differ by one level)."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def step_callback(on_step: StepHook, total: int):
    """Adapt a ``StepHook`` to diffusers' ``callback_on_step_end`` (which must return a dict)."""

    def callback(_pipe, step_index: int, _timestep, _kwargs):
        on_step(step_index + 1, total)
        return {}

    return callback


class _DiffusersEngine:
    """What every diffusers engine does around the pipeline call: load once, report step 0 (so a request
    cancelled while queued stops before any work), step callbacks, seeds, and options the pipeline lacks."""

    name = "diffusers"

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pipe = load_pipeline(config)
        self._call_params = set(inspect.signature(self.pipe.__call__).parameters)

    def _run(
        self,
        on_step: StepHook,
        *,
        steps: int,
        seeds: list[int],
        negative_prompt: str | None,
        pipe: Any = None,
        output_type: str = "np",
        **kwargs: Any,
    ) -> Any:
        import torch

        pipe = pipe or self.pipe
        on_step(0, steps)
        if self.config.step_cache:
            reset_step_cache(pipe)
        kwargs.update(
            num_inference_steps=steps,
            generator=seeded_generators(seeds),
            output_type=output_type,
            callback_on_step_end=step_callback(on_step, steps),
        )
        if negative_prompt and "negative_prompt" in inspect.signature(pipe.__call__).parameters:
            kwargs["negative_prompt"] = negative_prompt
        with torch.inference_mode():
            return pipe(**kwargs)

    def close(self) -> None:
        self.pipe = None


class DiffusersImageEngine(_DiffusersEngine):
    """Text-to-image, and edits: an input image (image-to-image) or an image and a mask (inpainting) go to the
    matching pipeline built from the loaded one with ``from_pipe`` (same weights, same compiled transformer, no
    extra memory). The speed settings (``diffusers_speed``) are applied once, here."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        apply_speed_settings(self.pipe, config)
        self._edit_pipes: dict[bool, Any] = {}

    def _edit_pipe(self, masked: bool) -> Any:
        if masked not in self._edit_pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForInpainting if masked else AutoPipelineForImage2Image
            try:
                pipe = auto.from_pipe(self.pipe)
            except (ValueError, KeyError) as exc:
                kind = "inpainting" if masked else "image-to-image"
                raise InvalidRequest(f"this model has no {kind} pipeline: {exc}", "image") from exc
            pipe.set_progress_bar_config(disable=True)
            self._edit_pipes[masked] = pipe
        return self._edit_pipes[masked]

    def generate(
        self,
        params: ImageParams,
        on_step: StepHook,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> list[np.ndarray]:
        edit: dict[str, Any] = {}
        if image is not None:
            edit = {"pipe": self._edit_pipe(mask is not None), "image": image, "strength": params.strength}
            if mask is not None:
                edit["mask_image"] = mask
        images = self._run(
            on_step,
            steps=params.num_inference_steps,
            seeds=params.seeds,
            negative_prompt=params.negative_prompt,
            prompt=params.prompt,
            height=params.height,
            width=params.width,
            guidance_scale=params.guidance_scale,
            num_images_per_prompt=params.n,
            output_type="pt" if self.config.pixels_on_device else "np",
            **edit,
        ).images
        if len(images) != params.n:
            raise EngineFailure(f"the pipeline returned {len(images)} images, {params.n} were asked for")
        if self.config.pixels_on_device:
            return to_uint8_images(images)
        return [to_uint8_hwc(image) for image in images]


class DiffusersVideoEngine(_DiffusersEngine):
    """Wan-class text-to-video (``WanPipeline``) or image-to-video (``WanImageToVideoPipeline``): which one is
    the checkpoint's ``model_index.json`` choice, through ``DiffusionPipeline``."""

    def __init__(self, config: EngineConfig) -> None:
        if config.speed_settings():
            raise ValueError(f"{', '.join(config.speed_settings())}: image-model settings only, so far")
        super().__init__(config)

    def generate(self, params: VideoParams, image: Image.Image | None, on_step: StepHook) -> np.ndarray:
        extra: dict[str, Any] = {}
        if image is not None:
            if "image" not in self._call_params:
                raise EngineFailure(f"{type(self.pipe).__name__} does not take an input image (a text-to-video model)")
            extra["image"] = image
        videos = self._run(
            on_step,
            steps=params.num_inference_steps,
            seeds=[params.seed],
            negative_prompt=params.negative_prompt,
            prompt=params.prompt,
            height=params.height,
            width=params.width,
            num_frames=params.num_frames,
            guidance_scale=params.guidance_scale,
            **extra,
        ).frames
        if len(videos) != 1:
            raise EngineFailure(f"the pipeline returned {len(videos)} videos for one request")
        return check_video(to_uint8_video(videos[0]), params)
