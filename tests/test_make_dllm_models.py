"""The diffusion-LM checkpoint builder for GPU hosts (``scripts/gpu/make_models.py llada2|sdar``), at toy widths on
CPU: the folder is one SGLang's dLLM engine accepts (architecture, configuration module, weights named and shaped
as the published checkpoint, an index, a tokenizer with a chat template), and the full shapes have the published
sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffusion_runtime import model_shapes
from diffusion_runtime.dllm.sglang_engine import check_architecture
from scripts.gpu import make_models


def test_published_shapes_have_the_published_sizes() -> None:
    llada2 = sum(_numel(s) for s in make_models.llada2_weight_shapes(model_shapes.LLADA2_MINI).values())
    sdar = sum(_numel(s) for s in make_models.sdar_weight_shapes(model_shapes.SDAR_1_7B).values())
    assert 16.0e9 < llada2 < 16.5e9, "LLaDA2.0-mini: 16 B parameters (about 1.4 B active)"
    assert 1.7e9 < sdar < 2.1e9, "SDAR-1.7B: Qwen3-1.7B's 2.0 B parameters with tied embeddings"


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensors a safetensors file holds, from its header (8 bytes of length, then JSON)."""
    with path.open("rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


@pytest.mark.parametrize("kind", ["llada2", "sdar"])
def test_mini_folder_is_a_checkpoint_sglang_accepts(kind: str, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / f"my-{kind}"  # any name: SGLang places it by architecture
    info = make_models.build(kind, out, tiny_models["tiny-llada"], mini=True, device="cpu")
    check_architecture(str(out))
    config = AutoConfig.from_pretrained(str(out), trust_remote_code=True)
    shape = model_shapes.TINY_LLADA2 if kind == "llada2" else model_shapes.TINY_SDAR
    assert config.architectures == shape["architectures"] and config.head_dim == shape["head_dim"]
    expected = (make_models.llada2_weight_shapes if kind == "llada2" else make_models.sdar_weight_shapes)(shape)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected)
    found = {}
    for filename in set(index["weight_map"].values()):
        found |= safetensors_shapes(out / filename)
    assert found == expected
    assert info["parameters"]["model"] == sum(_numel(s) for s in expected.values())
    tokenizer = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    assert tokenizer.chat_template and len(tokenizer) < config.vocab_size


@pytest.mark.parametrize("kind", ["llada2", "sdar"])
def test_ids_the_tokenizer_lacks_score_zero_so_random_answers_decode(kind: str, tmp_path: Path, tiny_models) -> None:
    """The published vocabularies dwarf the tiny tokenizer: with every output row random, greedy answers would be
    ids that decode to nothing. Rows past the tokenizer are zero; the tokenizer's own rows stay random."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    out = tmp_path / kind
    make_models.build(kind, out, tiny_models["tiny-llada"], mini=True, device="cpu")
    used = len(AutoTokenizer.from_pretrained(str(out), trust_remote_code=True))
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    name = "lm_head.weight" if "lm_head.weight" in index else "model.embed_tokens.weight"  # SDAR ties them
    with safe_open(str(out / index[name]), framework="pt") as file:
        rows = file.get_tensor(name)
    assert not rows[used:].any() and rows[:used].abs().sum(dim=1).gt(0).all()


def test_the_masked_lm_at_llada_8b_widths_has_its_size_and_the_mini_one_answers(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """``llada-mlm``: the transformers engine's model class at LLaDA-8B's widths (7.5 B parameters; counted on the
    meta device); built at the tiny widths, the project's engine loads it and answers in text."""
    import torch
    from transformers import AutoTokenizer, ModernBertForMaskedLM

    from diffusion_runtime.dllm import TextEngineConfig
    from diffusion_runtime.dllm.transformers_engine import TransformersTextEngine
    from diffusion_runtime.params.text import TextLimits, validate_text_params

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_models["tiny-llada"]))
    with torch.device("meta"):
        full = ModernBertForMaskedLM(
            model_shapes.masked_lm_config(tokenizer, model_shapes.LLADA_8B_MLM, model_shapes.LLADA_8B_VOCAB)
        )
    assert 7.0e9 < sum(p.numel() for p in full.parameters()) < 8.0e9

    out = tmp_path / "mlm"
    info = make_models.build("llada-mlm", out, tiny_models["tiny-llada"], mini=True, device="cpu")
    assert info["parameters"]["model"] > 0 and info["shape_digest"] == make_models.shape_digest("llada-mlm", True)
    engine = TransformersTextEngine(TextEngineConfig(model_path=str(out), engine="transformers"))
    params = validate_text_params(TextLimits(), prompt="Hello", max_tokens=8, block_length=8, steps=8)
    deltas = list(engine.generate(params, lambda _done, _total: None))
    assert deltas[-1].finish_reason in ("stop", "length") and deltas[-1].completion_tokens > 0
