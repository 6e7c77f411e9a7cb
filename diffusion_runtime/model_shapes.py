"""The shapes of the models the project builds with random weights, in one table: the published ones (FLUX.1-dev,
Wan2.1-T2V-1.3B) and the tiny ones derived from them (the same classes and wiring at toy widths).

Two builders read it: ``tiny_models`` (the tests' and the CPU server's models, with tokenizers trained here) and
``scripts.gpu.make_models`` (random weights in the published shapes on a GPU host, and its ``--mini`` folders,
which are the tiny shapes built the published way). One table, so a shape fixed in one builder is fixed in both.
"""

from __future__ import annotations

from typing import Any

# FLUX.1-dev (black-forest-labs/FLUX.1-dev's configs): 19 double and 38 single blocks, 24 heads of 128, joint
# attention width 4096 (= T5-XXL), pooled width 768 (= CLIP-L), guidance embedding; the 16-channel VAE.
FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels, 2x2-packed
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),  # sums to attention_head_dim
)
FLUX_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),  # 4 levels: scale factor 8, sizes multiples of 16
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
# The text encoders keep the widths the transformers consume, not the depth (1 of 12 and 1 of 24 layers).
CLIP_L: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=1, num_attention_heads=12
)
T5_XXL: dict[str, Any] = dict(
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=1,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
)
# Wan2.1-T2V-1.3B (Wan-AI/Wan2.1-T2V-1.3B-Diffusers): 30 layers, 12 heads of 128, FFN 8960, text width 4096 (UMT5);
# the Wan 2.1 VAE is diffusers' default AutoencoderKLWan.
WAN_1_3B: dict[str, Any] = dict(
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
    rope_max_seq_len=1024,  # positions for up to 1024 latent patches per axis
)
WAN_VAE: dict[str, Any] = {}

# The tiny shapes: widths 16-64, one or two layers.
TINY_FLUX_TRANSFORMER = {
    **FLUX_TRANSFORMER,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,  # = TINY_T5's d_model
    "pooled_projection_dim": 32,  # = TINY_CLIP's hidden size
    "axes_dims_rope": (4, 6, 6),
}
TINY_FLUX_VAE = {
    **FLUX_VAE,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=4)
TINY_T5 = dict(
    d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
)  # fmt: skip
TINY_WAN = {
    **WAN_1_3B,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,  # = TINY_T5's d_model
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
}
TINY_WAN_VAE: dict[str, Any] = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
)
# Wan2.1-I2V: noisy latents (16) + first-frame mask (4) + encoded condition video (16) in, CLIP-vision image
# tokens through added K/V projections.
TINY_WAN_IMAGE_DIM = 16  # the CLIP-vision hidden size = the I2V transformer's image_dim
TINY_WAN_I2V = {
    **TINY_WAN,
    "in_channels": 36,
    "image_dim": TINY_WAN_IMAGE_DIM,
    "added_kv_proj_dim": TINY_WAN["num_attention_heads"] * TINY_WAN["attention_head_dim"],
}
TINY_CLIP_VISION = dict(
    hidden_size=TINY_WAN_IMAGE_DIM,
    intermediate_size=32,
    projection_dim=TINY_WAN_IMAGE_DIM,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    hidden_act="gelu",
)

# The diffusion LMs SGLang's dLLM engine runs (config.json values as published): LLaDA2.0-mini
# (LLaDA2MoeModelLM, ~16 B parameters in mixtures of experts) and SDAR-1.7B (SDARForCausalLM, Qwen3-1.7B's shape).
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
# Their tiny shapes: the same architectures at widths of 64.
TINY_LM = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, head_dim=16)
TINY_LLADA2 = {
    **LLADA2_MINI,
    **TINY_LM,
    "num_key_value_heads": 2,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "n_group": 2,
    "topk_group": 1,
}
TINY_SDAR = {**SDAR_1_7B, **TINY_LM, "num_key_value_heads": 2}


# The transformers text engine's masked LM (ModernBERT: bidirectional, rotary, gated MLP; see tiny_models) at
# LLaDA-8B's widths (GSAI-ML/LLaDA-8B-Instruct: 32 layers of 4096, 32 heads, MLP 12288, vocabulary 126,464):
# about 7.5 B parameters, to measure the project's own decoder at a real model's cost per forward.
LLADA_8B_VOCAB = 126464
LLADA_8B_MLM = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=32, num_attention_heads=32)
TINY_MLM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def masked_lm_config(tokenizer: Any, shape: dict[str, Any], vocab_size: int | None = None) -> Any:
    """A ModernBERT masked-LM config for ``tokenizer`` (its special tokens; ``vocab_size``: the tokenizer's unless
    given), every layer global attention (ModernBERT's sliding-window layers have no LLaDA counterpart)."""
    from transformers import ModernBertConfig

    return ModernBertConfig(
        vocab_size=vocab_size or len(tokenizer),
        max_position_embeddings=4096,
        layer_types=["full_attention"] * shape["num_hidden_layers"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        cls_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.eos_token_id,
        mask_token_id=tokenizer.mask_token_id,
        **shape,
    )


def clip_text_config(tokenizer: Any, shape: dict[str, Any]) -> Any:
    """FLUX's CLIP text encoder config for ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )


def t5_encoder_kwargs(vocab_size: int, shape: dict[str, Any]) -> dict[str, Any]:
    """A T5 v1.1 (FLUX) or UMT5 (Wan) encoder-only config: gated-GELU, no decoder, no dropout."""
    return dict(
        vocab_size=vocab_size,
        num_decoder_layers=0,
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


def wan_scheduler() -> Any:
    """Wan2.1's shipped scheduler: UniPC in flow-matching mode, shift 3.0."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
