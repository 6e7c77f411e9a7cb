"""Diffusion language models (LLaDA-class): the low-confidence remasking decoder and the text engines."""

from diffusion_runtime.dllm.base import TextDelta, TextEngine, TextEngineConfig, create_text_engine

__all__ = ["TextDelta", "TextEngine", "TextEngineConfig", "create_text_engine"]
