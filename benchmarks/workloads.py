"""What the benchmarks ask for: one request described once, turned into the bare engine's params, Triton's
input tensors and the OpenAI request body, so every path does exactly the same generation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusion_runtime.params import (
    ImageLimits,
    ImageParams,
    VideoLimits,
    VideoParams,
    validate_image_params,
    validate_video_params,
)

PERF_INPUTS = Path(__file__).resolve().parent / "perf_inputs"


def _scalar(entry: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = entry.get(name, default)
    if isinstance(value, list):
        return value[0] if value else default
    return value


@dataclass(frozen=True)
class ImageJob:
    prompt: str
    width: int = 64
    height: int = 64
    n: int = 1
    steps: int = 4
    seed: int = 42
    output_format: str = "png"
    output_compression: int | None = None
    guidance_scale: float | None = None

    @classmethod
    def from_perf_input(cls, entry: Mapping[str, Any]) -> ImageJob:
        """One entry of a perf_analyzer ``--input-data`` file (``benchmarks/perf_inputs/image_diffusion_*.json``)."""
        return cls(
            prompt=_scalar(entry, "PROMPT"),
            width=int(_scalar(entry, "WIDTH", 64)),
            height=int(_scalar(entry, "HEIGHT", 64)),
            n=int(_scalar(entry, "NUM_IMAGES", 1)),
            steps=int(_scalar(entry, "NUM_INFERENCE_STEPS", 4)),
            seed=int(_scalar(entry, "SEED", 42)),
            output_format=str(_scalar(entry, "OUTPUT_FORMAT", "png")),
            output_compression=_scalar(entry, "OUTPUT_COMPRESSION"),
            guidance_scale=_scalar(entry, "GUIDANCE_SCALE"),
        )

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height} n={self.n} {self.steps} steps {self.output_format}"

    def params(self, limits: ImageLimits) -> ImageParams:
        return validate_image_params(
            limits,
            prompt=self.prompt,
            width=self.width,
            height=self.height,
            n=self.n,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            output_format=self.output_format,
            output_compression=self.output_compression,
        )

    def openai_body(self, model: str) -> dict[str, Any]:
        """What the OpenAI SDK sends with ``extra_body={"seed": ..., "num_inference_steps": ...}``."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": self.prompt,
            "n": self.n,
            "size": f"{self.width}x{self.height}",
            "response_format": "b64_json",
            "output_format": self.output_format,
            "seed": self.seed,
            "num_inference_steps": self.steps,
        }
        if self.output_compression is not None:
            body["output_compression"] = self.output_compression
        if self.guidance_scale is not None:
            body["guidance_scale"] = self.guidance_scale
        return body


@dataclass(frozen=True)
class VideoJob:
    prompt: str
    width: int = 64
    height: int = 64
    num_frames: int = 9
    fps: int | None = 8  # None: the model's default
    steps: int = 4
    seed: int = 42
    negative_prompt: str | None = None
    guidance_scale: float | None = None

    @classmethod
    def from_perf_input(cls, entry: Mapping[str, Any]) -> VideoJob:
        return cls(
            prompt=_scalar(entry, "PROMPT"),
            width=int(_scalar(entry, "WIDTH", 64)),
            height=int(_scalar(entry, "HEIGHT", 64)),
            num_frames=int(_scalar(entry, "NUM_FRAMES", 9)),
            fps=int(_scalar(entry, "FPS", 8)),
            steps=int(_scalar(entry, "NUM_INFERENCE_STEPS", 4)),
            seed=int(_scalar(entry, "SEED", 42)),
            negative_prompt=_scalar(entry, "NEGATIVE_PROMPT"),
            guidance_scale=_scalar(entry, "GUIDANCE_SCALE"),
        )

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}x{self.num_frames} {self.steps} steps"

    def params(self, limits: VideoLimits) -> VideoParams:
        return validate_video_params(
            limits,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
            num_frames=self.num_frames,
            fps=self.fps,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
        )

    def openai_body(self, model: str) -> dict[str, Any]:
        """The seed's blocking form of ``POST /v1/videos`` (JSON with ``response_format``)."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": self.prompt,
            "size": f"{self.width}x{self.height}",
            "response_format": "b64_json",
            "num_frames": self.num_frames,
            "num_inference_steps": self.steps,
            "seed": self.seed,
        }
        if self.fps is not None:
            body["fps"] = self.fps
        if self.negative_prompt:
            body["negative_prompt"] = self.negative_prompt
        if self.guidance_scale is not None:
            body["guidance_scale"] = self.guidance_scale
        return body


@dataclass(frozen=True)
class TextJob:
    prompt: str
    max_tokens: int = 64
    block_length: int = 16
    seed: int = 1
    temperature: float = 0.0

    def params(self, limits: Any) -> Any:
        from diffusion_runtime.params.text import validate_text_params

        return validate_text_params(
            limits,
            prompt=self.prompt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=self.seed,
            block_length=self.block_length,
        )

    def openai_body(self, model: str, stream: bool) -> dict[str, Any]:
        return {
            "model": model,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "block_length": self.block_length,
            "stream": stream,
        }


def load_perf_input(name: str) -> list[dict[str, Any]]:
    return json.loads((PERF_INPUTS / name).read_text())["data"]


def image_load_jobs() -> list[ImageJob]:
    """The load test's request mix: the entries of ``image_diffusion_64.json`` in turn, as perf_analyzer sends."""
    return [ImageJob.from_perf_input(entry) for entry in load_perf_input("image_diffusion_64.json")]


def video_job() -> VideoJob:
    return VideoJob.from_perf_input(load_perf_input("video_generation_t2v.json")[0])
