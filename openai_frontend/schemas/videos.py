"""Wire shapes of ``/v1/videos``: OpenAI's job API plus the seed's blocking form (``response_format``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictStr

from openai_frontend.schemas.common import KnobsFromNvExt


class VideoNvExt(BaseModel):
    model_config = ConfigDict(extra="allow")

    fps: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    negative_prompt: StrictStr | None = None


class VideoCreateRequest(KnobsFromNvExt):
    """Arrives as JSON (the seed's curl) or multipart/form-data (the OpenAI SDK, AIPerf), where every field is
    a string; pydantic's lax mode turns ``"17"`` into 17. ``input_reference`` in JSON is a data URL or base64;
    in multipart it is a file part (read separately)."""

    prompt: StrictStr
    model: StrictStr | None = None
    seconds: StrictStr | float | None = None
    size: StrictStr | None = None
    input_reference: StrictStr | None = None
    response_format: Literal["url", "b64_json"] | None = None
    user: StrictStr | None = None
    fps: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    negative_prompt: StrictStr | None = None
    nvext: VideoNvExt | None = None


class VideoError(BaseModel):
    code: str
    message: str


class VideoData(BaseModel):
    url: str | None = None
    b64_json: str | None = None


class VideoObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    seconds: str
    size: str
    error: VideoError | None = None
    data: list[VideoData] | None = None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True
