"""The diffusers engine's speed settings, applied once at load (see ``image_diffusion``'s ``config.pbtxt``).

Order matters: projections are fused before anything wraps the attention modules, the attention backend and a
step cache's hooks are installed before compilation so the compiled code includes them, and compilation comes
last. Every setting fails the load, with what to set instead, rather than being skipped quietly: a server that
silently runs slower than configured is worse than one that does not start.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from diffusion_runtime.engines.base import EngineConfig, json_object

log = logging.getLogger(__name__)

STEP_CACHES = ("first-block", "taylorseer", "cache-dit")
"""Lossy step caching, opt-in: ``first-block`` (diffusers' FirstBlockCache: the rest of the transformer is skipped
while the first block's residual changes less than ``threshold``, TeaCache's idea), ``taylorseer`` (diffusers'
TaylorSeer: block outputs extrapolated between full steps), ``cache-dit`` (the cache-dit package's DBCache)."""


def attention_backends() -> list[str]:
    """The names diffusers' attention dispatcher knows (whether or not this host has their kernels)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(member.value for member in AttentionBackendName)


def apply_speed_settings(pipe: Any, config: EngineConfig) -> None:
    """Apply ``config``'s speed settings to a loaded pipeline's transformer (and VAE); raise ``ValueError`` naming
    the setting when one cannot be applied."""
    transformer = pipe.transformer
    if config.fuse_qkv_projections:
        fuse_projections(pipe)
    if config.attention_backend:
        set_attention_backend(transformer, config.attention_backend)
    if config.step_cache:
        enable_step_cache(pipe, config.step_cache, json_object(config.step_cache_args, "step_cache_args"))
    elif config.step_cache_args.strip():
        raise ValueError(f"step_cache_args is set but step_cache is off: set step_cache to one of {STEP_CACHES}")
    if config.torch_compile != "off":
        compile_transformer(transformer, config)


def fuse_projections(pipe: Any) -> None:
    """One matmul for Q, K and V (and for the text stream's added Q, K, V) instead of three; the VAE's attention too
    where it supports it. The same weights, concatenated: results equal up to the matmul's summation order."""
    if not hasattr(pipe.transformer, "fuse_qkv_projections"):
        raise ValueError(f"fuse_qkv_projections: {type(pipe.transformer).__name__} cannot fuse its projections")
    pipe.transformer.fuse_qkv_projections()
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "fuse_qkv_projections"):
        vae.fuse_qkv_projections()


def set_attention_backend(transformer: Any, name: str) -> None:
    """Route the transformer's attention through diffusers' dispatcher backend ``name``. diffusers also makes it
    the process-wide default for every model; that default is put back, so the setting stays this transformer's
    (other pipelines in the process, e.g. the benchmark's variants, keep theirs)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    known = attention_backends()
    if name not in known:
        raise ValueError(f"attention_backend {name!r} is not one of diffusers' attention backends: {', '.join(known)}")
    default, _ = _AttentionBackendRegistry.get_active_backend()
    try:
        transformer.set_attention_backend(name)
    except (ImportError, RuntimeError, ValueError) as exc:  # the backend's library or kernels are missing
        raise ValueError(f"attention_backend {name!r} cannot run on this host: {exc}") from exc
    finally:
        _AttentionBackendRegistry.set_active_backend(default)


def enable_step_cache(pipe: Any, method: str, settings: dict[str, Any]) -> None:
    """Install step caching ``method`` with ``settings`` (its config's keyword arguments)."""
    if method not in STEP_CACHES:
        raise ValueError(f"step_cache must be empty (exact) or one of {STEP_CACHES}, got {method!r}")
    try:
        if method == "cache-dit":
            import cache_dit

            cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(**settings))
            return
        from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

        cache_config = FirstBlockCacheConfig if method == "first-block" else TaylorSeerCacheConfig
        pipe.transformer.enable_cache(cache_config(**settings))
    except ImportError as exc:
        raise ValueError(f"step_cache {method!r} needs a package this host lacks: {exc}") from exc
    except (TypeError, AssertionError) as exc:  # a misnamed key, or a value refused (cache-dit asserts)
        raise ValueError(f"step_cache_args does not fit step_cache {method!r}: {type(exc).__name__}: {exc}") from exc


def reset_step_cache(pipe: Any) -> None:
    """Forget the last generation's cached activations. A finished pipeline call resets them itself, but one
    stopped by a cancelled request would leave them for the next request to reuse."""
    reset = getattr(pipe.transformer, "_reset_stateful_cache", None)
    if reset is not None:
        reset()


def compile_transformer(transformer: Any, config: EngineConfig) -> None:
    """``torch.compile`` the transformer in place (its class and attributes stay, so pipelines built from this one
    with ``from_pipe`` share the compiled code). One graph per module unless a step cache is on: its hooks decide in
    Python, on tensor values, whether to run the blocks, which one graph cannot hold."""
    kwargs: dict[str, Any] = {"fullgraph": not config.step_cache}
    if config.compile_mode:
        kwargs["mode"] = config.compile_mode
    log.info("torch.compile of the transformer (%s): %s", config.torch_compile, kwargs)
    if config.torch_compile == "blocks":
        transformer.compile_repeated_blocks(**kwargs)
    else:
        transformer.compile(**kwargs)


def to_uint8_images(images: Any) -> list[np.ndarray]:
    """Pipeline output of ``output_type="pt"`` (``[B, C, H, W]`` in [0, 1], on the device) as uint8 HWC arrays,
    rounded on the device so a quarter of the bytes cross to the host. Bit for bit what ``media.to_uint8_hwc``
    makes of the ``"np"`` output: the same float32 values (bfloat16 and float16 widen exactly), clamped, times
    255 and rounded half to even, each an exactly rounded float32 operation on any device."""
    import torch

    pixels = images.to(torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1)
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(-1, -1, -1, 3)
    return [np.ascontiguousarray(image[..., :3]) for image in pixels.cpu().numpy()]
