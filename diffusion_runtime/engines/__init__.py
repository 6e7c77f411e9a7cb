"""Engines behind one interface per kind of generation; ``create_*_engine`` picks one per config."""

from diffusion_runtime.engines.base import (
    EngineConfig,
    ImageEngine,
    StepHook,
    VideoEngine,
    create_image_engine,
    create_video_engine,
)

__all__ = ["EngineConfig", "ImageEngine", "StepHook", "VideoEngine", "create_image_engine", "create_video_engine"]
