"""Which text engine a ``dllm`` model runs: the one place the ``engine`` parameter is read.

``sglang`` (``sglang.Engine`` with a ``dllm_algorithm``; CUDA only), ``transformers`` (any masked LM that
transformers loads, decoded by this package's own low-confidence remasking; CPU or GPU), or ``auto``: SGLang on
a CUDA host where it imports, transformers otherwise (the image engines' rule, ``EngineConfig.resolved_engine``).
Engine modules are imported only once chosen, so a stub loads one library, and they import ``dllm.base``, never
this module.
"""

from __future__ import annotations

import importlib
import logging

from diffusion_runtime.dllm.base import TextEngine, TextEngineConfig

log = logging.getLogger(__name__)

# engine name -> (module, class)
TEXT_ENGINES: dict[str, tuple[str, str]] = {
    "sglang": ("diffusion_runtime.dllm.sglang_engine", "SGLangTextEngine"),
    "transformers": ("diffusion_runtime.dllm.transformers_engine", "TransformersTextEngine"),
}


def text_engine_name(config: TextEngineConfig) -> str:
    """The engine ``config.engine`` names, ``auto`` resolved for the config's device."""
    if config.engine == "auto":
        return "sglang" if config.image_rules().resolved_engine() == "sglang" else "transformers"
    if config.engine not in TEXT_ENGINES:
        raise ValueError(f"engine must be auto or one of {tuple(TEXT_ENGINES)} for a text model, got {config.engine!r}")
    return config.engine


def create_text_engine(config: TextEngineConfig) -> TextEngine:
    name = text_engine_name(config)
    log.info("text engine %s for %s on %s", name, config.model_path, config.device)
    module, cls = TEXT_ENGINES[name]
    return getattr(importlib.import_module(module), cls)(config)
