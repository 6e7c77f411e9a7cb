"""The time one FLUX transformer step cannot go below with this device's own matrix and attention kernels.

A FLUX step is matrix products (the projections and MLPs of 19 double and 38 single blocks) and joint attention
over the image and text tokens, plus element-wise work (norms, modulation, rotary positions, GELU, residuals) that a
compiler fuses. Timing each distinct product and the attention alone, at the served shapes, in bf16, and adding
them up as often as a step runs them gives the step's floor on this card with the kernels torch picks (cuBLAS,
cuDNN/flash attention). A measured step close to that floor leaves only faster kernels (or fewer FLOPs) to gain; a
gap is the element-wise and launch work. The FLOP count beside it gives the rate each kind of kernel reaches.

Shapes come from the transformer's config (``model_shapes.FLUX_TRANSFORMER``: hidden width = heads x head width,
MLP 4x wide); the image is ``(height/16) x (width/16)`` tokens (8x VAE, 2x2 packing), the prompt 512 T5 tokens.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmarks.stats import median

TEXT_TOKENS = 512  # FLUX.1-dev's T5 sequence length


@dataclass(frozen=True)
class StepOp:
    """One kernel call of a step: ``linear`` (``m`` x ``k`` times ``k`` x ``n``) or ``attention`` (``m`` heads of
    ``n`` wide over ``k`` tokens)."""

    kind: str
    m: int
    k: int
    n: int

    @property
    def flops(self) -> float:
        if self.kind == "linear":
            return 2.0 * self.m * self.k * self.n
        return 4.0 * self.m * self.k * self.k * self.n  # Q K^T and P V

    def __str__(self) -> str:
        if self.kind == "linear":
            return f"linear {self.m}x{self.k}x{self.n}"
        return f"attention {self.m} heads x {self.k} tokens x {self.n}"


def flux_step_ops(transformer: Mapping[str, Any], height: int, width: int) -> Counter[StepOp]:
    """Every matrix product and attention call of one transformer step, with how often it runs."""
    hidden = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    mlp = 4 * hidden
    image, text = (height // 16) * (width // 16), TEXT_TOKENS
    joint = image + text
    double, single = transformer["num_layers"], transformer["num_single_layers"]
    ops: Counter[StepOp] = Counter()
    for tokens in (image, text):  # a double block: each stream has its own projections and MLP
        ops[StepOp("linear", tokens, hidden, hidden)] += 4 * double  # Q, K, V, out
        ops[StepOp("linear", tokens, hidden, mlp)] += double
        ops[StepOp("linear", tokens, mlp, hidden)] += double
        ops[StepOp("linear", 1, hidden, 6 * hidden)] += double  # AdaLayerNormZero's modulation
    ops[StepOp("linear", joint, hidden, hidden)] += 3 * single  # a single block: Q, K, V
    ops[StepOp("linear", joint, hidden, mlp)] += single
    ops[StepOp("linear", joint, hidden + mlp, hidden)] += single  # attention and MLP out, concatenated
    ops[StepOp("linear", 1, hidden, 3 * hidden)] += single
    ops[StepOp("linear", image, transformer["in_channels"], hidden)] += 1  # embedders and the output projection
    ops[StepOp("linear", text, transformer["joint_attention_dim"], hidden)] += 1
    ops[StepOp("linear", image, hidden, transformer["in_channels"])] += 1
    ops[StepOp("attention", transformer["num_attention_heads"], joint, transformer["attention_head_dim"])] += (
        double + single
    )
    return ops


def _call(op: StepOp, device: str, dtype: Any):
    import torch
    import torch.nn.functional as F

    if op.kind == "linear":
        x = torch.randn(op.m, op.k, device=device, dtype=dtype)
        w = torch.randn(op.n, op.k, device=device, dtype=dtype) * op.k**-0.5
        return lambda: F.linear(x, w)
    q, k, v = (torch.randn(1, op.m, op.k, op.n, device=device, dtype=dtype) for _ in range(3))
    return lambda: F.scaled_dot_product_attention(q, k, v)


def time_op(op: StepOp, device: str, dtype: Any, repeats: int = 20) -> float:
    """Median seconds of one call (CUDA events on a GPU: the device's time, after warm-up calls)."""
    import torch

    run = _call(op, device, dtype)
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            began = time.perf_counter()
            run()
            times.append(time.perf_counter() - began)
    return median(times)


def measure_step_floor(
    transformer: Mapping[str, Any], height: int, width: int, device: str, dtype: Any = None, repeats: int = 20
) -> dict[str, Any]:
    """The step's floor: per kind of kernel its seconds per step and the rate it reached, and each call's time."""
    import torch

    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    per_kind: dict[str, dict[str, float]] = {}
    calls = []
    with torch.inference_mode():
        for op, count in flux_step_ops(transformer, height, width).items():
            seconds = time_op(op, device, dtype, repeats)
            calls.append({"op": str(op), "count": count, "call_s": seconds, "tflops": op.flops / seconds / 1e12})
            kind = per_kind.setdefault(op.kind, {"step_s": 0.0, "flops": 0.0})
            kind["step_s"] += count * seconds
            kind["flops"] += count * op.flops
    for kind in per_kind.values():
        kind["tflops"] = kind["flops"] / kind["step_s"] / 1e12
    total_s = sum(kind["step_s"] for kind in per_kind.values())
    total_flops = sum(kind["flops"] for kind in per_kind.values())
    return {
        "size": f"{width}x{height}",
        "dtype": str(dtype).removeprefix("torch."),
        "step_s": total_s,
        "step_flops": total_flops,
        "tflops": total_flops / total_s / 1e12,
        "kinds": per_kind,
        "calls": calls,
    }


def floor_text(floor: Mapping[str, Any], step_s: float | None = None, steps: float | None = None) -> str:
    """The floor in words, against a measured step when given."""
    kinds = ", ".join(
        f"{name} {kind['step_s'] * 1e3:.1f} ms ({kind['tflops']:.0f} TFLOP/s)" for name, kind in floor["kinds"].items()
    )
    text = f"kernel floor per step {floor['step_s'] * 1e3:.1f} ms ({kinds}; {floor['step_flops'] / 1e12:.1f} TFLOP)"
    if step_s:
        text += f"; measured step {step_s * 1e3:.1f} ms = {step_s / floor['step_s']:.2f}x the floor"
    if steps:
        text += f"; {steps:.0f} steps at the floor: {floor['step_s'] * steps:.2f} s"
    return text
