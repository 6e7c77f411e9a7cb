"""Rendering the model repository for a host, and engine configuration (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from diffusion_runtime.engines.base import EngineConfig
from diffusion_runtime.engines.sglang_engine import generator_kwargs
from diffusion_runtime.serve import REPOSITORY, ModelSpec, render_repository
from diffusion_runtime.triton_io import model_parameters


def load(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_committed_config_is_the_gpu_deployment() -> None:
    config = load(REPOSITORY / "image_diffusion" / "config.pbtxt")
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert config.parameters["task"].string_value == "image"
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert all(i.optional for i in config.input if i.name != "PROMPT")


def test_render_for_cpu_host_and_for_gpus(tmp_path: Path) -> None:
    spec = ModelSpec("image_diffusion", {"model_path": "/models/x", "engine": "diffusers"}, instances_per_gpu=2)
    cpu = load(render_repository([spec], tmp_path / "cpu", gpus=[]) / "image_diffusion" / "config.pbtxt")
    assert cpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cpu.instance_group[0].count == 2
    assert cpu.parameters["model_path"].string_value == "/models/x"
    assert cpu.parameters["engine"].string_value == "diffusers"
    assert cpu.parameters["default_steps"].string_value == "28", "untouched parameters are kept"

    gpu = load(render_repository([spec], tmp_path / "gpu", gpus=[0, 1]) / "image_diffusion" / "config.pbtxt")
    assert gpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(gpu.instance_group[0].gpus) == [0, 1]
    assert (tmp_path / "gpu" / "image_diffusion" / "1" / "model.py").exists()


def test_environment_overrides_config_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {
        "name": "image_diffusion",
        "parameters": {"model_path": {"string_value": "a"}, "dtype": {"string_value": "auto"}},
    }
    monkeypatch.setenv("IMAGE_DIFFUSION_MODEL_PATH", "/override")
    params = model_parameters({"model_config": json.dumps(config)})
    assert params == {"model_path": "/override", "dtype": "auto"}


def test_engine_choice() -> None:
    assert EngineConfig(model_path="m", engine="auto", device="cpu").resolved_engine() == "diffusers"
    assert EngineConfig(model_path="m", engine="sglang", device="cpu").resolved_engine() == "sglang"
    with pytest.raises(ValueError):
        EngineConfig.from_parameters({"engine": "tensorrt"}, "cpu")


def test_sglang_generator_kwargs() -> None:
    config = EngineConfig.from_parameters(
        {
            "model_path": "/m",
            "engine": "sglang",
            "sglang_model_id": "FLUX.1-dev",
            "sglang_sleep_on_idle": "true",
            "sglang_attention_backend": "torch_sdpa",
            "sglang_args": '{"tp_size": 2}',
            "num_gpus": "2",
        },
        "cuda:0",
    )
    assert generator_kwargs(config) == {
        "model_path": "/m",
        "backend": "auto",
        "num_gpus": 2,
        "model_id": "FLUX.1-dev",
        "attention_backend": "torch_sdpa",
        "sleep_on_idle": True,
        "tp_size": 2,
    }
