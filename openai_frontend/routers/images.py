"""``POST /v1/images/generations``: validate, call the image model through Triton, publish the files."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from diffusion_runtime.contract import IMAGE
from diffusion_runtime.media import CONTENT_TYPES, decode_input_image
from diffusion_runtime.params import ImageLimits, ImageParams, parse_size, validate_image_params
from openai_frontend.context import Ctx, FrontendContext
from openai_frontend.errors import OpenAIError, invalid
from openai_frontend.forms import parse_fields, read_multipart
from openai_frontend.schemas.images import ImageData, ImageEditRequest, ImageGenerationRequest, ImagesResponse
from openai_frontend.storage import new_media_key, new_request_id
from openai_frontend.triton import ServedModel, cancel_on_disconnect

router = APIRouter()
OUTPUTS = ["IMAGES", "SEEDS"]
INLINE_BASE64_BYTES = 64 * 1024
EDIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "mask": {"type": "string", "format": "binary"},
                        "prompt": {"type": "string"},
                        "model": {"type": "string"},
                        "n": {"type": "string"},
                        "size": {"type": "string"},
                        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                    },
                }
            }
        },
    }
}


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


async def _generate(
    request: Request,
    ctx: FrontendContext,
    model: ServedModel,
    params: ImageParams,
    inputs: dict[str, np.ndarray],
    response_format: str | None,
) -> ImagesResponse:
    """Call the model and hand back its files as URLs (stored) or base64, off the event loop."""
    outputs = await cancel_on_disconnect(
        request, ctx.backend.infer(model, inputs, OUTPUTS), ctx.settings.request_timeout
    )
    files = [bytes(item) for item in outputs["IMAGES"].reshape(-1)]
    seeds = [int(seed) for seed in outputs["SEEDS"].reshape(-1)]
    if response_format == "b64_json":
        encode = lambda: [base64.b64encode(f).decode("ascii") for f in files]  # noqa: E731
        # A thread hop costs more than base64 of a small file (~1 GB/s); large ones stay off the event loop.
        encoded = encode() if sum(map(len, files)) <= INLINE_BASE64_BYTES else await asyncio.to_thread(encode)
        data = [ImageData(b64_json=b64, seed=seed) for b64, seed in zip(encoded, seeds, strict=True)]
    else:
        request_id = new_request_id()
        keys = [new_media_key("images", request_id, i, params.output_format) for i in range(len(files))]
        content_type = CONTENT_TYPES[params.output_format]

        def store() -> None:
            for key, data in zip(keys, files, strict=True):
                ctx.storage.put(key, data, content_type)

        await asyncio.to_thread(store)
        data = [ImageData(url=ctx.media_url(key, request), seed=seed) for key, seed in zip(keys, seeds, strict=True)]
    ctx.metrics.images.labels(model.id).inc(len(files))
    return ImagesResponse(
        created=int(time.time()), data=data, output_format=params.output_format, size=f"{params.width}x{params.height}"
    )


@router.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(body: ImageGenerationRequest, request: Request, ctx: Ctx) -> ImagesResponse:
    model = await ctx.backend.resolve(body.model, "image")
    params = _validated(body, model, parse_size(body.size, model.image_limits))
    return await _generate(request, ctx, model, params, image_inputs(params), body.response_format)


def _edit_size(size: str | None, image: bytes, limits: ImageLimits) -> tuple[int, int]:
    """An explicit size, or (``auto``/none) the input image's own, rounded down to the model's multiple."""
    if size is not None and size.strip().lower() != "auto":
        return parse_size(size, limits)
    width, height = decode_input_image(image, "image", mode=None).size
    step = limits.size_multiple
    clamp = lambda v: max(limits.min_size, min(limits.max_size, v // step * step))  # noqa: E731
    return clamp(width), clamp(height)


@router.post(
    "/v1/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    openapi_extra=EDIT_BODY,
)
async def edit_image(request: Request, ctx: Ctx) -> ImagesResponse:
    """OpenAI's multipart edit: one ``image`` (or ``image[]``) part, an optional ``mask`` (transparent = repaint),
    the generation fields as strings. Files are checked by content, never by name or declared type."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise OpenAIError(415, "image edits are sent as multipart/form-data, as the OpenAI SDK does")
    fields, files = await read_multipart(request, {"image", "image[]", "mask"})
    images = files.get("image", []) + files.get("image[]", [])
    if not images:
        raise invalid("image is required: upload the image to edit as a file part", "image")
    if len(images) > 1:
        raise invalid(f"send one image to edit, got {len(images)}", "image")
    masks = files.get("mask", [])
    if len(masks) > 1:
        raise invalid("send at most one mask", "mask")
    body = parse_fields(ImageEditRequest, fields)
    model = await ctx.backend.resolve(body.model, "image")
    size = await asyncio.to_thread(_edit_size, body.size, images[0], model.image_limits)
    params = _validated(body, model, size)
    await asyncio.to_thread(decode_input_image, images[0], "image")
    if masks:
        await asyncio.to_thread(decode_input_image, masks[0], "mask", None)
    inputs = image_inputs(params, image=images[0], mask=masks[0] if masks else None, strength=params.strength)
    return await _generate(request, ctx, model, params, inputs, body.response_format)
