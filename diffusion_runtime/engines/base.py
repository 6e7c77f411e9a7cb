"""The engine seam: what a model.py calls, whichever library does the denoising.

Engines are chosen per model by the ``engine`` parameter: ``sglang`` (SGLang's ``DiffGenerator``),
``diffusers`` (a plain ``DiffusionPipeline``, CPU or GPU), or ``auto`` — SGLang on a CUDA host where it
imports, diffusers otherwise, because SGLang's native path computes in bf16 on CPU and is far slower there.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from diffusion_runtime.errors import EngineFailure
from diffusion_runtime.params import ImageLimits, ImageParams, VideoParams

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

StepHook = Callable[[int, int], None]
"""Called after each denoising step with ``(steps_done, total_steps)``; may raise to stop the generation."""

ENGINES = ("auto", "sglang", "diffusers")
TORCH_COMPILE = ("off", "transformer", "blocks", "auto")
WARMUP = ("auto", "on", "off")
SPEED_SETTINGS = (
    "torch_compile",
    "compile_mode",
    "fuse_qkv_projections",
    "attention_backend",
    "pixels_on_device",
    "step_cache",
    "step_cache_args",
)


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings from a model's config parameters (see ``config.pbtxt``)."""

    model_path: str
    engine: str = "auto"
    device: str = "cpu"
    dtype: str = "auto"
    num_gpus: int = 1
    sglang_backend: str = "auto"
    sglang_model_id: str = ""
    sglang_attention_backend: str = ""
    sglang_sleep_on_idle: bool = False
    sglang_args: str = ""  # JSON object of further DiffGenerator.from_pretrained kwargs (tp_size, sp_degree, ...)
    cpu_threads: int = 0  # diffusers on a CPU: torch threads per instance; 0: torch's default (one per core)
    # Speed settings of image engines (config.pbtxt says what each does); the defaults are the plain eager engine.
    # off | transformer (whole module) | blocks (its repeated blocks, faster to compile) | auto (with_compile_resolved)
    torch_compile: str = "off"
    compile_mode: str = ""  # torch.compile's mode ("": torch's default), e.g. max-autotune-no-cudagraphs
    fuse_qkv_projections: bool = False
    attention_backend: str = ""  # diffusers' attention dispatcher backend ("": diffusers' default, native SDPA)
    pixels_on_device: bool = False  # diffusers: round to uint8 on the device, copy 1 byte per value to the host
    step_cache: str = ""  # "": exact; else a step-caching method (lossy, opt-in)
    step_cache_args: str = ""  # JSON object of the step-caching method's settings
    warmup: str = "auto"  # auto: on with torch_compile, attention_backend or step_cache (see warms_up)
    warmup_steps: int = 2

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], device: str) -> EngineConfig:
        def get(key: str, default: str) -> str:
            value = parameters.get(key, "")
            return value if value.strip() else default

        def flag(key: str) -> bool:
            return get(key, "false").strip().lower() in ("1", "true", "yes", "on")

        def choice(key: str, choices: tuple[str, ...]) -> str:
            value = get(key, choices[0]).strip().lower()
            if value not in choices:
                raise ValueError(f"{key} must be one of {choices}, got {value!r}")
            return value

        engine = choice("engine", ENGINES)
        step_cache = get("step_cache", "").strip().lower()
        config = cls(
            model_path=get("model_path", ""),
            engine=engine,
            device=device,
            dtype=get("dtype", "auto"),
            num_gpus=int(get("num_gpus", "1")),
            sglang_backend=get("sglang_backend", "auto"),
            sglang_model_id=get("sglang_model_id", ""),
            sglang_attention_backend=get("sglang_attention_backend", ""),
            sglang_sleep_on_idle=flag("sglang_sleep_on_idle"),
            sglang_args=get("sglang_args", ""),
            cpu_threads=int(get("cpu_threads", "0")),
            torch_compile=choice("torch_compile", TORCH_COMPILE),
            compile_mode=get("compile_mode", "").strip(),
            fuse_qkv_projections=flag("fuse_qkv_projections"),
            attention_backend=get("attention_backend", "").strip().lower(),
            pixels_on_device=flag("pixels_on_device"),
            step_cache="" if step_cache == "off" else step_cache,
            step_cache_args=get("step_cache_args", ""),
            warmup=choice("warmup", WARMUP),
            warmup_steps=int(get("warmup_steps", "2")),
        )
        return config.with_compile_resolved()

    def with_compile_resolved(self) -> EngineConfig:
        """``torch_compile=auto`` made concrete: ``blocks`` for the diffusers engine on a CUDA device (measured on an
        H200 with the FLUX.1-dev shape: 1.29x per image for ~40 s more at load, pixels within a few levels of eager),
        ``off`` on a CPU (compiling takes minutes there and gains little) and on the sglang engine (its own kernels;
        set ``transformer`` or ``blocks`` to ask it for ``enable_torch_compile``)."""
        if self.torch_compile != "auto":
            return self
        on_gpu = self.device.startswith("cuda") and self.resolved_engine() == "diffusers"
        return replace(self, torch_compile="blocks" if on_gpu else "off")

    def speed_settings(self) -> list[str]:
        """The names of the speed settings set to something other than the plain engine's default."""
        plain = EngineConfig(model_path=self.model_path)
        return [name for name in SPEED_SETTINGS if getattr(self, name) != getattr(plain, name)]

    def warms_up(self) -> bool:
        """Whether loading ends with a warm-up generation. ``auto``: when the transformer is compiled (its first
        call compiles, for minutes on a GPU), or runs a named attention backend or a step cache (kernels this device
        lacks, or cache settings the model does not fit, then fail the load rather than the first request). An eager
        engine's first request costs little extra."""
        if self.warmup != "auto":
            return self.warmup == "on"
        return self.torch_compile != "off" or bool(self.attention_backend) or bool(self.step_cache)

    def resolved_engine(self) -> str:
        if self.engine != "auto":
            return self.engine
        if self.device.startswith("cuda") and importlib.util.find_spec("sglang") is not None:
            return "sglang"
        return "diffusers"

    def torch_dtype(self):  # -> torch.dtype, kept lazy so this module imports without torch
        import torch

        name = self.dtype
        if name == "auto":
            name = "bfloat16" if self.device.startswith("cuda") else "float32"
        try:
            return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
        except KeyError:
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}") from None


def json_object(text: str, name: str) -> dict[str, Any]:
    """A config parameter holding a JSON object of extra keyword arguments (empty: none)."""
    if not text.strip():
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {text!r}")
    return value


class ImageEngine(Protocol):
    """Text to images, or an edit of ``image`` (inside ``mask``, white = repaint, when given). Returns
    ``params.n`` uint8 HWC arrays; image ``i`` is generated from ``params.seeds[i]`` so it is the same image a
    request for ``n=1`` with that seed gives."""

    name: str

    def generate(
        self,
        params: ImageParams,
        on_step: StepHook,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class VideoEngine(Protocol):
    """Text (and, for image-to-video checkpoints, a conditioning image) to one video: uint8 ``[T, H, W, 3]``
    with ``params.num_frames`` frames of ``params.height`` x ``params.width``. ``image`` is None for text to
    video; for image to video it is already fitted to the requested size."""

    name: str

    def generate(self, params: VideoParams, image: Image.Image | None, on_step: StepHook) -> np.ndarray: ...

    def close(self) -> None: ...


def warm_up_image(engine: ImageEngine, config: EngineConfig, limits: ImageLimits) -> float | None:
    """One generation at the model's default size and guidance, ``warmup_steps`` steps, when ``config.warms_up()``:
    compilation and autotuning then happen while the model loads, not in a user's first request. Its seconds, or
    None when there was none. (Other sizes still compile on their first request.)"""
    if not config.warms_up():
        return None
    params = ImageParams(
        prompt="warm-up",
        negative_prompt=None,
        width=limits.default_width,
        height=limits.default_height,
        n=1,
        num_inference_steps=max(1, config.warmup_steps),
        guidance_scale=limits.default_guidance_scale,
        seed=0,
        output_format="png",
        output_compression=100,
    )
    start = time.perf_counter()
    try:
        engine.generate(params, lambda _done, _total: None)
    except Exception as exc:  # e.g. an attention backend whose kernels this device lacks: say which settings
        settings = ", ".join(f"{name}={getattr(config, name)!r}" for name in config.speed_settings()) or "none"
        raise EngineFailure(f"the warm-up generation failed (speed settings: {settings}): {exc}") from exc
    seconds = time.perf_counter() - start
    # A warning so that it reaches tritonserver's log: the stub configures no logging, so its root logger shows
    # warnings and above only.
    log.warning(
        "warm-up generation (%dx%d, %d steps, torch_compile=%s) took %.1f s",
        params.width,
        params.height,
        params.num_inference_steps,
        config.torch_compile,
        seconds,
    )
    return seconds


def check_video(frames: np.ndarray, params: VideoParams) -> np.ndarray:
    """Engines swallow or bend requests in ways that would otherwise surface as a wrong file: check the shape."""
    expected = (params.num_frames, params.height, params.width, 3)
    if frames.shape != expected:
        raise EngineFailure(f"the engine returned a video of shape {frames.shape}, expected {expected}")
    return frames


# (engine, kind) -> (module under diffusion_runtime.engines, class); imported lazily so only the chosen
# library loads in a stub.
_IMPLEMENTATIONS = {
    ("sglang", "image"): ("sglang_engine", "SGLangImageEngine"),
    ("sglang", "video"): ("sglang_engine", "SGLangVideoEngine"),
    ("diffusers", "image"): ("diffusers_engine", "DiffusersImageEngine"),
    ("diffusers", "video"): ("diffusers_engine", "DiffusersVideoEngine"),
}


def _create(config: EngineConfig, kind: str) -> Any:
    engine = config.resolved_engine()
    log.info("%s engine %s for %s on %s", kind, engine, config.model_path, config.device)
    module, cls = _IMPLEMENTATIONS[engine, kind]
    return getattr(importlib.import_module(f"diffusion_runtime.engines.{module}"), cls)(config)


def create_image_engine(config: EngineConfig) -> ImageEngine:
    return _create(config, "image")


def create_video_engine(config: EngineConfig) -> VideoEngine:
    return _create(config, "video")
