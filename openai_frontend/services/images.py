"""Image generation and editing: one validated request per call to the image model, its files stored or
base64-encoded in threads so the event loop never waits on them."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffusion_runtime.contract import IMAGE
from diffusion_runtime.media import CONTENT_TYPES, decode_input_image
from diffusion_runtime.params import ImageLimits, ImageParams, parse_size, validate_image_params
from openai_frontend.context import FrontendContext
from openai_frontend.schemas.images import ImageGenerationRequest
from openai_frontend.storage import new_media_key, new_request_id
from openai_frontend.triton import ServedModel

OUTPUTS = ["IMAGES", "SEEDS"]


@dataclass(frozen=True)
class ImageJob:
    """One validated request: the model it goes to, its settings, and the model's input tensors."""

    model: ServedModel
    params: ImageParams
    inputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class GeneratedImages:
    job: ImageJob
    files: list[bytes]  # encoded in the job's output format
    seeds: list[int]


def image_inputs(params: ImageParams, **edit: Any) -> dict[str, np.ndarray]:
    """The model's input tensors for one request (``edit``: the ``image``, ``mask`` and ``strength`` of an edit)."""
    return IMAGE.request_tensors(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt or None,
        height=params.height,
        width=params.width,
        n=params.n,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        seed=params.seed,
        output_format=params.output_format,
        output_compression=params.output_compression,
        **edit,
    )


def _validated(body: ImageGenerationRequest, model: ServedModel, size: tuple[int, int]) -> ImageParams:
    return validate_image_params(
        model.image_limits,
        prompt=body.prompt,
        negative_prompt=body.knob("negative_prompt"),
        width=size[0],
        height=size[1],
        n=body.n,
        num_inference_steps=body.knob("num_inference_steps"),
        guidance_scale=body.knob("guidance_scale"),
        seed=body.knob("seed"),
        output_format=body.output_format,
        output_compression=body.output_compression,
        strength=body.knob("strength"),
    )


async def generation_job(ctx: FrontendContext, body: ImageGenerationRequest) -> ImageJob:
    model = await ctx.backend.resolve(body.model, "image")
    params = _validated(body, model, parse_size(body.size, model.image_limits))
    return ImageJob(model, params, image_inputs(params))


def _uploads_size(image: bytes, mask: bytes | None, size: str | None, limits: ImageLimits) -> tuple[int, int]:
    """Check the uploads by decoding each once, and the output size: an explicit ``size``, or (``auto``/none)
    the input image's own, rounded down to the model's multiple. The model decodes the files again itself."""
    width, height = decode_input_image(image, "image").size  # as RGB, as the model reads it
    if mask is not None:
        decode_input_image(mask, "mask", mode=None)
    if size is not None and size.strip().lower() != "auto":
        return parse_size(size, limits)
    step = limits.size_multiple
    clamp = lambda v: max(limits.min_size, min(limits.max_size, v // step * step))  # noqa: E731
    return clamp(width), clamp(height)


async def edit_job(ctx: FrontendContext, body: ImageGenerationRequest, image: bytes, mask: bytes | None) -> ImageJob:
    model = await ctx.backend.resolve(body.model, "image")
    size = await asyncio.to_thread(_uploads_size, image, mask, body.size, model.image_limits)
    params = _validated(body, model, size)
    return ImageJob(model, params, image_inputs(params, image=image, mask=mask, strength=params.strength))


async def generate(ctx: FrontendContext, job: ImageJob) -> GeneratedImages:
    """The model's files and the seed of each; cancelling this cancels the Triton request."""
    outputs = await ctx.backend.infer(job.model, job.inputs, OUTPUTS)
    files = [bytes(item) for item in outputs["IMAGES"].reshape(-1)]
    ctx.metrics.images.labels(job.model.id).inc(len(files))
    return GeneratedImages(job, files, [int(seed) for seed in outputs["SEEDS"].reshape(-1)])


async def as_base64(images: GeneratedImages) -> list[str]:
    return await asyncio.to_thread(lambda: [base64.b64encode(f).decode("ascii") for f in images.files])


async def store(ctx: FrontendContext, images: GeneratedImages) -> list[str]:
    """Store the files under new keys (in a thread: a store may be S3) and return the keys."""
    output_format = images.job.params.output_format
    request_id = new_request_id()
    keys = [new_media_key("images", request_id, i, output_format) for i in range(len(images.files))]
    content_type = CONTENT_TYPES[output_format]

    def put_all() -> None:
        for key, data in zip(keys, images.files, strict=True):
            ctx.storage.put(key, data, content_type)

    await asyncio.to_thread(put_all)
    return keys
