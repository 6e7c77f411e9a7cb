"""The speed settings of ``image_diffusion``'s config (``torch_compile``, ``compile_mode``, ``step_cache``) mapped to
what SGLang's ``DiffGenerator`` offers for the same lever; the settings it has none for fail the load."""

from __future__ import annotations

from typing import Any

from diffusion_runtime.engines.base import EngineConfig, json_object

# Speed settings DiffGenerator has no lever for, and where its own lever is.
_NOT_IN_SGLANG = {
    "fuse_qkv_projections": "DiffGenerator has no switch for it (its FLUX fuses Q, K, V for Nunchaku weights only)",
    "attention_backend": "that is the diffusers dispatcher's name; SGLang's is sglang_attention_backend",
    "pixels_on_device": "SGLang hands the pixels over itself",
}


def speed_kwargs(config: EngineConfig) -> dict[str, Any]:
    """DiffGenerator's levers for the engine-neutral speed settings: ``torch_compile`` is its
    ``enable_torch_compile`` (``blocks``: plus ``regional_compile``); ``compile_mode`` goes through the environment
    (``SGLANG_TORCH_COMPILE_MODE``, set by the engine); ``step_cache=cache-dit`` is a per-request switch
    (``step_cache_sampling``). A setting it has no lever for fails the load rather than being ignored."""
    unsupported = [name for name in _NOT_IN_SGLANG if getattr(config, name)]
    if unsupported:
        reasons = "; ".join(f"{name}: {_NOT_IN_SGLANG[name]}" for name in unsupported)
        raise ValueError(f"the sglang engine has no such setting ({reasons}); unset it or use engine=diffusers")
    if config.step_cache not in ("", "cache-dit"):
        raise ValueError(f"the sglang engine's step caching is cache-dit only, got step_cache={config.step_cache!r}")
    kwargs: dict[str, Any] = {}
    if config.torch_compile != "off":
        kwargs["enable_torch_compile"] = True
        if config.torch_compile == "blocks":
            kwargs["regional_compile"] = True
    return kwargs


def step_cache_sampling(config: EngineConfig) -> dict[str, Any]:
    """Sampling parameters turning SGLang's Cache-DiT on for a request (``step_cache_args``: its
    ``cache_dit_params``, e.g. ``{"residual_diff_threshold": 0.12}``); nothing when step caching is off."""
    if config.step_cache != "cache-dit":
        return {}
    sampling: dict[str, Any] = {"enable_cache_dit": True}
    settings = json_object(config.step_cache_args, "step_cache_args")
    if settings:
        sampling["cache_dit_params"] = settings
    return sampling
