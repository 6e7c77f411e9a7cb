"""The ``sglang`` engine: SGLang's real ``DiffGenerator`` (native FLUX path, CPU) behind the same API."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import Stack, start_stack, tiny_image_spec

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend


@pytest.fixture(scope="module")
def sglang_stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack([tiny_image_spec(tiny_models, "sglang")], tmp_path_factory.mktemp("sglang"))


def test_sglang_engine_generates_seeded_images_of_the_requested_size(sglang_stack: Stack) -> None:
    client = sglang_stack.client()
    common = dict(model="tiny-flux", prompt="a red fox", response_format="b64_json")
    first = client.images.generate(size="64x64", extra_body={"seed": 9, "num_inference_steps": 2}, **common)
    again = client.images.generate(size="64x64", extra_body={"seed": 9, "num_inference_steps": 2}, **common)
    image = Image.open(io.BytesIO(base64.b64decode(first.data[0].b64_json)))
    assert image.format == "PNG" and image.size == (64, 64)
    assert first.data[0].b64_json == again.data[0].b64_json

    pair = client.images.generate(size="96x64", n=2, extra_body={"seed": 9, "num_inference_steps": 2}, **common)
    assert len(pair.data) == 2
    decoded = [base64.b64decode(d.b64_json) for d in pair.data]
    assert decoded[0] != decoded[1]
    assert all(Image.open(io.BytesIO(d)).size == (96, 64) for d in decoded)
    assert [d.model_extra["seed"] for d in pair.data] == [9, 10]


def test_sglang_engine_reports_validation_errors(sglang_stack: Stack) -> None:
    import openai

    with pytest.raises(openai.BadRequestError):
        sglang_stack.client().images.generate(model="tiny-flux", prompt="x", size="70x64")


def test_sglang_engine_refuses_edits_clearly(sglang_stack: Stack) -> None:
    import openai

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    with pytest.raises(openai.BadRequestError) as info:
        sglang_stack.client().images.edit(model="tiny-flux", prompt="x", image=("a.png", buf.getvalue(), "image/png"))
    assert "diffusers engine" in info.value.message
