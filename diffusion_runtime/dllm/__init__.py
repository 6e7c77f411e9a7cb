"""Diffusion language models (LLaDA-class): the low-confidence remasking decoder and the text engines."""

from diffusion_runtime.dllm.base import TextDelta, TextEngine, TextEngineConfig
from diffusion_runtime.dllm.registry import create_text_engine, text_engine_name

__all__ = ["TextDelta", "TextEngine", "TextEngineConfig", "create_text_engine", "text_engine_name"]
