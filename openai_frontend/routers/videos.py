"""``/v1/videos``: OpenAI's video job API, and the seed's blocking create (a body with ``response_format``)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from diffusion_runtime.media import decode_input_image, video_previews
from diffusion_runtime.params import VideoParams, parse_size, validate_video_params
from diffusion_runtime.params.video import check_video_mode
from openai_frontend.context import Ctx, FrontendContext
from openai_frontend.errors import OpenAIError, invalid
from openai_frontend.forms import MAX_UPLOAD_BYTES, parse_fields, read_multipart
from openai_frontend.responses import JSONResponse
from openai_frontend.schemas.common import inline_json_schema
from openai_frontend.schemas.videos import VideoCreateRequest, VideoDeleted, VideoList, VideoObject
from openai_frontend.triton import ServedModel, cancel_on_disconnect
from openai_frontend.video_jobs import PENDING, VARIANTS, VideoJob, is_video_id, media_key, new_video_id

router = APIRouter()
# A blocking create answers with the status the job's failure deserves, as a synchronous call would.
FAILED_JOB_STATUS = {
    "invalid_value": 400,
    "cancelled": 499,
    "queue_full": 429,
    "model_unavailable": 503,
    "storage_unavailable": 503,
    "triton_unavailable": 503,
    "timeout": 504,
}

_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_json_schema(VideoCreateRequest)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {"type": "string"},
                        "model": {"type": "string"},
                        "seconds": {"type": "string"},
                        "size": {"type": "string"},
                        "input_reference": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


async def _read_create_request(request: Request) -> tuple[VideoCreateRequest, bytes | None]:
    """Multipart (SDK, AIPerf) or JSON (the seed's curl) → the request and the reference image's bytes."""
    content_type = request.headers.get("content-type", "")
    image: bytes | None = None
    if content_type.startswith("multipart/form-data"):
        data, files = await read_multipart(request, {"input_reference"})
        if len(files.get("input_reference", [])) > 1:
            raise invalid("send one input_reference image", "input_reference")
        image = files["input_reference"][0] if files.get("input_reference") else None
    elif content_type.startswith("application/json") or not content_type:
        try:
            data = await request.json()
        except ValueError as exc:
            raise invalid("the request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise invalid("the request body must be a JSON object")
    else:
        raise OpenAIError(415, f"unsupported content type '{content_type}'; send JSON or multipart/form-data")
    body = parse_fields(VideoCreateRequest, data)
    if body.input_reference is not None:
        image = _decode_data_url(body.input_reference)
    return body, image


def _decode_data_url(value: str) -> bytes:
    payload = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    if value.startswith(("http://", "https://")):
        raise invalid("input_reference URLs are not fetched; upload the file or send a data URL", "input_reference")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid("input_reference must be an image file, a data URL or base64", "input_reference") from exc


def _seconds_label(body: VideoCreateRequest, params: VideoParams) -> str:
    if body.seconds is not None:
        return str(body.seconds).strip() if isinstance(body.seconds, str) else f"{body.seconds:g}"
    return f"{params.seconds:g}"


async def _validated(body: VideoCreateRequest, image: bytes | None, model: ServedModel) -> VideoParams:
    limits = model.video_limits
    width, height = parse_size(body.size, limits)
    params = validate_video_params(
        limits,
        prompt=body.prompt,
        negative_prompt=body.knob("negative_prompt"),
        width=width,
        height=height,
        seconds=body.seconds,
        num_frames=body.knob("num_frames"),
        fps=body.knob("fps"),
        num_inference_steps=body.knob("num_inference_steps"),
        guidance_scale=body.knob("guidance_scale"),
        seed=body.knob("seed"),
    )
    check_video_mode(model.parameters.get("video_mode", "t2v"), image is not None, f"the model '{model.id}'")
    if image is not None:
        if len(image) > MAX_UPLOAD_BYTES:
            raise OpenAIError(413, f"input_reference is larger than {MAX_UPLOAD_BYTES} bytes", param="input_reference")
        await asyncio.to_thread(decode_input_image, image, "input_reference")
    return params


def _poll_headers(job: VideoJob, ctx: FrontendContext) -> dict[str, str]:
    return {"openai-poll-after-ms": str(ctx.settings.video_poll_ms)} if job.status in PENDING else {}


async def _job_or_404(video_id: str, ctx: FrontendContext) -> VideoJob:
    job = await ctx.video_jobs.store.get(video_id) if is_video_id(video_id) else None
    if job is None:
        raise OpenAIError(404, f"no video with id '{video_id}'", param="video_id", code="not_found")
    return job


async def _blocking_result(request: Request, ctx: FrontendContext, job: VideoJob, response_format: str) -> JSONResponse:
    """The seed's form: wait for the job and answer with the finished video object and its data."""
    try:
        finished, video = await cancel_on_disconnect(request, ctx.video_jobs.wait(job.id), ctx.settings.request_timeout)
    except OpenAIError:
        await ctx.video_jobs.abandon(job.id, "cancelled", "the client went away")
        raise
    if finished is None:
        raise OpenAIError(404, f"the video '{job.id}' was deleted while it was generated", code="not_found")
    if finished.status != "completed" or not finished.media_key:
        error = finished.error or {}
        status = FAILED_JOB_STATUS.get(error.get("code", ""), 500)
        raise OpenAIError(
            status,
            f"video generation failed: {error.get('message', 'unknown error')}",
            code=error.get("code", "generation_failed"),
        )
    body = finished.to_object()
    if response_format == "b64_json":
        if video is None:  # completed by another frontend (this one took over or followed it): from storage
            video = await asyncio.to_thread(ctx.storage.get, finished.media_key)
        encoded = await asyncio.to_thread(base64.b64encode, video or b"")  # megabytes: off the event loop
        body["data"] = [{"b64_json": encoded.decode("ascii")}]
    else:
        body["data"] = [{"url": ctx.media_url(finished.media_key, request)}]
    return JSONResponse(body)


@router.post("/v1/videos", response_model=VideoObject, openapi_extra=_CREATE_BODY)
async def create_video(request: Request, ctx: Ctx) -> JSONResponse:
    body, image = await _read_create_request(request)
    model = await ctx.backend.resolve(body.model, "video")
    params = await _validated(body, image, model)
    job = VideoJob(
        id=new_video_id(),
        model=model.id,
        status="queued",
        progress=0,
        created_at=int(time.time()),
        seconds=_seconds_label(body, params),
        size=f"{params.width}x{params.height}",
        prompt=params.prompt,
        params={
            "seed": params.seed,
            "num_frames": params.num_frames,
            "fps": params.fps,
            "num_inference_steps": params.num_inference_steps,
            "guidance_scale": params.guidance_scale,
            "image_to_video": image is not None,
        },
    )
    await ctx.video_jobs.submit(job, model, params, image)
    if body.response_format is not None:
        return await _blocking_result(request, ctx, job, body.response_format)
    return JSONResponse(job.to_object(), headers=_poll_headers(job, ctx))


@router.get("/v1/videos", response_model=VideoList)
async def list_videos(
    ctx: Ctx,
    after: str | None = None,
    limit: int = Query(default=20, ge=1, le=100),
    order: str = Query(default="desc", pattern="^(asc|desc)$"),
) -> VideoList:
    if after is not None and (not is_video_id(after) or await ctx.video_jobs.store.get(after) is None):
        raise OpenAIError(404, f"no video with id '{after}' to list after", param="after", code="not_found")
    jobs, has_more = await ctx.video_jobs.store.list(after, limit, order)
    data = [VideoObject.model_validate(job.to_object()) for job in jobs]
    return VideoList(
        data=data, first_id=jobs[0].id if jobs else None, last_id=jobs[-1].id if jobs else None, has_more=has_more
    )


@router.get("/v1/videos/{video_id}", response_model=VideoObject)
async def get_video(video_id: str, ctx: Ctx) -> JSONResponse:
    job = await _job_or_404(video_id, ctx)
    return JSONResponse(job.to_object(), headers=_poll_headers(job, ctx))


@router.get("/v1/videos/{video_id}/content", response_class=Response)
async def get_video_content(video_id: str, ctx: Ctx, variant: str = "video") -> Response:
    job = await _job_or_404(video_id, ctx)
    if job.status != "completed" or not job.media_key:
        raise OpenAIError(
            404,
            f"the video '{video_id}' is {job.status}; its content exists once it is completed",
            param="video_id",
            code="not_ready",
        )
    if variant not in VARIANTS:
        raise invalid(f"variant must be one of {', '.join(VARIANTS)}, got '{variant}'", "variant")
    key, media_type = media_key(job.id, variant), VARIANTS[variant]
    data = await asyncio.to_thread(ctx.storage.get, key)
    if data is None and variant != "video":
        data = await _make_previews(ctx, job.id, variant)
    if data is None:
        raise OpenAIError(404, f"the file of video '{video_id}' is missing from storage", code="not_found")
    # Always the variant's own type, whatever Accept says: the SDK sends application/binary and AIPerf checks it.
    filename = f"{video_id}{'.mp4' if variant == 'video' else '-' + key.rsplit('/', 1)[1]}"
    return Response(data, media_type=media_type, headers={"content-disposition": f'attachment; filename="{filename}"'})


async def _make_previews(ctx: FrontendContext, job_id: str, variant: str) -> bytes | None:
    """Thumbnail and spritesheet are made from the stored MP4 the first time either is asked for, then kept."""
    video = await asyncio.to_thread(ctx.storage.get, media_key(job_id, "video"))
    if video is None:
        return None
    thumbnail, spritesheet = await asyncio.to_thread(video_previews, video)

    def store() -> None:
        ctx.storage.put(media_key(job_id, "thumbnail"), thumbnail, VARIANTS["thumbnail"])
        ctx.storage.put(media_key(job_id, "spritesheet"), spritesheet, VARIANTS["spritesheet"])

    await asyncio.to_thread(store)
    return thumbnail if variant == "thumbnail" else spritesheet


@router.delete("/v1/videos/{video_id}", response_model=VideoDeleted)
async def delete_video(video_id: str, ctx: Ctx) -> VideoDeleted:
    job = await _job_or_404(video_id, ctx)
    # The record goes first: a frontend running the job elsewhere sees that at its next denoising step and stops.
    await ctx.video_jobs.store.delete(job.id)
    await ctx.video_jobs.cancel(job.id)  # a job running here stops now; its model sees the cancellation
    for variant in VARIANTS:
        await asyncio.to_thread(ctx.storage.delete, media_key(job.id, variant))
    return VideoDeleted(id=job.id)
