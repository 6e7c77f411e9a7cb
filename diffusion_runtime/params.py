"""Request validation shared by the frontend and the Triton models.

The frontend validates before it calls Triton (so users get a 400 naming the field), and each model validates
the same way again, because Triton clients such as perf_analyzer reach the models without the frontend. The
rules live only here. Model-specific limits come from the model's ``config.pbtxt`` parameters
(``ImageLimits.from_parameters``), which the frontend reads from Triton so both sides agree.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields

from diffusion_runtime.errors import InvalidRequest

OUTPUT_FORMATS = ("png", "jpeg", "webp")
_FORMAT_ALIASES = {"jpg": "jpeg"}
SEED_MAX = 2**63 - 1
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

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> ImageLimits:
        """Read overrides such as ``max_size`` from a model's config parameters (strings); ignore other keys."""
        kwargs: dict[str, int | float] = {}
        for f in fields(cls):
            raw = parameters.get(f.name)
            if raw is None or str(raw).strip() == "":
                continue
            kwargs[f.name] = float(raw) if f.type == "float" else int(raw)
        return cls(**kwargs)


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


def _int(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InvalidRequest(f"{param} must be an integer, got {value!r}", param)
    return value


def _number(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{param} must be a number, got {value!r}", param)
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidRequest(f"{param} must be a finite number", param)
    return float(value)


def _in_range(value: int | float, low: int | float, high: int | float, param: str) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low} and {high}, got {value}", param)


def _prompt(value: object, param: str, limits: ImageLimits, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(f"{param} is required", param)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string", param)
    if required and not value.strip():
        raise InvalidRequest(f"{param} must not be empty", param)
    if len(value) > limits.max_prompt_chars:
        raise InvalidRequest(f"{param} is longer than {limits.max_prompt_chars} characters", param)
    return value


def check_dimension(value: object, param: str, limits: ImageLimits) -> int:
    value = _int(value, param)
    _in_range(value, limits.min_size, limits.max_size, param)
    if value % limits.size_multiple:
        raise InvalidRequest(f"{param} must be a multiple of {limits.size_multiple} for this model, got {value}", param)
    return value


def normalize_output_format(value: object) -> str:
    fmt = str(value).strip().lower() if value is not None else "png"
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {value!r}", "output_format"
        )
    return fmt


def random_seed() -> int:
    return secrets.randbelow(2**32)


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
) -> ImageParams:
    """Check every field against ``limits`` and fill defaults; ``None`` means "not given"."""
    prompt_text = _prompt(prompt, "prompt", limits, required=True)
    negative = _prompt(negative_prompt, "negative_prompt", limits, required=False) or None
    w = check_dimension(limits.default_width if width is None else width, "width", limits)
    h = check_dimension(limits.default_height if height is None else height, "height", limits)
    count = 1 if n is None else _int(n, "n")
    _in_range(count, 1, limits.max_images, "n")
    steps = limits.default_steps if num_inference_steps is None else _int(num_inference_steps, "num_inference_steps")
    _in_range(steps, 1, limits.max_steps, "num_inference_steps")
    guidance = limits.default_guidance_scale if guidance_scale is None else _number(guidance_scale, "guidance_scale")
    _in_range(guidance, 0.0, limits.max_guidance_scale, "guidance_scale")
    if seed is None:
        base_seed = random_seed()
    else:
        base_seed = _int(seed, "seed")
        _in_range(base_seed, 0, SEED_MAX - limits.max_images, "seed")
    fmt = normalize_output_format(output_format)
    compression = 100 if output_compression is None else _int(output_compression, "output_compression")
    _in_range(compression, 0, 100, "output_compression")
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
    )
