"""A user's own checkpoint folder, named anything, on the sglang engines: what SGLang needs is derived from the
folder's own ``model_index.json`` / ``config.json``, or loading stops with the parameter to set.

The tiny model folders are copied under arbitrary names. Where sglang imports, the derived name is also resolved by
SGLang's own registry (``sglang.multimodal_gen.registry._get_config_info``, what ``DiffGenerator`` calls) and must
give the pipeline config SGLang uses for the published checkpoint. The load itself needs a GPU (see
``scripts/gpu``); this checks the derivation on any host.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest

from diffusion_runtime.dllm.sglang_engine import SGLANG_DLLM_ARCHITECTURES, check_architecture
from diffusion_runtime.engines import EngineConfig
from diffusion_runtime.engines.sglang_engine import folder_model_id, generator_kwargs

PUBLISHED = {  # derived name -> the hub id SGLang registers it for
    "FLUX.1-dev": "black-forest-labs/FLUX.1-dev",
    "Wan2.1-T2V-1.3B-Diffusers": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "Wan2.1-T2V-14B-Diffusers": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "Wan2.1-I2V-14B-480P-Diffusers": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "Wan2.2-T2V-A14B-Diffusers": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
}


def renamed(tiny_models: dict[str, Path], name: str, folder: Path) -> Path:
    return Path(shutil.copytree(tiny_models[name], folder))


def shaped_wan(folder: Path, pipeline: str, heads: int, *, two_experts: bool = False) -> Path:
    """A Wan folder's two config files in a published shape (no weights: only the configs are read)."""
    (folder / "transformer").mkdir(parents=True)
    index = {"_class_name": pipeline, "transformer": ["diffusers", "WanTransformer3DModel"]}
    index["transformer_2"] = ["diffusers", "WanTransformer3DModel"] if two_experts else [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "transformer" / "config.json").write_text(
        json.dumps({"num_attention_heads": heads, "attention_head_dim": 128})
    )
    return folder


def sglang_pipeline_config(path: str, model_id: str | None) -> str:
    registry = pytest.importorskip("sglang.multimodal_gen.registry")
    info = registry._get_config_info(path, model_id)
    return info.pipeline_config_cls.__name__ if info else "none"


@pytest.mark.parametrize(
    ("tiny", "folder_name", "expected"),
    [
        ("tiny-flux", "mini", "FLUX.1-dev"),
        ("tiny-flux", "my image model", "FLUX.1-dev"),
        ("tiny-wan-t2v", "clips", "Wan2.1-T2V-1.3B-Diffusers"),
        ("tiny-wan-i2v", "animate-me", "Wan2.1-I2V-14B-480P-Diffusers"),
    ],
)
def test_any_folder_name_gets_the_published_models_config(
    tiny_models: dict[str, Path], tmp_path: Path, tiny: str, folder_name: str, expected: str
) -> None:
    folder = renamed(tiny_models, tiny, tmp_path / folder_name)
    assert folder_model_id(str(folder)) == expected
    config = EngineConfig.from_parameters({"model_path": str(folder), "engine": "sglang"}, "cuda:0")
    assert generator_kwargs(config)["model_id"] == expected
    assert sglang_pipeline_config(str(folder), expected) == sglang_pipeline_config(PUBLISHED[expected], None)


@pytest.mark.parametrize(
    ("pipeline", "heads", "two_experts", "expected"),
    [
        ("WanPipeline", 12, False, "Wan2.1-T2V-1.3B-Diffusers"),
        ("WanPipeline", 40, False, "Wan2.1-T2V-14B-Diffusers"),
        ("WanPipeline", 40, True, "Wan2.2-T2V-A14B-Diffusers"),
        ("WanImageToVideoPipeline", 40, False, "Wan2.1-I2V-14B-480P-Diffusers"),
    ],
)
def test_wan_size_comes_from_the_transformer_shape(
    tmp_path: Path, pipeline: str, heads: int, two_experts: bool, expected: str
) -> None:
    folder = shaped_wan(tmp_path / "wan", pipeline, heads, two_experts=two_experts)
    assert folder_model_id(str(folder)) == expected
    assert sglang_pipeline_config(str(folder), expected) == sglang_pipeline_config(PUBLISHED[expected], None)


def test_a_given_sglang_model_id_wins_and_hub_ids_are_left_to_sglang(tiny_models: dict[str, Path]) -> None:
    folder = str(tiny_models["tiny-wan-i2v"])
    given = EngineConfig.from_parameters(
        {"model_path": folder, "engine": "sglang", "sglang_model_id": "Wan2.1-I2V-14B-720P-Diffusers"}, "cuda:0"
    )
    assert generator_kwargs(given)["model_id"] == "Wan2.1-I2V-14B-720P-Diffusers"
    hub = EngineConfig.from_parameters({"model_path": "black-forest-labs/FLUX.1-dev", "engine": "sglang"}, "cuda:0")
    assert "model_id" not in generator_kwargs(hub)


def test_a_folder_sglang_cannot_place_stops_with_the_parameter_to_set(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    folder = renamed(tiny_models, "tiny-flux", tmp_path / "fast")
    config_file = folder / "transformer" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "guidance_embeds": False}))
    with pytest.raises(ValueError, match="engine parameter to diffusers, or sglang_model_id"):
        folder_model_id(str(folder))


def test_dllm_folders_are_placed_by_architecture_not_name(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    llada2 = tmp_path / "my-llada"
    llada2.mkdir()
    (llada2 / "config.json").write_text(json.dumps({"architectures": ["LLaDA2MoeModelLM"]}))
    check_architecture(str(llada2))  # any name: SGLang reads the architecture
    check_architecture("inclusionAI/LLaDA2.0-mini-preview")  # a hub id is SGLang's to resolve
    masked_lm = renamed(tiny_models, "tiny-llada", tmp_path / "LLaDA2.0-mini")
    with pytest.raises(ValueError, match="ModernBertForMaskedLM: set the engine parameter to transformers"):
        check_architecture(str(masked_lm))


def test_dllm_architectures_are_the_ones_sglang_knows() -> None:
    config = pytest.importorskip("sglang.srt.dllm.config")
    source = inspect.getsource(config.DllmConfig.from_server_args)
    assert all(f'"{name}"' in source for name in SGLANG_DLLM_ARCHITECTURES)
