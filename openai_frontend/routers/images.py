"""``POST /v1/images/generations``: validate, call the image model through Triton, publish the files."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
from fastapi import APIRouter, Request

from diffusion_runtime.media import CONTENT_TYPES
from diffusion_runtime.params import ImageParams, parse_size, validate_image_params
from openai_frontend.context import Ctx
from openai_frontend.schemas.images import ImageData, ImageGenerationRequest, ImagesResponse
from openai_frontend.storage import new_media_key, new_request_id
from openai_frontend.triton import cancel_on_disconnect

router = APIRouter()
OUTPUTS = ["IMAGES", "SEEDS"]


def image_inputs(params: ImageParams) -> dict[str, np.ndarray]:
    """The model's input tensors for one request (batch dimension 1)."""
    inputs = {
        "PROMPT": np.array([[params.prompt.encode("utf-8")]], dtype=np.object_),
        "HEIGHT": np.array([[params.height]], dtype=np.int32),
        "WIDTH": np.array([[params.width]], dtype=np.int32),
        "NUM_IMAGES": np.array([[params.n]], dtype=np.int32),
        "NUM_INFERENCE_STEPS": np.array([[params.num_inference_steps]], dtype=np.int32),
        "GUIDANCE_SCALE": np.array([[params.guidance_scale]], dtype=np.float32),
        "SEED": np.array([[params.seed]], dtype=np.int64),
        "OUTPUT_FORMAT": np.array([[params.output_format.encode()]], dtype=np.object_),
        "OUTPUT_COMPRESSION": np.array([[params.output_compression]], dtype=np.int32),
    }
    if params.negative_prompt:
        inputs["NEGATIVE_PROMPT"] = np.array([[params.negative_prompt.encode("utf-8")]], dtype=np.object_)
    return inputs


@router.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(body: ImageGenerationRequest, request: Request, ctx: Ctx) -> ImagesResponse:
    model = await ctx.backend.resolve(body.model, "image")
    limits = model.image_limits
    width, height = parse_size(body.size, limits)
    params = validate_image_params(
        limits,
        prompt=body.prompt,
        negative_prompt=body.knob("negative_prompt"),
        width=width,
        height=height,
        n=body.n,
        num_inference_steps=body.knob("num_inference_steps"),
        guidance_scale=body.knob("guidance_scale"),
        seed=body.knob("seed"),
        output_format=body.output_format,
        output_compression=body.output_compression,
    )
    outputs = await cancel_on_disconnect(
        request, ctx.backend.infer(model, image_inputs(params), OUTPUTS), ctx.settings.request_timeout
    )
    files = [bytes(item) for item in outputs["IMAGES"].reshape(-1)]
    seeds = [int(seed) for seed in outputs["SEEDS"].reshape(-1)]
    if body.response_format == "b64_json":
        encoded = await asyncio.to_thread(lambda: [base64.b64encode(f).decode("ascii") for f in files])
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
