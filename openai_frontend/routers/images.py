"""``POST /v1/images/generations`` and ``/v1/images/edits``: parse the request, have the image service generate,
answer with the files as URLs or base64."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from openai_frontend.context import Ctx, FrontendContext
from openai_frontend.errors import OpenAIError, invalid
from openai_frontend.forms import parse_fields, read_multipart
from openai_frontend.schemas.images import ImageData, ImageEditRequest, ImageGenerationRequest, ImagesResponse
from openai_frontend.services import images
from openai_frontend.triton import cancel_on_disconnect

router = APIRouter()
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


async def _respond(
    request: Request, ctx: FrontendContext, job: images.ImageJob, response_format: str | None
) -> ImagesResponse:
    """Generate (cancelled when the client leaves or the request times out), then answer with the files."""
    generated = await cancel_on_disconnect(request, images.generate(ctx, job), ctx.settings.request_timeout)
    if response_format == "b64_json":
        encoded = await images.as_base64(generated)
        data = [ImageData(b64_json=b64, seed=seed) for b64, seed in zip(encoded, generated.seeds, strict=True)]
    else:
        keys = await images.store(ctx, generated)
        urls = [ctx.media_url(key, request) for key in keys]
        data = [ImageData(url=url, seed=seed) for url, seed in zip(urls, generated.seeds, strict=True)]
    params = job.params
    return ImagesResponse(
        created=int(time.time()), data=data, output_format=params.output_format, size=f"{params.width}x{params.height}"
    )


@router.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(body: ImageGenerationRequest, request: Request, ctx: Ctx) -> ImagesResponse:
    return await _respond(request, ctx, await images.generation_job(ctx, body), body.response_format)


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
    uploads = files.get("image", []) + files.get("image[]", [])
    if not uploads:
        raise invalid("image is required: upload the image to edit as a file part", "image")
    if len(uploads) > 1:
        raise invalid(f"send one image to edit, got {len(uploads)}", "image")
    masks = files.get("mask", [])
    if len(masks) > 1:
        raise invalid("send at most one mask", "mask")
    body = parse_fields(ImageEditRequest, fields)
    job = await images.edit_job(ctx, body, uploads[0], masks[0] if masks else None)
    return await _respond(request, ctx, job, body.response_format)
