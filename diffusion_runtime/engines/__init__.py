"""Engines behind one interface per kind of generation; ``create_image_engine`` picks one per config."""

from diffusion_runtime.engines.base import EngineConfig, ImageEngine, StepHook, create_image_engine

__all__ = ["EngineConfig", "ImageEngine", "StepHook", "create_image_engine"]
