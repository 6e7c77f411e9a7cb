"""Build diffusers model folders of the published shapes with random weights, on the GPU that will serve them.

``flux``: FLUX.1-dev (``black-forest-labs/FLUX.1-dev``'s configs): the 11.9 B-parameter transformer (19 double and
38 single blocks, 24 heads of 128, joint attention width 4096, pooled width 768, guidance embedding) and the
16-channel VAE (128/256/512/512, two layers per block). Text encoders keep the widths the transformer consumes but
not the depth: CLIP-L's width (768, 12 heads, MLP 3072) with 1 of its 12 layers, and T5-XXL's width (4096, 64 heads
of 64, gated-GELU MLP 10240) with 1 of its 24 layers; their vocabularies are those of the tiny models' trained
tokenizers. The prompt still becomes 512 T5 tokens and a 768-wide pooled vector, so the transformer sees the real
sequence length (4096 image + 512 text tokens at 1024²). The 34 missing encoder layers (~4.8 B parameters) run once
per image, not per step: about 10 ms on an H100.

``wan``: Wan2.1-T2V-1.3B (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): the transformer (30 layers, 12 heads of 128,
FFN 8960, text width 4096) and the Wan 2.1 VAE (diffusers' defaults are its config), UniPC flow-matching scheduler
(shift 3.0). The UMT5-XXL text encoder keeps its width (4096, 64 heads of 64, MLP 10240) with 1 of 24 layers.

The shapes are the project's one table (``diffusion_runtime.model_shapes``). ``--mini`` builds the same classes
at the tiny models' widths (the smoke test's "mini" shapes; dry runs on a CPU). Random weights
are PyTorch's default initialisation, in bfloat16 (float32 with ``--mini``); a fixed seed makes the folder the same
on every machine. Tokenizers and the FLUX scheduler come from a tiny model's folder (``TOKENIZERS``), by default the
project's own tiny models (``diffusion_runtime.tiny_models``, built locally on first use), so no download is needed.

usage: python -m scripts.gpu.make_models {flux,wan} OUT [TOKENIZERS] [--mini] [--device cuda]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from diffusion_runtime import model_shapes as shapes

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# (published, --mini) component shapes per kind, from the project's one table of shapes.
FLUX_SHAPES = {
    False: (shapes.FLUX_TRANSFORMER, shapes.FLUX_VAE, shapes.CLIP_L, shapes.T5_XXL),
    True: (shapes.TINY_FLUX_TRANSFORMER, shapes.TINY_FLUX_VAE, shapes.TINY_CLIP, shapes.TINY_T5),
}
WAN_SHAPES = {
    False: (shapes.WAN_1_3B, shapes.WAN_VAE, shapes.T5_XXL),
    True: (shapes.TINY_WAN, shapes.TINY_WAN_VAE, shapes.TINY_T5),
}


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def build_flux(out: Path, tokenizers: Path, mini: bool, device: str):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = _tokenizer(tokenizers / "tokenizer"), _tokenizer(tokenizers / "tokenizer_2")
    transformer_shape, vae_shape, clip_shape, t5_shape = FLUX_SHAPES[mini]
    with torch.device(device):
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(**transformer_shape)
        vae = AutoencoderKL(**vae_shape)
        text_encoder = CLIPTextModel(shapes.clip_text_config(tokenizer, clip_shape))
        text_encoder_2 = T5EncoderModel(T5Config(**shapes.t5_encoder_kwargs(len(tokenizer_2), t5_shape)))
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(tokenizers / "scheduler"))
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_wan(out: Path, tokenizers: Path, mini: bool, device: str):
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _tokenizer(tokenizers / "tokenizer")
    transformer_shape, vae_shape, t5_shape = WAN_SHAPES[mini]
    with torch.device(device):
        torch.manual_seed(0)
        transformer = WanTransformer3DModel(**transformer_shape)
        vae = AutoencoderKLWan(**vae_shape)
        text_encoder = UMT5EncoderModel(UMT5Config(**shapes.t5_encoder_kwargs(len(tokenizer), t5_shape)))
    scheduler = shapes.wan_scheduler()
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )


BUILDERS = {"flux": build_flux, "wan": build_wan}
TOKENIZER_MODELS = {"flux": "tiny-flux", "wan": "tiny-wan-t2v"}  # the tiny model whose tokenizers each kind reuses
STAMP = "random_weights.json"


def shape_digest(kind: str, mini: bool) -> str:
    """Names the shapes a folder was built with, so a folder built before a shape change is rebuilt."""
    built = (FLUX_SHAPES if kind == "flux" else WAN_SHAPES)[mini]
    return hashlib.sha256(repr(built).encode()).hexdigest()[:12]


def default_tokenizers(kind: str) -> Path:
    """The project's tiny model folder holding the tokenizers (and scheduler) ``kind`` reuses; built if missing."""
    from diffusion_runtime.tiny_models import ensure_tiny_model

    return ensure_tiny_model(TOKENIZER_MODELS[kind])


def build(kind: str, out: Path, tokenizers: Path | None = None, mini: bool = False, device: str = "cuda") -> dict:
    """Build and save one model folder; returns what was built (parameter counts, seconds)."""
    import torch

    tokenizers = tokenizers or default_tokenizers(kind)
    started = time.perf_counter()
    torch.set_grad_enabled(False)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if mini else torch.bfloat16)
    try:
        pipe = BUILDERS[kind](out, tokenizers, mini, device)
    finally:
        torch.set_default_dtype(previous)
    built = time.perf_counter()
    params = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), max_shard_size="50GB")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    info = {
        "kind": kind,
        "mini": mini,
        "shape_digest": shape_digest(kind, mini),
        "parameters": params,
        "dtype": "float32" if mini else "bfloat16",
        "build_s": round(built - started, 2),
        "save_s": round(time.perf_counter() - built, 2),
        "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
    (out / STAMP).write_text(json.dumps(info, indent=1))
    return info


def ensure_built(
    kind: str,
    root: Path,
    *,
    mini: bool,
    device: str,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
) -> tuple[Path, dict | None]:
    """The folder of ``kind`` under ``root``, built first (in a child process, so the GPU memory the build takes
    is freed when it exits) when missing or built with other shapes. Returns the folder and, when it was built
    now, what ``build`` reported (with ``wall_s``)."""
    target = root / (f"{kind}-mini" if mini else kind)
    stamp = target / STAMP
    if stamp.exists() and json.loads(stamp.read_text()).get("shape_digest") == shape_digest(kind, mini):
        return target, None
    root.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "scripts.gpu.make_models", kind, str(target), "--device", device]
    command += ["--mini"] if mini else []
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})
    if log_file is not None:
        log_file.write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"building the {kind} model failed:\n{done.stderr[-3000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["wall_s"] = round(time.perf_counter() - started, 1)
    return target, info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(BUILDERS))
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "tokenizers",
        type=Path,
        nargs="?",
        default=None,
        help="a tiny model folder whose tokenizers and scheduler to reuse (default: the project's tiny model)",
    )
    parser.add_argument("--mini", action="store_true")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.kind, args.out, args.tokenizers, args.mini, args.device)), flush=True)


if __name__ == "__main__":
    main()
