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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from diffusion_runtime.errors import EngineFailure
from diffusion_runtime.params import ImageParams, VideoParams

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

StepHook = Callable[[int, int], None]
"""Called after each denoising step with ``(steps_done, total_steps)``; may raise to stop the generation."""

ENGINES = ("auto", "sglang", "diffusers")


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

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], device: str) -> EngineConfig:
        def get(key: str, default: str) -> str:
            value = parameters.get(key, "")
            return value if value.strip() else default

        engine = get("engine", "auto").lower()
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        return cls(
            model_path=get("model_path", ""),
            engine=engine,
            device=device,
            dtype=get("dtype", "auto"),
            num_gpus=int(get("num_gpus", "1")),
            sglang_backend=get("sglang_backend", "auto"),
            sglang_model_id=get("sglang_model_id", ""),
            sglang_attention_backend=get("sglang_attention_backend", ""),
            sglang_sleep_on_idle=get("sglang_sleep_on_idle", "false").lower() in ("1", "true", "yes"),
            sglang_args=get("sglang_args", ""),
            cpu_threads=int(get("cpu_threads", "0")),
        )

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
