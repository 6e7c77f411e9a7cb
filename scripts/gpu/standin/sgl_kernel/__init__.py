"""A pure-PyTorch stand-in for the ``sglang-kernel`` wheel, for measuring on the lent GPU machine only.

The real wheel (373 MB) cannot travel there (64 MiB per call, no network), yet SGLang's diffusion layers import a
few of its element-wise ops at module level on CUDA. This package provides those ops in plain PyTorch (RMSNorm, the
residual-add variant, Gemma's offset variant, and the gated activations); any other attribute imports fine and
raises ``NotImplementedError`` naming itself when called, so a code path that really needs a missing kernel fails
loudly instead of computing something else. Sub-packages that SGLang probes (``flash_attn`` etc.) are absent, so
those probes fall back to PyTorch paths. The real kernels are fused CUDA code: timings taken with this stand-in
understate SGLang's speed. Set ``SGL_KERNEL_STANDIN_LOG=1`` to print each op the first time it runs.

Not part of the product: real deployments install ``sglang[diffusion]`` with its kernels.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

__version__ = "0.0.0+standin"
_seen: set[str] = set()


def _note(op: str) -> None:
    if op not in _seen:
        _seen.add(op)
        if os.environ.get("SGL_KERNEL_STANDIN_LOG"):
            print(f"[sgl_kernel stand-in] {op}", file=sys.stderr, flush=True)


def _into(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None):
    _note("rmsnorm")
    return _into(_rms(input, weight, eps), out)


def fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None):
    """In place, as the kernel: ``residual += input``; ``input = rmsnorm(residual)``."""
    _note("fused_add_rmsnorm")
    residual.add_(input)
    input.copy_(_rms(residual, weight, eps))


def gemma_rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None):
    _note("gemma_rmsnorm")
    return _into(_rms(input, weight.float() + 1.0, eps), out)


def gemma_fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None):
    _note("gemma_fused_add_rmsnorm")
    residual.add_(input)
    input.copy_(_rms(residual, weight.float() + 1.0, eps))


def _gated(activation, input: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    half = input.shape[-1] // 2
    return _into(activation(input[..., :half]) * input[..., half:], out)


def silu_and_mul(input, out=None, enable_pdl=None):
    _note("silu_and_mul")
    return _gated(F.silu, input, out)


def gelu_and_mul(input, out=None, enable_pdl=None):
    _note("gelu_and_mul")
    return _gated(F.gelu, input, out)


def gelu_tanh_and_mul(input, out=None, enable_pdl=None):
    _note("gelu_tanh_and_mul")
    return _gated(lambda t: F.gelu(t, approximate="tanh"), input, out)


def unavailable(qualified_name: str):
    """A callable that fails naming the kernel it stands for."""

    def kernel(*_args, **_kwargs):
        raise NotImplementedError(
            f"{qualified_name} is not in the sgl_kernel stand-in (sglang-kernel is not installed)"
        )

    kernel.__name__ = kernel.__qualname__ = qualified_name.rsplit(".", 1)[-1]
    return kernel


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    value = unavailable(f"sgl_kernel.{name}")
    globals()[name] = value
    return value
