"""The image engines' speed settings (``torch_compile``, ``fuse_qkv_projections``, ``attention_backend``,
``pixels_on_device``, ``step_cache``, ``warmup``) on the tiny FLUX, in this process: each loads and generates,
the exact ones stay within rounding of the plain engine, the lossy one only when asked for, and bad values fail
the load saying why. The served load (warm-up in Triton's metrics and log) is the one end-to-end test here."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from diffusion_runtime.engines.base import EngineConfig, warm_up_image
from diffusion_runtime.engines.diffusers_engine import DiffusersImageEngine, DiffusersVideoEngine
from diffusion_runtime.engines.diffusers_speed import to_uint8_images
from diffusion_runtime.engines.sglang_engine import generator_kwargs, step_cache_sampling
from diffusion_runtime.errors import EngineFailure, GenerationCancelled
from diffusion_runtime.launcher.repository import REPOSITORY
from diffusion_runtime.media import to_uint8_hwc
from diffusion_runtime.params import ImageLimits, ImageParams, validate_image_params
from tests.conftest import Stack, metric_value, start_stack, tiny_image_spec

torch = pytest.importorskip("torch")

LIMITS = ImageLimits(default_width=64, default_height=64)
PARAMS = validate_image_params(LIMITS, prompt="a red fox in the snow", n=2, num_inference_steps=4, seed=7)


def _noop(_done: int, _total: int) -> None:
    return None


def engine(tiny_models: dict[str, Path], **settings: str) -> DiffusersImageEngine:
    parameters = {"model_path": str(tiny_models["tiny-flux"]), "engine": "diffusers", "cpu_threads": "1", **settings}
    return DiffusersImageEngine(EngineConfig.from_parameters(parameters, "cpu"))


def max_difference(images: list[np.ndarray], reference: list[np.ndarray]) -> int:
    assert [i.shape for i in images] == [r.shape for r in reference]
    pairs = zip(images, reference, strict=True)
    return max(int(np.abs(i.astype(np.int16) - r.astype(np.int16)).max()) for i, r in pairs)


@pytest.fixture(scope="module")
def exact(tiny_models: dict[str, Path]) -> list[np.ndarray]:
    """The plain engine's images for ``PARAMS``: what every exact setting is held to."""
    return engine(tiny_models).generate(PARAMS, _noop)


# --- parsing -------------------------------------------------------------------------------------------------------


def test_the_committed_config_compiles_blocks_on_a_gpu_with_diffusers_and_nothing_elsewhere() -> None:
    """The measured default: exact settings only, the transformer's blocks compiled where that pays (the diffusers
    engine on a GPU), and the plain engine on a CPU and on SGLang's engine."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((REPOSITORY / "image_diffusion" / "config.pbtxt").read_text(), mc.ModelConfig())
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    for key in ("torch_compile", "fuse_qkv_projections", "attention_backend", "step_cache", "warmup"):
        assert key in parameters, f"{key} is documented in config.pbtxt"

    on_gpu = EngineConfig.from_parameters({**parameters, "engine": "diffusers"}, "cuda:0")
    assert on_gpu.torch_compile == "blocks" and on_gpu.speed_settings() == ["torch_compile"] and on_gpu.warms_up()
    for engine, device in (("diffusers", "cpu"), ("sglang", "cuda:0"), ("auto", "cpu")):
        plain = EngineConfig.from_parameters({**parameters, "engine": engine}, device)
        assert plain.torch_compile == "off" and plain.speed_settings() == [] and not plain.warms_up()
    chosen = EngineConfig.from_parameters({**parameters, "engine": "diffusers", "torch_compile": "transformer"}, "cpu")
    assert chosen.torch_compile == "transformer"
    assert EngineConfig.from_parameters({}, "cuda:0").torch_compile == "off", "a model without the key is not compiled"


def test_settings_parse_and_bad_values_fail() -> None:
    config = EngineConfig.from_parameters({"torch_compile": "Blocks", "step_cache": "off", "warmup_steps": "3"}, "cpu")
    assert (config.torch_compile, config.step_cache, config.warmup_steps) == ("blocks", "", 3)
    assert config.speed_settings() == ["torch_compile"] and config.warms_up()
    assert EngineConfig.from_parameters({"attention_backend": "native"}, "cpu").warms_up()
    assert not EngineConfig.from_parameters({"torch_compile": "transformer", "warmup": "off"}, "cpu").warms_up()
    assert EngineConfig.from_parameters({"warmup": "on"}, "cpu").warms_up()
    for key, value in (("torch_compile", "max"), ("warmup", "sometimes")):
        with pytest.raises(ValueError, match=key):
            EngineConfig.from_parameters({key: value}, "cpu")


# --- exact settings ----------------------------------------------------------------------------------------------


def test_pixels_rounded_on_the_device_are_the_bytes_of_the_numpy_path() -> None:
    """Every float32 boundary case of rounding to 1/255 (halves, just below and above them, out of range), in each
    dtype a VAE decodes in: ``to_uint8_images`` gives what ``to_uint8_hwc`` gives for the pipeline's numpy output."""
    generator = torch.Generator().manual_seed(0)
    halves = (torch.arange(256, dtype=torch.float32) + 0.5) / 255
    edges = torch.cat([halves, torch.nextafter(halves, halves + 1), torch.nextafter(halves, halves - 1)])
    values = torch.cat([edges, torch.tensor([-1.0, -0.0, 0.0, 1.0, 1.5]), torch.rand(4096, generator=generator)])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        images = values[: 3 * 24 * 64].reshape(1, 3, 24, 64).to(dtype).repeat(2, 1, 1, 1)
        numpy_path = images.cpu().permute(0, 2, 3, 1).float().numpy()  # diffusers' output_type="np"
        expected = [to_uint8_hwc(image) for image in numpy_path]
        got = to_uint8_images(images)
        assert all(g.dtype == np.uint8 and g.flags.c_contiguous for g in got)
        assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True)), dtype


@pytest.mark.parametrize(
    ("settings", "tolerance"),
    [
        ({"pixels_on_device": "true"}, 0),
        ({"fuse_qkv_projections": "true"}, 1),  # the same weights, concatenated: one matmul's summation order
        ({"attention_backend": "native"}, 0),
        ({"attention_backend": "_native_math"}, 1),
        ({"attention_backend": "_native_flash"}, 1),  # PyTorch's flash kernel has a CPU version too
        ({"warmup": "on", "warmup_steps": "1"}, 0),
        ({"fuse_qkv_projections": "true", "attention_backend": "_native_flash", "pixels_on_device": "true"}, 1),
    ],
    ids=lambda value: ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None,
)
def test_exact_settings_load_and_stay_within_rounding(
    tiny_models: dict[str, Path], exact: list[np.ndarray], settings: dict[str, str], tolerance: int
) -> None:
    loaded = engine(tiny_models, **settings)
    warm_up_image(loaded, loaded.config, LIMITS)
    assert max_difference(loaded.generate(PARAMS, _noop), exact) <= tolerance


def test_fused_projections_replace_three_matmuls_by_one(tiny_models: dict[str, Path]) -> None:
    transformer = engine(tiny_models, fuse_qkv_projections="true").pipe.transformer
    attention = [m for m in transformer.modules() if hasattr(m, "fused_projections")]
    assert attention and all(m.fused_projections for m in attention)


def test_an_unknown_attention_backend_fails_the_load_listing_the_names(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"attention_backend 'fastest' is not one of .*_native_cudnn"):
        engine(tiny_models, attention_backend="fastest")
    with pytest.raises(ValueError, match=r"attention_backend 'sage' cannot run on this host: .*sageattention"):
        engine(tiny_models, attention_backend="sage")


def test_a_backend_this_device_cannot_run_fails_at_the_load_warm_up(tiny_models: dict[str, Path]) -> None:
    """cuDNN attention exists in the dispatcher but not on a CPU: the warm-up that ``auto`` runs for a named backend
    turns that into a load failure naming the setting, rather than a failed first request."""
    loaded = engine(tiny_models, attention_backend="_native_cudnn")
    with pytest.raises(EngineFailure, match=r"warm-up generation failed \(speed settings: attention_backend='_nat"):
        warm_up_image(loaded, loaded.config, LIMITS)


def test_warm_up_generates_at_the_default_size_and_says_so(tiny_models: dict[str, Path], caplog) -> None:
    loaded = engine(tiny_models, warmup="on", warmup_steps="1")
    calls: list[ImageParams] = []
    generate = loaded.generate
    loaded.generate = lambda params, on_step, *a: calls.append(params) or generate(params, on_step, *a)  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        seconds = warm_up_image(loaded, loaded.config, LIMITS)
    assert seconds is not None and seconds > 0
    assert [(p.width, p.height, p.num_inference_steps, p.n) for p in calls] == [(64, 64, 1, 1)]
    assert "warm-up generation (64x64, 1 steps, torch_compile=off)" in caplog.text
    assert warm_up_image(engine(tiny_models), EngineConfig(model_path="m"), LIMITS) is None  # off by default


# --- compilation --------------------------------------------------------------------------------------------------


def test_compile_settings_reach_torch_compile(tiny_models: dict[str, Path], monkeypatch) -> None:
    """What each ``torch_compile`` value asks torch for (recorded, not compiled: compiling ``blocks`` takes ~95 s
    on a 2-core CPU; ``transformer`` is compiled for real in the next test)."""
    from diffusers import FluxTransformer2DModel

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(FluxTransformer2DModel, "compile", lambda self, **kw: calls.append(("module", kw)))
    monkeypatch.setattr(
        FluxTransformer2DModel, "compile_repeated_blocks", lambda self, **kw: calls.append(("blocks", kw))
    )
    engine(tiny_models, torch_compile="blocks", compile_mode="max-autotune-no-cudagraphs")
    engine(tiny_models, torch_compile="transformer", step_cache="first-block")
    assert calls == [
        ("blocks", {"fullgraph": True, "mode": "max-autotune-no-cudagraphs"}),
        ("module", {"fullgraph": False}),  # a step cache's hooks decide in Python: no single graph
    ]


@pytest.mark.e2e  # inductor starts compile worker processes
def test_a_compiled_transformer_compiles_during_warm_up_not_in_the_first_request(
    tiny_models: dict[str, Path], exact: list[np.ndarray]
) -> None:
    """Real inductor compilation on the CPU (about 45 s on 2 cores with a cold cache)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    loaded = engine(tiny_models, torch_compile="transformer")
    assert warm_up_image(loaded, loaded.config, LIMITS) is not None  # auto: on, since the transformer compiles
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    single = validate_image_params(LIMITS, prompt=PARAMS.prompt, n=1, num_inference_steps=4, seed=7)
    assert max_difference(loaded.generate(single, _noop), exact[:1]) <= 2
    assert counters["stats"]["unique_graphs"] == graphs, "the first request after warm-up compiled again"
    torch._dynamo.reset()


# --- step caching -------------------------------------------------------------------------------------------------


def test_step_caching_is_off_unless_asked_for_and_changes_the_images_when_on(
    tiny_models: dict[str, Path], exact: list[np.ndarray]
) -> None:
    plain = engine(tiny_models)
    assert not plain.pipe.transformer.is_cache_enabled
    assert max_difference(plain.generate(PARAMS, _noop), exact) == 0
    # A threshold no residual change reaches: every step after the first reuses the first one's blocks.
    cached = engine(tiny_models, step_cache="first-block", step_cache_args='{"threshold": 1e9}')
    assert cached.pipe.transformer.is_cache_enabled
    first = cached.generate(PARAMS, _noop)
    assert max_difference(first, exact) > 0
    assert max_difference(cached.generate(PARAMS, _noop), first) == 0, "one request's cache leaked into the next"


def test_a_cancelled_request_leaves_no_cached_state_behind(tiny_models: dict[str, Path]) -> None:
    cached = engine(tiny_models, step_cache="first-block", step_cache_args='{"threshold": 1e9}')
    first = cached.generate(PARAMS, _noop)

    def cancel_after_two(done: int, _total: int) -> None:
        if done == 2:
            raise GenerationCancelled("cancelled")

    other = validate_image_params(LIMITS, prompt="something else entirely", n=2, num_inference_steps=4, seed=99)
    with pytest.raises(GenerationCancelled):
        cached.generate(other, cancel_after_two)
    assert max_difference(cached.generate(PARAMS, _noop), first) == 0


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("taylorseer", ""),
        ("first-block", '{"threshold": 0.1}'),
        ("cache-dit", '{"Fn_compute_blocks": 1, "max_warmup_steps": 2, "residual_diff_threshold": 0.5}'),
    ],
)
def test_each_step_cache_loads_and_generates(tiny_models: dict[str, Path], method: str, settings: str) -> None:
    loaded = engine(tiny_models, step_cache=method, step_cache_args=settings)
    assert warm_up_image(loaded, loaded.config, LIMITS) is not None  # auto: a step cache is tried at load
    first = loaded.generate(PARAMS, _noop)
    assert [i.shape for i in first] == [(64, 64, 3)] * 2
    assert max_difference(loaded.generate(PARAMS, _noop), first) == 0


def test_cache_settings_the_model_does_not_fit_fail_at_the_load_warm_up(tiny_models: dict[str, Path]) -> None:
    """cache-dit's default computes 8 blocks exactly; the toy has 2. cache-dit says so when it is enabled or at the
    first call (observed: either, in one process), which is the load's warm-up."""
    with pytest.raises((ValueError, EngineFailure), match=r"step_cache.*'cache-dit'"):
        loaded = engine(tiny_models, step_cache="cache-dit")
        warm_up_image(loaded, loaded.config, LIMITS)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"step_cache": "teacache"}, r"step_cache must be empty \(exact\) or one of"),
        ({"step_cache_args": '{"threshold": 0.1}'}, "step_cache_args is set but step_cache is off"),
        ({"step_cache": "first-block", "step_cache_args": '{"treshold": 0.1}'}, "does not fit step_cache"),
        ({"step_cache": "first-block", "step_cache_args": "[0.1]"}, "must be a JSON object"),
    ],
)
def test_bad_step_cache_settings_fail_the_load(tiny_models: dict[str, Path], settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine(tiny_models, **settings)


# --- other engines ------------------------------------------------------------------------------------------------


def test_the_video_engine_refuses_image_speed_settings() -> None:
    with pytest.raises(ValueError, match="torch_compile: image-model settings only"):
        DiffusersVideoEngine(EngineConfig.from_parameters({"model_path": "/m", "torch_compile": "blocks"}, "cpu"))


def test_sglang_gets_its_own_levers_for_the_same_settings() -> None:
    def config(**settings: str) -> EngineConfig:
        return EngineConfig.from_parameters({"model_path": "/m", "engine": "sglang", **settings}, "cuda:0")

    assert "enable_torch_compile" not in generator_kwargs(config())
    kwargs = generator_kwargs(config(torch_compile="blocks"))
    assert kwargs["enable_torch_compile"] is True and kwargs["regional_compile"] is True
    assert "regional_compile" not in generator_kwargs(config(torch_compile="transformer"))
    assert step_cache_sampling(config()) == {}
    assert step_cache_sampling(config(step_cache="cache-dit", step_cache_args='{"residual_diff_threshold": 0.1}')) == {
        "enable_cache_dit": True,
        "cache_dit_params": {"residual_diff_threshold": 0.1},
    }
    for settings, message in (
        ({"fuse_qkv_projections": "true"}, "fuse_qkv_projections: DiffGenerator has no switch"),
        ({"attention_backend": "_native_cudnn"}, "sglang_attention_backend"),
        ({"step_cache": "first-block"}, "cache-dit only"),
    ):
        with pytest.raises(ValueError, match=message):
            generator_kwargs(config(**settings))


# --- served -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The image model with the exact speed settings that run on a CPU, warmed up at load."""
    settings = {"fuse_qkv_projections": "true", "attention_backend": "_native_flash", "pixels_on_device": "true"}
    spec = tiny_image_spec(tiny_models, "diffusers", cpu_threads="1", warmup_steps="1", **settings)
    yield from start_stack([spec], tmp_path_factory.mktemp("fast-stack"))


@pytest.mark.e2e
def test_the_served_model_warms_up_while_loading(fast_stack: Stack) -> None:
    with fast_stack.http() as http:
        before = metric_value(http.get("/metrics").text, "diffusion_seconds_total", phase="warmup")
        response = http.post("/v1/images/generations", json={"model": "tiny-flux", "prompt": "a fox", "seed": 1})
        assert response.status_code == 200, response.text
        text = http.get("/metrics").text
    assert before > 0, "the warm-up ran at load and was counted"
    assert metric_value(text, "diffusion_seconds_total", phase="warmup") == before  # and only there
    log = Path(fast_stack.triton.log_file).read_text()
    assert "warm-up generation (64x64, 1 steps, torch_compile=off)" in log
