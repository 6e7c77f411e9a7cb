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
