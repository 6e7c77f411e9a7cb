"""The ``video_generation`` model on a real tritonserver, driven over gRPC streaming as any Triton client would:
progress then the MP4, seeds, image-to-video, validation errors, cancellation, both engines, perf_analyzer.

Each engine gets its own server, scoped to a test class so the first is stopped before the second starts
(two engines on two cores would slow each other down).
"""

from __future__ import annotations

import io
import json
import queue
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from diffusion_runtime.launcher.processes import TritonServer
from diffusion_runtime.launcher.repository import PROJECT_ROOT, REPOSITORY, ModelSpec, render_repository
from diffusion_runtime.media import probe_mp4
from tests.conftest import metric_value, wait_for

pytestmark = pytest.mark.e2e  # starts tritonserver and runs perf_analyzer

PERF_INPUT = PROJECT_ROOT / "benchmarks" / "perf_inputs" / "video_generation_t2v.json"
T2V, I2V = "video_generation", "video_generation_i2v"
SMALL = dict(HEIGHT=64, WIDTH=64, NUM_FRAMES=9, FPS=8, NUM_INFERENCE_STEPS=3)


def video_specs(tiny_models: dict[str, Path], engine: str, **parameters: str) -> list[ModelSpec]:
    """The tiny T2V checkpoint as ``video_generation`` and the tiny I2V one as ``video_generation_i2v``, both
    from the committed model folder."""
    common = {"engine": engine, "default_width": "64", "default_height": "64", "default_steps": "2", **parameters}
    return [
        ModelSpec(T2V, {**common, "model_path": str(tiny_models["tiny-wan-t2v"]), "served_model_name": "tiny-wan-t2v"}),
        ModelSpec(
            I2V,
            {
                **common,
                "model_path": str(tiny_models["tiny-wan-i2v"]),
                "served_model_name": "tiny-wan-i2v",
                "video_mode": "i2v",
            },
            source=REPOSITORY / "video_generation",
        ),
    ]


def serve(specs: list[ModelSpec], workdir: Path) -> Iterator[TritonServer]:
    repository = render_repository(specs, workdir / "repository", gpus=[])
    server = TritonServer(
        repository,
        log_file=workdir / "tritonserver.log",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf")},
    )
    try:
        yield server.start().wait_ready(timeout=900)
    finally:
        server.stop()


# --- a streaming client --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything one request's stream delivered."""

    progress: list[tuple[int, int]] = field(default_factory=list)
    final: grpcclient.InferResult | None = None
    error: InferenceServerException | None = None
    final_flag: bool = False

    @property
    def video(self) -> bytes:
        assert self.final is not None, f"no video: {self.error}"
        return bytes(self.final.as_numpy("VIDEO")[0])


class Stream:
    """One gRPC bidirectional stream; responses are queued by the callback and read with timeouts."""

    def __init__(self, server: TritonServer) -> None:
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.responses: queue.Queue = queue.Queue()
        self.closed = False
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, model: str, prompt: str = "a paper boat on a river", image: bytes | None = None, **scalars):
        inputs = [_input("PROMPT", np.array([prompt.encode()], dtype=np.object_))]
        if image is not None:
            inputs.append(_input("INPUT_IMAGE", np.array([image], dtype=np.object_)))
        for name, value in scalars.items():
            dtype = {"SEED": np.int64, "SECONDS": np.float32, "GUIDANCE_SCALE": np.float32}.get(name, np.int32)
            inputs.append(_input(name, np.array([value], dtype=dtype)))
        self.client.async_stream_infer(model, inputs, enable_empty_final_response=True)

    def next(self, timeout: float = 300.0) -> tuple[grpcclient.InferResult | None, InferenceServerException | None]:
        return self.responses.get(timeout=timeout)

    def collect(self, timeout: float = 300.0) -> Outcome:
        """Read one request's responses up to and including its final one (a video or an error)."""
        outcome = Outcome()
        while True:
            result, error = self.next(timeout)
            if error is not None:
                outcome.error = error
                return outcome
            final = result.get_response().parameters.get("triton_final_response")
            outcome.final_flag = bool(final and final.bool_param)
            if result.as_numpy("VIDEO") is not None:
                outcome.final = result
                return outcome
            assert not outcome.final_flag, "the stream ended without a video or an error"
            done, total = result.as_numpy("PROGRESS").tolist()
            outcome.progress.append((done, total))

    def generate(self, model: str, **kwargs) -> Outcome:
        self.send(model, **kwargs)
        return self.collect()

    def close(self, cancel: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.client.stop_stream(cancel_requests=cancel)
            self.client.close()


def _input(name: str, value: np.ndarray) -> grpcclient.InferInput:
    dtype = {np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}.get(
        value.dtype, "BYTES"
    )
    tensor = grpcclient.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


@pytest.fixture
def stream_to(request: pytest.FixtureRequest) -> Iterator:
    streams: list[Stream] = []

    def open_stream(server: TritonServer) -> Stream:
        streams.append(Stream(server))
        return streams[-1]

    yield open_stream
    for stream in streams:
        stream.close()


def png(width: int, height: int, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def assert_video(outcome: Outcome, frames: int, width: int, height: int, fps: int) -> None:
    assert outcome.error is None, outcome.error
    assert outcome.final_flag, "the video must come with the FINAL flag (no extra empty response)"
    info = probe_mp4(outcome.video)
    assert (info.frames, info.width, info.height, info.fps) == (frames, width, height, fps)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert outcome.final.as_numpy("NUM_FRAMES").tolist() == [frames]
    assert outcome.final.as_numpy("INFERENCE_TIME_S")[0] > 0


# --- the diffusers engine ------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def diffusers_triton(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    yield from serve(video_specs(tiny_models, "diffusers"), tmp_path_factory.mktemp("video"))


class TestDiffusersEngine:
    @pytest.fixture
    def triton(self, diffusers_triton: TritonServer) -> TritonServer:
        return diffusers_triton

    def test_progress_rises_to_total_then_the_mp4(self, triton: TritonServer, stream_to) -> None:
        outcome = stream_to(triton).generate(T2V, SEED=3, **{**SMALL, "WIDTH": 96})
        assert_video(outcome, frames=9, width=96, height=64, fps=8)
        done = [d for d, _ in outcome.progress]
        assert done == sorted(done) and done[-1] == 3 and len(done) >= 3, outcome.progress
        assert {t for _, t in outcome.progress} == {3}
        assert outcome.final.as_numpy("PROGRESS").tolist() == [3, 3]
        assert outcome.final.as_numpy("SEED").tolist() == [3]

    def test_same_seed_same_bytes_and_defaults_from_the_config(self, triton: TritonServer, stream_to) -> None:
        stream = stream_to(triton)
        first = stream.generate(T2V, SEED=7, **SMALL)
        again = stream.generate(T2V, SEED=7, **SMALL)
        other = stream.generate(T2V, SEED=8, **SMALL)
        assert first.video == again.video
        assert other.video != first.video
        # No size, steps or frames given: config defaults (64x64, 2 steps) and SECONDS x FPS rounded to 4k+1.
        defaults = stream.generate(T2V, SECONDS=1.0, FPS=8)
        assert_video(defaults, frames=9, width=64, height=64, fps=8)
        assert defaults.progress[-1] == (2, 2)
        assert defaults.final.as_numpy("SEED")[0] >= 0, "a random seed is chosen and reported"

    def test_image_to_video_fits_the_image_to_the_requested_size(self, triton: TritonServer, stream_to) -> None:
        outcome = stream_to(triton).generate(I2V, image=png(50, 90), SEED=1, **{**SMALL, "WIDTH": 96, "FPS": 12})
        assert_video(outcome, frames=9, width=96, height=64, fps=12)

    @pytest.mark.parametrize(
        ("model", "overrides", "message"),
        [
            (T2V, {"NUM_FRAMES": 0}, "num_frames must be between 1 and"),
            (T2V, {"NUM_FRAMES": 8}, "num_frames must be 4k+1"),
            (T2V, {"WIDTH": 70}, "width must be a multiple of 16"),
            (T2V, {"image": png(64, 64)}, "takes no input_reference"),
            (I2V, {}, "send input_reference"),
            (I2V, {"image": b"GIF89a not really"}, "input_reference is not a PNG, JPEG or WebP image"),
            (I2V, {"image": png(64, 64)[:60]}, "input_reference could not be decoded"),
        ],
        ids=[
            "zero-frames",
            "frames-not-4k+1",
            "width-not-multiple",
            "image-to-t2v",
            "no-image-to-i2v",
            "not-image",
            "truncated",
        ],
    )
    def test_bad_requests_get_an_error_naming_the_problem(
        self, triton: TritonServer, stream_to, model: str, overrides: dict, message: str
    ) -> None:
        stream = stream_to(triton)
        image = overrides.pop("image", None)
        outcome = stream.generate(model, image=image, **{**SMALL, **overrides})
        assert outcome.error is not None and outcome.final is None
        assert message in outcome.error.message(), outcome.error.message()
        # The model keeps serving, on the same stream.
        ok = stream.generate(model, image=png(64, 64) if model == I2V else None, **{**SMALL, "NUM_INFERENCE_STEPS": 1})
        assert_video(ok, frames=9, width=64, height=64, fps=8)

    def test_cancelling_the_stream_stops_the_generation(self, triton: TritonServer, stream_to) -> None:
        def counters() -> tuple[float, float, float]:
            text = httpx.get(triton.metrics_url, timeout=10).text
            return (
                metric_value(text, "diffusion_requests_total", model=T2V, outcome="GenerationCancelled"),
                metric_value(text, "diffusion_requests_total", model=T2V, outcome="success"),
                metric_value(text, "diffusion_steps_total", model=T2V),
            )

        cancelled, succeeded, steps = counters()
        stream = stream_to(triton)
        stream.send(T2V, SEED=1, **{**SMALL, "NUM_INFERENCE_STEPS": 200})
        result, error = stream.next()
        assert error is None and result.as_numpy("PROGRESS").tolist()[1] == 200
        stream.close(cancel=True)
        wait_for(lambda: counters()[0] == cancelled + 1, timeout=120, message="the cancellation metric")
        assert counters()[1] == succeeded
        # It stopped between denoising steps, long before the 200th (not merely before encoding).
        assert 0 < counters()[2] - steps < 200, counters()[2] - steps
        # The instance is free again.
        assert_video(stream_to(triton).generate(T2V, **SMALL), frames=9, width=64, height=64, fps=8)

    def test_a_full_queue_rejects_at_once(self, triton: TritonServer, stream_to) -> None:
        """One instance runs a request while ``max_queue_size`` (8) wait; Triton turns away the rest at once."""
        stream = stream_to(triton)
        for seed in range(12):
            stream.send(T2V, SEED=seed, **{**SMALL, "NUM_INFERENCE_STEPS": 20})
        videos, rejected = 0, []
        while videos + len(rejected) < 12:
            result, error = stream.next()
            if error is not None:
                rejected.append(error.message())
            elif result.as_numpy("VIDEO") is not None:
                videos += 1
        assert videos >= 9 and rejected, (videos, rejected)
        assert all("Exceeds maximum queue size" in message for message in rejected), rejected

    def test_perf_analyzer_streams_to_the_video_model(self, triton: TritonServer, tmp_path: Path) -> None:
        perf_analyzer = shutil.which("perf_analyzer")
        assert perf_analyzer, "scripts/setup.sh installs perf_analyzer into the venv"
        json.loads(PERF_INPUT.read_text())  # the kept input file is valid JSON
        completed = subprocess.run(
            [
                perf_analyzer,
                "-m",
                T2V,
                "-u",
                triton.grpc_url,
                "-i",
                "grpc",
                "--streaming",
                "--input-data",
                str(PERF_INPUT),
                "--concurrency-range",
                "1",
                "--measurement-mode",
                "count_windows",
                "--stability-percentage",
                "100",
                "--measurement-request-count",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        throughput = [float(x) for x in re.findall(r"Throughput: ([0-9.]+) infer/sec", completed.stdout)]
        assert throughput and all(t > 0 for t in throughput), completed.stdout[-2000:]


# --- the sglang engine ---------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def sglang_triton(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    specs = video_specs(tiny_models, "sglang", sglang_backend="diffusers", sglang_sleep_on_idle="true")
    yield from serve(specs, tmp_path_factory.mktemp("video-sglang"))


class TestSGLangEngine:
    """SGLang's ``DiffGenerator`` with its diffusers backend (native Wan needs sgl-kernel CPU ops PyPI lacks)."""

    @pytest.fixture
    def triton(self, sglang_triton: TritonServer) -> TritonServer:
        return sglang_triton

    def test_sglang_engine_generates_text_and_image_to_video(self, triton: TritonServer, stream_to) -> None:
        stream = stream_to(triton)
        t2v = stream.generate(T2V, SEED=5, **{**SMALL, "WIDTH": 96})
        assert_video(t2v, frames=9, width=96, height=64, fps=8)
        assert t2v.progress == [(0, 3), (3, 3)], "DiffGenerator reports no steps: start and end only"
        assert stream.generate(T2V, SEED=5, **{**SMALL, "WIDTH": 96}).video == t2v.video

        i2v = stream.generate(I2V, image=png(90, 50), SEED=5, **{**SMALL, "NUM_FRAMES": 5})
        assert_video(i2v, frames=5, width=64, height=64, fps=8)

        bad = stream.generate(T2V, **{**SMALL, "NUM_FRAMES": 6})
        assert bad.error is not None and "num_frames must be 4k+1" in bad.error.message()
