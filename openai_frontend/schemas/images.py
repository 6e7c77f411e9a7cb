"""Wire shapes of ``/v1/images/*``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from openai_frontend.schemas.common import KnobsFromNvExt


class ImageNvExt(BaseModel):
    """Generation knobs outside OpenAI's API, as the seed's clients send them (also accepted top level)."""

    model_config = ConfigDict(extra="allow")

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    negative_prompt: StrictStr | None = None
    strength: float | None = None


class ImageGenerationRequest(KnobsFromNvExt):
    prompt: StrictStr
    model: StrictStr | None = None
    n: int | None = Field(default=None, description="Images to generate (1-10)")
    size: StrictStr | None = Field(default=None, description="WIDTHxHEIGHT, e.g. 1024x1024, or auto")
    response_format: Literal["url", "b64_json"] | None = None
    output_format: StrictStr | None = None
    output_compression: int | None = None
    quality: StrictStr | None = None
    style: StrictStr | None = None
    background: StrictStr | None = None
    moderation: StrictStr | None = None
    user: StrictStr | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    negative_prompt: StrictStr | None = None
    strength: float | None = Field(default=None, description="Edits only: how far to move from the input (0-1]")
    nvext: ImageNvExt | None = None


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str | None = None
    size: str | None = None


class ImageEditRequest(ImageGenerationRequest):
    """The text fields of a multipart edit: the same as a generation's, all strings on the wire (pydantic's lax
    mode reads ``"2"`` as 2); ``strength`` (default from the model's config) applies here."""
