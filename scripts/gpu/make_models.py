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
is the tiny LLaDA model's (its ids all fall inside either vocabulary), with its chat template.

``--mini`` builds the same classes at toy widths (the smoke test's "mini" shapes; dry runs on a CPU). Random weights
are PyTorch's default initialisation, in bfloat16 (float32 with ``--mini``); a fixed seed makes the folder the same
on every machine. Tokenizers and the FLUX scheduler come from a tiny model's folder (``TOKENIZERS``), by default the
project's own tiny models (``diffusion_runtime.tiny_models``, built locally on first use), so no download is needed.

usage: python -m scripts.gpu.make_models {flux,wan,llada2,sdar} OUT [TOKENIZERS] [--mini] [--device cuda]
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

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=1, num_attention_heads=12)
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64)
WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)

# Toy widths for --mini (CPU dry runs): same classes, same wiring.
MINI_FLUX_TRANSFORMER = {
    **FLUX_TRANSFORMER,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": (4, 6, 6),
}
MINI_FLUX_VAE = {**FLUX_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4}
MINI_CLIP = dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1, num_attention_heads=4)
MINI_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
MINI_WAN = {
    **WAN_1_3B,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "rope_max_seq_len": 32,
}
MINI_WAN_VAE = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
)

# What both diffusion LMs share: a gated SiLU MLP, RMS norms, plain rotary positions, widths of 2048, heads of 128.
DLLM_COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, rope_scaling=None, hidden_size=2048, head_dim=128)
LLADA2_MINI = dict(
    **DLLM_COMMON,
    architectures=["LLaDA2MoeModelLM"],
    model_type="llada2_moe",
    vocab_size=157184,
    intermediate_size=5120,
    num_hidden_layers=20,
    num_attention_heads=16,
    num_key_value_heads=4,
    partial_rotary_factor=0.5,
    rope_theta=600000.0,
    max_position_embeddings=8192,
    num_experts=256,
    num_shared_experts=1,
    num_experts_per_tok=8,
    moe_intermediate_size=512,
    first_k_dense_replace=1,
    n_group=8,
    topk_group=4,
    routed_scaling_factor=2.5,
    score_function="sigmoid",
    moe_router_enable_expert_bias=True,
    norm_topk_prob=True,
    use_qk_norm=True,
    use_bias=False,
    use_qkv_bias=False,
    embedding_dropout=0.0,
    tie_word_embeddings=False,
)
SDAR_1_7B = dict(
    **DLLM_COMMON,
    architectures=["SDARForCausalLM"],
    model_type="sdar",
    vocab_size=151936,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    rope_theta=1000000.0,
    max_position_embeddings=32768,
    attention_bias=False,
    tie_word_embeddings=True,
)
MINI_LM = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, head_dim=16)
MINI_LLADA2 = {
    **LLADA2_MINI,
    **MINI_LM,
    "num_key_value_heads": 2,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "n_group": 2,
    "topk_group": 1,
}
MINI_SDAR = {**SDAR_1_7B, **MINI_LM, "num_key_value_heads": 2}


def _t5_kwargs(vocab_size: int, shape: dict) -> dict:
    return dict(
        vocab_size=vocab_size,
        num_decoder_layers=0,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
        is_encoder_decoder=False,
        use_cache=False,
        **shape,
    )


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def build_flux(out: Path, tokenizers: Path, mini: bool, device: str):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = _tokenizer(tokenizers / "tokenizer"), _tokenizer(tokenizers / "tokenizer_2")
    with torch.device(device):
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(**(MINI_FLUX_TRANSFORMER if mini else FLUX_TRANSFORMER))
        vae = AutoencoderKL(**(MINI_FLUX_VAE if mini else FLUX_VAE))
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **(MINI_CLIP if mini else CLIP_L),
            )
        )
        text_encoder_2 = T5EncoderModel(T5Config(**_t5_kwargs(len(tokenizer_2), MINI_T5 if mini else T5_XXL)))
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
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _tokenizer(tokenizers / "tokenizer")
    with torch.device(device):
        torch.manual_seed(0)
        transformer = WanTransformer3DModel(**(MINI_WAN if mini else WAN_1_3B))
        vae = AutoencoderKLWan(**(MINI_WAN_VAE if mini else {}))
        text_encoder = UMT5EncoderModel(UMT5Config(**_t5_kwargs(len(tokenizer), MINI_T5 if mini else T5_XXL)))
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
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
    "llada2": (LLADA2_MINI, MINI_LLADA2, llada2_weight_shapes, "LLaDA2MoeConfig"),
    "sdar": (SDAR_1_7B, MINI_SDAR, sdar_weight_shapes, "SDARConfig"),
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
    for name, size in weight_shapes(config).items():
        if name.endswith("expert_bias"):
            tensor = torch.zeros(size, dtype=torch.float32, device=device)
        elif len(size) == 1:
            tensor = torch.ones(size, dtype=dtype, device=device)
        else:
            tensor = torch.empty(size, dtype=dtype, device=device).normal_(0.0, 0.02, generator=generator)
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


BUILDERS = {"flux": build_flux, "wan": build_wan}
TOKENIZER_MODELS = {  # the tiny model whose tokenizers each kind reuses
    "flux": "tiny-flux",
    "wan": "tiny-wan-t2v",
    "llada2": "tiny-llada",
    "sdar": "tiny-llada",
}
STAMP = "random_weights.json"


def shape_digest(kind: str, mini: bool) -> str:
    """Names the shapes a folder was built with, so a folder built before a shape change is rebuilt."""
    shapes = {
        ("flux", False): (FLUX_TRANSFORMER, FLUX_VAE, CLIP_L, T5_XXL),
        ("flux", True): (MINI_FLUX_TRANSFORMER, MINI_FLUX_VAE, MINI_CLIP, MINI_T5),
        ("wan", False): (WAN_1_3B, T5_XXL),
        ("wan", True): (MINI_WAN, MINI_WAN_VAE, MINI_T5),
        ("llada2", False): (LLADA2_MINI,),
        ("llada2", True): (MINI_LLADA2,),
        ("sdar", False): (SDAR_1_7B,),
        ("sdar", True): (MINI_SDAR,),
    }[kind, mini]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]


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
    parser.add_argument("kind", choices=sorted([*BUILDERS, *DLLM_SHAPES]))
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
