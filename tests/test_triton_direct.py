"""The Triton models without the frontend: tritonclient (HTTP and gRPC), perf_analyzer, and BYTES round trips."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from diffusion_runtime.launcher.processes import TritonServer
from diffusion_runtime.launcher.repository import PROJECT_ROOT, ModelSpec, render_repository
from openai_frontend.triton.failures import openai_error
from tests.conftest import tiny_image_spec

pytestmark = pytest.mark.e2e  # starts tritonserver and runs perf_analyzer

PERF_INPUT = PROJECT_ROOT / "benchmarks" / "perf_inputs" / "image_diffusion_64.json"


@pytest.fixture(scope="module")
def triton(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    workdir = tmp_path_factory.mktemp("triton")
    specs = [
        tiny_image_spec(tiny_models, "diffusers"),
        ModelSpec("bytes_echo", source=PROJECT_ROOT / "tests" / "triton_models" / "bytes_echo"),
    ]
    repository = render_repository(specs, workdir / "repository", gpus=[])
    server = TritonServer(repository, log_file=workdir / "tritonserver.log", env={"HF_HUB_OFFLINE": "1"})
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


def _input(module, name: str, value: np.ndarray):
    dtype = {np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}.get(
        value.dtype, "BYTES"
    )
    tensor = module.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def image_request(module, prompt: str, **scalars: tuple[np.dtype, object]):
    inputs = [_input(module, "PROMPT", np.array([prompt.encode()], dtype=np.object_))]
    for name, (dtype, value) in scalars.items():
        inputs.append(_input(module, name, np.array([value], dtype=dtype)))
    return inputs


def test_http_infer_returns_encoded_images_and_seeds(triton: TritonServer) -> None:
    with httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}") as client:
        inputs = image_request(
            httpclient,
            "a lighthouse at dawn",
            HEIGHT=(np.int32, 64),
            WIDTH=(np.int32, 96),
            NUM_IMAGES=(np.int32, 2),
            NUM_INFERENCE_STEPS=(np.int32, 2),
            SEED=(np.int64, 11),
        )
        result = client.infer("image_diffusion", inputs)
    images = result.as_numpy("IMAGES")
    assert images.shape == (2,)
    for data in images:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.size == (96, 64)
    assert result.as_numpy("SEEDS").tolist() == [11, 12]
    assert result.as_numpy("INFERENCE_TIME_S")[0] > 0


def test_a_request_for_some_outputs_gets_exactly_those(triton: TritonServer) -> None:
    """Images are answered from the encoder thread; a client that names its outputs gets exactly those, at every
    size, and the model keeps answering (answering a subset from that thread once killed the stub on a GPU)."""
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        for size in (64, 256, 64):
            inputs = image_request(
                grpcclient,
                "a lighthouse",
                HEIGHT=(np.int32, size),
                WIDTH=(np.int32, size),
                NUM_INFERENCE_STEPS=(np.int32, 1),
            )
            result = client.infer("image_diffusion", inputs, outputs=[grpcclient.InferRequestedOutput("IMAGES")])
            assert result.as_numpy("SEEDS") is None and result.as_numpy("INFERENCE_TIME_S") is None
            assert Image.open(io.BytesIO(result.as_numpy("IMAGES")[0])).size == (size, size)


def test_a_models_invalid_value_reaches_the_frontend_as_a_400_naming_the_field(triton: TritonServer) -> None:
    """The message the model writes is the one the frontend reads back, through a real Triton over gRPC."""
    request = image_request(grpcclient, "x", HEIGHT=(np.int32, 63))
    with grpcclient.InferenceServerClient(triton.grpc_url) as client, pytest.raises(InferenceServerException) as info:
        client.infer("image_diffusion", request)
    error = openai_error(info.value)
    assert (error.status, error.code, error.param) == (400, "invalid_value", "height"), info.value.message()
    assert "height must be a multiple of 16" in error.message


def test_invalid_values_are_invalid_arg_with_a_useful_message(triton: TritonServer) -> None:
    with httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}") as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer("image_diffusion", image_request(httpclient, "x", HEIGHT=(np.int32, 63)))
        assert info.value.status() == "400"
        assert "height must be a multiple of 16" in info.value.message()
        # The stub survived: the next request works.
        ok = client.infer(
            "image_diffusion",
            image_request(
                httpclient, "x", HEIGHT=(np.int32, 64), WIDTH=(np.int32, 64), NUM_INFERENCE_STEPS=(np.int32, 1)
            ),
        )
        assert ok.as_numpy("IMAGES").shape == (1,)


def test_grpc_infer_matches_http_for_the_same_seed(triton: TritonServer) -> None:
    scalars = dict(HEIGHT=(np.int32, 64), WIDTH=(np.int32, 64), NUM_INFERENCE_STEPS=(np.int32, 2), SEED=(np.int64, 5))
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        by_grpc = client.infer("image_diffusion", image_request(grpcclient, "same", **scalars))
    with httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}") as client:
        by_http = client.infer("image_diffusion", image_request(httpclient, "same", **scalars))
    assert by_grpc.as_numpy("IMAGES")[0] == by_http.as_numpy("IMAGES")[0]


def test_unicode_and_binary_survive_bytes_tensors(triton: TritonServer) -> None:
    values = ["héllo wörld — 日本語 🎨".encode(), bytes(range(256)), b"\x00trailing\x00", b""]
    with httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}") as client:
        tensor = httpclient.InferInput("INPUT", [len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=np.object_))
        echoed = client.infer("bytes_echo", [tensor]).as_numpy("OUTPUT")
    assert [bytes(v) for v in echoed] == values
    # And a unicode prompt through the image model itself.
    with httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}") as client:
        result = client.infer(
            "image_diffusion",
            image_request(
                httpclient,
                "一只狐狸 🦊 im Schnee",
                HEIGHT=(np.int32, 64),
                WIDTH=(np.int32, 64),
                NUM_INFERENCE_STEPS=(np.int32, 1),
            ),
        )
    assert Image.open(io.BytesIO(result.as_numpy("IMAGES")[0])).size == (64, 64)


def test_perf_analyzer_drives_the_image_model(triton: TritonServer, tmp_path: Path) -> None:
    perf_analyzer = shutil.which("perf_analyzer")
    assert perf_analyzer, "scripts/setup.sh installs perf_analyzer into the venv"
    json.loads(PERF_INPUT.read_text())  # the kept input file is valid JSON
    report = tmp_path / "perf.csv"
    completed = subprocess.run(
        [
            perf_analyzer,
            "-m",
            "image_diffusion",
            "-u",
            triton.grpc_url,
            "-i",
            "grpc",
            "--input-data",
            str(PERF_INPUT),
            "--concurrency-range",
            "1:2",
            "--measurement-mode",
            "count_windows",
            "--stability-percentage",
            "100",
            "--max-trials",
            "30",
            "--measurement-request-count",
            "6",
            "-f",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    throughput = [float(x) for x in re.findall(r"Throughput: ([0-9.]+) infer/sec", completed.stdout)]
    assert len(throughput) == 2 and all(t > 0 for t in throughput), completed.stdout[-2000:]
    assert report.read_text().startswith("Concurrency")
