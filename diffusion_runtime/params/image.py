"""Text-to-image (and image edit) requests: sizes, counts, steps, guidance, seeds, output formats."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.params.common import (
    check_dimension,
    check_seed,
    check_text,
    int_in_range,
    limits_from_parameters,
    number_in_range,
)

OUTPUT_FORMATS = ("png", "jpeg", "webp")
_FORMAT_ALIASES = {"jpg": "jpeg"}
_SIZE_RE = re.compile(r"^\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*$")


@dataclass(frozen=True)
class ImageLimits:
    """What one image model accepts. Defaults suit FLUX-class models; config.pbtxt parameters override."""

    size_multiple: int = 16
    min_size: int = 16
    max_size: int = 2048
    default_width: int = 1024
    default_height: int = 1024
    max_images: int = 10
    default_steps: int = 28
    max_steps: int = 200
    default_guidance_scale: float = 3.5
    max_guidance_scale: float = 50.0
    max_prompt_chars: int = 10_000
    default_edit_strength: float = 0.8  # image edits: how far from the input image the result may move

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> ImageLimits:
        return limits_from_parameters(cls, parameters)


@dataclass(frozen=True)
class ImageParams:
    """A validated text-to-image request. ``seed`` is the base seed: image ``i`` uses ``seed + i``."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    n: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    output_format: str
    output_compression: int
    strength: float = 1.0  # image edits only (0 keeps the input, 1 ignores it); text-to-image ignores it

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]


def parse_size(size: str | None, limits: ImageLimits) -> tuple[int, int]:
    """``"WxH"`` (or None/``"auto"`` for the model's default) to ``(width, height)``; bounds checked later."""
    if size is None or (isinstance(size, str) and size.strip().lower() == "auto"):
        return limits.default_width, limits.default_height
    if not isinstance(size, str) or not (m := _SIZE_RE.match(size)):
        raise InvalidRequest(f"size must look like '1024x1024' (WIDTHxHEIGHT), got {size!r}", "size")
    return int(m.group(1)), int(m.group(2))


def normalize_output_format(value: object) -> str:
    fmt = str(value).strip().lower() if value is not None else "png"
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {value!r}", "output_format"
        )
    return fmt


def validate_image_params(
    limits: ImageLimits,
    *,
    prompt: object,
    negative_prompt: object = None,
    width: object = None,
    height: object = None,
    n: object = None,
    num_inference_steps: object = None,
    guidance_scale: object = None,
    seed: object = None,
    output_format: object = None,
    output_compression: object = None,
    strength: object = None,
) -> ImageParams:
    """Check every field against ``limits`` and fill defaults; ``None`` means "not given"."""
    prompt_text = check_text(prompt, "prompt", limits.max_prompt_chars, required=True)
    negative = check_text(negative_prompt, "negative_prompt", limits.max_prompt_chars, required=False) or None
    w = check_dimension(limits.default_width if width is None else width, "width", limits)
    h = check_dimension(limits.default_height if height is None else height, "height", limits)
    count = int_in_range(n, 1, 1, limits.max_images, "n")
    steps = int_in_range(num_inference_steps, limits.default_steps, 1, limits.max_steps, "num_inference_steps")
    guidance = number_in_range(
        guidance_scale, limits.default_guidance_scale, 0.0, limits.max_guidance_scale, "guidance_scale"
    )
    base_seed = check_seed(seed, headroom=limits.max_images)
    fmt = normalize_output_format(output_format)
    compression = int_in_range(output_compression, 100, 0, 100, "output_compression")
    edit_strength = number_in_range(strength, limits.default_edit_strength, 0.0, 1.0, "strength")
    if edit_strength == 0.0:
        raise InvalidRequest("strength must be above 0 (0 would return the input image unchanged)", "strength")
    assert prompt_text is not None
    return ImageParams(
        prompt=prompt_text,
        negative_prompt=negative,
        width=w,
        height=h,
        n=count,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=base_seed,
        output_format=fmt,
        output_compression=compression,
        strength=edit_strength,
    )
