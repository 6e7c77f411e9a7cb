"""Rendering the model repository for a host, and engine configuration (no server needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from diffusion_runtime.engines.base import EngineConfig
from diffusion_runtime.engines.sglang_engine import generator_kwargs
from diffusion_runtime.launcher.repository import REPOSITORY, ModelSpec, render_repository
from diffusion_runtime.triton_io import model_parameters, pin_instance_device


def load(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_committed_config_is_the_gpu_deployment() -> None:
    config = load(REPOSITORY / "image_diffusion" / "config.pbtxt")
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert config.parameters["task"].string_value == "image"
    # No dynamic batcher (Triton 2.51's stalls, see the config): the frontend bounds the queue instead.
    assert not config.HasField("dynamic_batching")
    assert int(config.parameters["max_queue_size"].string_value) > 0
    assert config.max_batch_size == 0
    assert all(i.optional for i in config.input if i.name != "PROMPT")


def test_queue_bound_goes_where_the_model_is_bounded(tmp_path: Path) -> None:
    specs = [
        ModelSpec("image_diffusion", {"model_path": "/m"}, max_queue_size=3),
        ModelSpec("video_generation", {"model_path": "/m"}, max_queue_size=5),
    ]
    repository = render_repository(specs, tmp_path / "repo", gpus=[])
    image = load(repository / "image_diffusion" / "config.pbtxt")
    video = load(repository / "video_generation" / "config.pbtxt")
    assert image.parameters["max_queue_size"].string_value == "3"
    assert not image.HasField("dynamic_batching")
    assert video.dynamic_batching.default_queue_policy.max_queue_size == 5
    assert "max_queue_size" not in video.parameters


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


def test_multi_gpu_rendering_places_instances_per_gpu_or_per_gpu_set(tmp_path: Path) -> None:
    per_gpu = ModelSpec("image_diffusion", {}, instances_per_gpu=1)
    config = load(render_repository([per_gpu], tmp_path / "a", gpus=[0, 1, 2, 3]) / "image_diffusion" / "config.pbtxt")
    assert [(g.kind, list(g.gpus), g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, [0, 1, 2, 3], 1)
    ]
    spanning = ModelSpec("image_diffusion", {}, gpus_per_instance=2)
    config = load(render_repository([spanning], tmp_path / "b", gpus=[0, 1, 2, 3]) / "image_diffusion" / "config.pbtxt")
    assert [(g.name, g.kind, g.count) for g in config.instance_group] == [
        ("gpus-0-1", mc.ModelInstanceGroup.KIND_MODEL, 1),
        ("gpus-2-3", mc.ModelInstanceGroup.KIND_MODEL, 1),
    ]
    assert config.parameters["num_gpus"].string_value == "2"
    with pytest.raises(ValueError, match="cannot be split"):
        render_repository([spanning], tmp_path / "c", gpus=[0, 1, 2])


@pytest.mark.parametrize(
    ("args", "visible", "expected"),
    [
        ({"model_instance_kind": "GPU", "model_instance_device_id": "1"}, None, "1"),
        ({"model_instance_kind": "GPU", "model_instance_device_id": "1"}, "4,5,6", "5"),
        ({"model_instance_kind": "MODEL", "model_instance_name": "gpus-2-3_0"}, None, "2,3"),
        ({"model_instance_kind": "MODEL", "model_instance_name": "gpus-0-1_0"}, "6,7", "6,7"),
    ],
)
def test_each_instance_pins_its_own_gpus(monkeypatch: pytest.MonkeyPatch, args, visible, expected) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert pin_instance_device(args) == "cuda:0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_cpu_instances_touch_no_gpu_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pin_instance_device({"model_instance_kind": "CPU", "model_instance_device_id": "0"}) == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


class _FakeTritonUtils:
    """Just enough of ``triton_python_backend_utils`` to see which tensors a response is built with."""

    class Tensor:
        def __init__(self, name: str, array) -> None:
            self.name, self.array = name, array

    class InferenceResponse:
        def __init__(self, output_tensors) -> None:
            self.output_tensors = output_tensors


def test_responses_hold_only_the_outputs_the_client_asked_for() -> None:
    """Triton would drop the others inside ``send`` without the GIL (a dead stub on GPU hosts), so the model must."""
    import numpy as np

    from diffusion_runtime.triton_io import inference_response

    outputs = {name: np.zeros(1) for name in ("IMAGES", "SEEDS", "INFERENCE_TIME_S")}
    subset = inference_response(_FakeTritonUtils, outputs, frozenset({"IMAGES", "SEEDS"}))
    assert [t.name for t in subset.output_tensors] == ["IMAGES", "SEEDS"]
    everything = inference_response(_FakeTritonUtils, outputs, frozenset())
    assert [t.name for t in everything.output_tensors] == ["IMAGES", "SEEDS", "INFERENCE_TIME_S"]


class _FakeStub:
    """Just enough of ``triton_python_backend_utils`` for the shared model skeleton."""

    TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

    class TritonModelException(Exception):
        pass

    class TritonError:
        INVALID_ARG, CANCELLED, INTERNAL = "INVALID_ARG", "CANCELLED", "INTERNAL"

        def __init__(self, message: str, code: str) -> None:
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, error=None) -> None:
            self.error = error

    @staticmethod
    def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
        return model_config.get("model_transaction_policy", {}).get("decoupled", False)


def test_a_model_refuses_a_transaction_policy_it_was_not_written_for() -> None:
    from diffusion_runtime.contract import IMAGE, VIDEO
    from diffusion_runtime.triton_model import check_transaction_policy

    decoupled = {"model_transaction_policy": {"decoupled": True}}
    check_transaction_policy(_FakeStub, decoupled, VIDEO)
    check_transaction_policy(_FakeStub, {}, IMAGE)
    with pytest.raises(_FakeStub.TritonModelException, match="video_generation needs a decoupled"):
        check_transaction_policy(_FakeStub, {}, VIDEO)
    with pytest.raises(_FakeStub.TritonModelException, match="image_diffusion needs a non-decoupled"):
        check_transaction_policy(_FakeStub, decoupled, IMAGE)


def test_a_failed_request_is_counted_and_answered_even_when_its_stream_is_gone(caplog) -> None:
    """The error response's send fails once the client cancelled: logged, never raised into the stub."""
    from diffusion_runtime.contract import TEXT
    from diffusion_runtime.errors import InvalidRequest
    from diffusion_runtime.triton_model import DiffusionModel

    class Model(DiffusionModel):
        contract = TEXT
        pb_utils = _FakeStub

    class Metrics:
        def __init__(self) -> None:
            self.outcomes: list[str] = []

        def request(self, outcome: str) -> None:
            self.outcomes.append(outcome)

    class Sender:
        def __init__(self, fails: bool) -> None:
            self.fails, self.sent = fails, []

        def send(self, response, flags: int = 0) -> None:
            if self.fails:
                raise RuntimeError("the stream is closed")
            self.sent.append((response, flags))

    model = Model()
    model.metrics = Metrics()
    open_stream, closed_stream = Sender(fails=False), Sender(fails=True)
    model.fail(open_stream, InvalidRequest("bad seed", "seed"))
    [(response, flags)] = open_stream.sent
    assert flags == _FakeStub.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    assert response.error.code == "INVALID_ARG" and "invalid argument [seed]" in response.error.message
    with caplog.at_level("WARNING", logger="dllm"):
        model.fail(closed_stream, RuntimeError("engine died"))
    assert model.metrics.outcomes == ["InvalidRequest", "RuntimeError"]
    assert "dllm failed" in caplog.text and "could not send the final response" in caplog.text


def test_sglang_transformer_that_cannot_be_imported_is_named_at_load(tmp_path: Path) -> None:
    """SGLang itself only logs such an import failure and runs diffusers' transformer instead: the engine names it.
    The folder's transformer class is registered with SGLang's own extension API, pointing at a missing module."""
    from sglang.multimodal_gen.runtime.models.registry import ModelRegistry

    from diffusion_runtime.engines.sglang_engine import native_transformer_problem

    ModelRegistry.register_model("TdTransformerWithMissingKernels", "td_kernels_not_installed.dit:Transformer")
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "WanPipeline", "transformer": ["diffusers", "TdTransformerWithMissingKernels"]})
    )
    problem = native_transformer_problem(str(tmp_path))
    assert problem is not None and "No module named 'td_kernels_not_installed'" in problem

    (tmp_path / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "NoClassSGLangHas"]}))
    assert native_transformer_problem(str(tmp_path)) is None  # diffusers' class is SGLang's own choice then
    assert native_transformer_problem(str(tmp_path / "no-such-folder")) is None
