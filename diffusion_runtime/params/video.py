"""Text-to-video and image-to-video requests: size, duration, frame count, fps, steps, guidance, seed.

Frame counts: Wan-class models need ``num_frames = frame_step * k + 1`` (4k+1: the VAE compresses time by 4 and
keeps the first frame). When ``num_frames`` is not given it is derived from ``seconds * fps`` and rounded to
the nearest count the model accepts (never below the smallest); an explicit ``num_frames`` that the model
cannot produce is an error naming the nearest valid counts, rather than a silent change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.params.common import (
    check_dimension,
    check_number,
    check_range,
    check_seed,
    check_text,
    int_in_range,
    limits_from_parameters,
    number_in_range,
)


@dataclass(frozen=True)
class VideoLimits:
    """What one video model accepts. Defaults suit Wan2.1; config.pbtxt parameters override."""

    size_multiple: int = 16
    min_size: int = 16
    max_size: int = 1920
    default_width: int = 832
    default_height: int = 480
    frame_step: int = 4
    min_frames: int = 5
    max_frames: int = 161
    default_fps: int = 16
    max_fps: int = 60
    default_seconds: float = 4.0
    max_seconds: float = 20.0
    default_steps: int = 50
    max_steps: int = 200
    default_guidance_scale: float = 5.0
    max_guidance_scale: float = 50.0
    max_prompt_chars: int = 10_000

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> VideoLimits:
        return limits_from_parameters(cls, parameters)

    def valid_frame_count(self, frames: int) -> bool:
        return self.min_frames <= frames <= self.max_frames and (frames - 1) % self.frame_step == 0

    def frames_for(self, seconds: float, fps: int) -> int:
        """``seconds * fps`` rounded to the nearest valid count within bounds."""
        k = round((seconds * fps - 1) / self.frame_step)
        frames = self.frame_step * k + 1
        lowest = self.min_frames + (-(self.min_frames - 1)) % self.frame_step
        highest = self.max_frames - (self.max_frames - 1) % self.frame_step
        return max(lowest, min(highest, frames))


@dataclass(frozen=True)
class VideoParams:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    seed: int

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


def parse_seconds(value: object, limits: VideoLimits) -> float:
    """OpenAI sends ``seconds`` as a string ("4"); the seed's curl as a number. Both are accepted."""
    if value is None:
        return limits.default_seconds
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidRequest(f"seconds must be a number of seconds such as '4', got {value!r}", "seconds") from None
    seconds = check_number(value, "seconds")
    if seconds <= 0:
        raise InvalidRequest(f"seconds must be positive, got {value}", "seconds")
    check_range(seconds, 0, limits.max_seconds, "seconds")
    return seconds


def validate_video_params(
    limits: VideoLimits,
    *,
    prompt: object,
    negative_prompt: object = None,
    width: object = None,
    height: object = None,
    seconds: object = None,
    num_frames: object = None,
    fps: object = None,
    num_inference_steps: object = None,
    guidance_scale: object = None,
    seed: object = None,
) -> VideoParams:
    """Check every field against ``limits`` and fill defaults; ``None`` means "not given"."""
    prompt_text = check_text(prompt, "prompt", limits.max_prompt_chars, required=True)
    negative = check_text(negative_prompt, "negative_prompt", limits.max_prompt_chars, required=False) or None
    w = check_dimension(limits.default_width if width is None else width, "width", limits)
    h = check_dimension(limits.default_height if height is None else height, "height", limits)
    frame_rate = int_in_range(fps, limits.default_fps, 1, limits.max_fps, "fps")
    if num_frames is None:
        frames = limits.frames_for(parse_seconds(seconds, limits), frame_rate)
    else:
        frames = int_in_range(num_frames, 0, 1, limits.max_frames, "num_frames")
        if not limits.valid_frame_count(frames):
            below = frames - (frames - 1) % limits.frame_step
            raise InvalidRequest(
                f"num_frames must be {limits.frame_step}k+1 between {limits.min_frames} and {limits.max_frames} "
                f"for this model (e.g. {max(below, limits.min_frames)} or {below + limits.frame_step}), got {frames}",
                "num_frames",
            )
    steps = int_in_range(num_inference_steps, limits.default_steps, 1, limits.max_steps, "num_inference_steps")
    guidance = number_in_range(
        guidance_scale, limits.default_guidance_scale, 0.0, limits.max_guidance_scale, "guidance_scale"
    )
    assert prompt_text is not None
    return VideoParams(
        prompt=prompt_text,
        negative_prompt=negative,
        width=w,
        height=h,
        num_frames=frames,
        fps=frame_rate,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=check_seed(seed),
    )


VIDEO_MODES = ("t2v", "i2v")


def check_video_mode(mode: str, has_image: bool, model: str = "this model") -> None:
    """t2v models refuse a conditioning image; i2v models need one."""
    if mode not in VIDEO_MODES:
        raise ValueError(f"video_mode must be one of {VIDEO_MODES}, got {mode!r}")
    if mode == "i2v" and not has_image:
        raise InvalidRequest(f"{model} makes videos from an image: send input_reference", "input_reference")
    if mode == "t2v" and has_image:
        raise InvalidRequest(f"{model} makes videos from text only; it takes no input_reference", "input_reference")
