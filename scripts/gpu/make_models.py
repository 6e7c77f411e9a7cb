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

``llada2``: LLaDA2.0-mini (``inclusionAI/LLaDA2.0-mini``, architecture ``LLaDA2MoeModelLM``, what SGLang's diffusion-LM
engine runs): 20 layers of width 2048, 16 query and 4 key-value heads of 128 (half of each rotated), a dense first
layer (FFN 5120), then mixtures of 256 experts (FFN 512, 8 routed per token in 8 groups, 4 groups chosen, sigmoid
scores with a bias) beside one shared expert; vocabulary 157,184 (SGLang's mask token is 156,895). About 16 B
parameters. ``sdar``: SDAR-1.7B-Chat (``SDARForCausalLM``, Qwen3-1.7B's shape: 28 layers of width 2048, 16 query
and 8 key-value heads of 128 with query/key norms, FFN 6144, tied embeddings, vocabulary 151,936), the fallback
SGLang also runs. These widths are the published config.json values as written here, not read from the hub. Neither
checkpoint's modelling code ships with transformers: the folder carries a configuration module of its own
(``auto_map``), which is all SGLang reads besides the weights, named as in the published checkpoints. The tokenizer
is the tiny LLaDA model's (its ids all fall inside either vocabulary), with its chat template. The output rows of
ids the tokenizer lacks are zero, so random weights answer in ids that decode to text (the vocabulary dwarfs the
tokenizer: otherwise almost every answer would be ids the tokenizer cannot decode).

``llada-mlm``: the transformers text engine's masked LM (``ModernBertForMaskedLM``, as the tiny LLaDA) at LLaDA-8B's
widths (32 layers of 4096, 32 heads, MLP 12,288, vocabulary 126,464): about 7.5 B parameters, to measure the
project's own decoder at a real model's cost per forward. Its unused vocabulary rows are zero too.

The shapes are the project's one table (``diffusion_runtime.model_shapes``). ``--mini`` builds the same classes
at the tiny models' widths (the smoke test's "mini" shapes; dry runs on a CPU). Random weights
are PyTorch's default initialisation, in bfloat16 (float32 with ``--mini``); a fixed seed makes the folder the same
on every machine. Tokenizers and the FLUX scheduler come from a tiny model's folder (``TOKENIZERS``), by default the
project's own tiny models (``diffusion_runtime.tiny_models``, built locally on first use), so no download is needed.

usage: python -m scripts.gpu.make_models {flux,wan,llada2,sdar,llada-mlm} OUT [TOKENIZERS] [--mini] [--device cuda]
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


def llada2_weight_shapes(c: Mapping) -> dict[str, tuple[int, ...]]:
    """Every tensor of a LLaDA2 MoE checkpoint, named as the published one (SGLang's ``llada2.py`` loads these)."""
    h, hd, e = c["hidden_size"], c["head_dim"], c["num_experts"]
    shapes: dict[str, tuple[int, ...]] = {"model.word_embeddings.weight": (c["vocab_size"], h)}
    for i in range(c["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.input_layernorm.weight": (h,),
            f"{layer}.attention.query_key_value.weight": (
                (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * hd,
                h,
            ),
            f"{layer}.attention.query_layernorm.weight": (hd,),
            f"{layer}.attention.key_layernorm.weight": (hd,),
            f"{layer}.attention.dense.weight": (h, c["num_attention_heads"] * hd),
            f"{layer}.post_attention_layernorm.weight": (h,),
        }
        if i < c["first_k_dense_replace"]:
            shapes |= _gated_mlp(f"{layer}.mlp", h, c["intermediate_size"])
            continue
        shapes |= {f"{layer}.mlp.gate.weight": (e, h), f"{layer}.mlp.gate.expert_bias": (e,)}
        for j in range(e):
            shapes |= _gated_mlp(f"{layer}.mlp.experts.{j}", h, c["moe_intermediate_size"])
        shapes |= _gated_mlp(f"{layer}.mlp.shared_experts", h, c["moe_intermediate_size"] * c["num_shared_experts"])
    return shapes | {"model.norm.weight": (h,), "lm_head.weight": (c["vocab_size"], h)}


def sdar_weight_shapes(c: Mapping) -> dict[str, tuple[int, ...]]:
    """Every tensor of an SDAR (Qwen3-shaped) checkpoint, named as the published one (SGLang's ``sdar.py``)."""
    h, hd = c["hidden_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c["vocab_size"], h)}
    for i in range(c["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.input_layernorm.weight": (h,),
            f"{layer}.self_attn.q_proj.weight": (q, h),
            f"{layer}.self_attn.k_proj.weight": (kv, h),
            f"{layer}.self_attn.v_proj.weight": (kv, h),
            f"{layer}.self_attn.o_proj.weight": (h, q),
            f"{layer}.self_attn.q_norm.weight": (hd,),
            f"{layer}.self_attn.k_norm.weight": (hd,),
            f"{layer}.post_attention_layernorm.weight": (h,),
        } | _gated_mlp(f"{layer}.mlp", h, c["intermediate_size"])
    shapes["model.norm.weight"] = (h,)
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (c["vocab_size"], h)
    return shapes


def _gated_mlp(prefix: str, hidden: int, inner: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.gate_proj.weight": (inner, hidden),
        f"{prefix}.up_proj.weight": (inner, hidden),
        f"{prefix}.down_proj.weight": (hidden, inner),
    }


CONFIG_MODULE = '''"""The checkpoint's configuration class: config.json holds every value, read as attributes."""

from transformers import PretrainedConfig


class {name}(PretrainedConfig):
    model_type = "{model_type}"
'''
DLLM_SHAPES = {  # kind -> (shape, --mini shape, weight names and shapes, configuration class)
    "llada2": (shapes.LLADA2_MINI, shapes.TINY_LLADA2, llada2_weight_shapes, "LLaDA2MoeConfig"),
    "sdar": (shapes.SDAR_1_7B, shapes.TINY_SDAR, sdar_weight_shapes, "SDARConfig"),
}
SHARD_BYTES = 4 << 30


def build_dllm(kind: str, out: Path, tokenizers: Path, mini: bool, device: str) -> dict[str, int]:
    """Write a diffusion-LM checkpoint folder: config.json with its configuration module, random weights in
    safetensors shards with an index, and the tokenizer. Linear weights are normal(0, 0.02) (as these models
    initialise), norms one, router biases zero. Returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    shape, mini_shape, weight_shapes, config_class = DLLM_SHAPES[kind]
    config = dict(mini_shape if mini else shape)
    tokenizer = _tokenizer(tokenizers)
    module = f"configuration_{config['model_type']}"
    config |= {
        "auto_map": {"AutoConfig": f"{module}.{config_class}"},
        "torch_dtype": "float32" if mini else "bfloat16",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / f"{module}.py").write_text(CONFIG_MODULE.format(name=config_class, model_type=config["model_type"]))
    tokenizer.save_pretrained(str(out))
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = torch.get_default_dtype()
    shard: dict[str, torch.Tensor] = {}
    shards: list[dict[str, torch.Tensor]] = [shard]
    total = 0
    names = weight_shapes(config)
    output = "lm_head.weight" if "lm_head.weight" in names else next(iter(names))  # tied: the embeddings
    for name, size in names.items():
        if name.endswith("expert_bias"):
            tensor = torch.zeros(size, dtype=torch.float32, device=device)
        elif len(size) == 1:
            tensor = torch.ones(size, dtype=dtype, device=device)
        else:
            tensor = torch.empty(size, dtype=dtype, device=device).normal_(0.0, 0.02, generator=generator)
        if name == output:
            zero_unused_rows(tensor, len(tokenizer))
        if sum(t.nbytes for t in shard.values()) + tensor.nbytes > SHARD_BYTES and shard:
            shard = {}
            shards.append(shard)
        shard[name] = tensor
        total += tensor.numel()
    weight_map = {}
    for index, tensors in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.cpu() for k, v in tensors.items()}, str(out / filename), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, filename)
        tensors.clear()  # the GPU copy goes as soon as it is written
    index_file = {"metadata": {"total_size": sum((out / f).stat().st_size for f in set(weight_map.values()))}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_file | {"weight_map": weight_map}, indent=1))
    return {"model": total}


def zero_unused_rows(vocabulary_rows, used: int) -> None:
    """Zero the rows of ids past the tokenizer's ``used`` ids: their logits are then 0 while the tokenizer's own
    ids' spread around it, so an argmax lands on an id that decodes to text."""
    vocabulary_rows[used:] = 0


def build_masked_lm(out: Path, tokenizers: Path, mini: bool, device: str) -> dict[str, int]:
    """Write the transformers engine's masked LM (``llada-mlm``): the tiny LLaDA's class and tokenizer at LLaDA-8B's
    widths (``--mini``: the tiny widths), initialised on ``device``."""
    import torch
    from transformers import AutoTokenizer, ModernBertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizers))
    shape, vocab = (shapes.TINY_MLM, None) if mini else (shapes.LLADA_8B_MLM, shapes.LLADA_8B_VOCAB)
    torch.manual_seed(0)
    with torch.device(device):
        model = ModernBertForMaskedLM(shapes.masked_lm_config(tokenizer, shape, vocab))
    zero_unused_rows(model.get_input_embeddings().weight, len(tokenizer))  # the decoder shares them
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"model": sum(p.numel() for p in model.parameters())}


BUILDERS = {"flux": build_flux, "wan": build_wan}
MASKED_LMS = {"llada-mlm": build_masked_lm}
TOKENIZER_MODELS = {  # the tiny model whose tokenizers each kind reuses
    "flux": "tiny-flux",
    "wan": "tiny-wan-t2v",
    "llada2": "tiny-llada",
    "sdar": "tiny-llada",
    "llada-mlm": "tiny-llada",
}
STAMP = "random_weights.json"


def shape_digest(kind: str, mini: bool) -> str:
    """Names the shapes a folder was built with, so a folder built before a shape change is rebuilt."""
    if kind in DLLM_SHAPES:
        built = DLLM_SHAPES[kind][1 if mini else 0]
    elif kind in MASKED_LMS:
        built = shapes.TINY_MLM if mini else (shapes.LLADA_8B_MLM, shapes.LLADA_8B_VOCAB)
    else:
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
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if kind in DLLM_SHAPES:  # written as it is made: a 16 B-parameter model never sits whole on the GPU
            params = build_dllm(kind, tmp, tokenizers, mini, device)
            built = time.perf_counter()
        elif kind in MASKED_LMS:
            params = MASKED_LMS[kind](tmp, tokenizers, mini, device)
            built = time.perf_counter()
        else:
            pipe = BUILDERS[kind](out, tokenizers, mini, device)
            built = time.perf_counter()
            params = {
                name: sum(p.numel() for p in module.parameters())
                for name, module in pipe.components.items()
                if isinstance(module, torch.nn.Module)
            }
            pipe.save_pretrained(str(tmp), max_shard_size="50GB")
    finally:
        torch.set_default_dtype(previous)
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
    parser.add_argument("kind", choices=sorted([*BUILDERS, *DLLM_SHAPES, *MASKED_LMS]))
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
