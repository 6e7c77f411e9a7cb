"""Text-to-image through the OpenAI SDK and curl-shaped requests, against real tritonserver + frontend."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from diffusion_runtime.launcher.processes import Frontend
from tests.conftest import Stack, metric_value, wait_for

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend

MODEL = "tiny-flux"


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def generate(stack: Stack, **kwargs):
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("prompt", "a red fox in the snow")
    kwargs.setdefault("size", "64x64")
    kwargs.setdefault("response_format", "b64_json")
    return stack.client().images.generate(**kwargs)


def test_models_lists_the_image_model(diffusers_stack: Stack) -> None:
    models = diffusers_stack.client().models.list()
    assert MODEL in [m.id for m in models.data]


@pytest.mark.parametrize("size", ["64x64", "96x64"])
def test_b64_png_has_requested_size(diffusers_stack: Stack, size: str) -> None:
    result = generate(diffusers_stack, size=size, extra_body={"num_inference_steps": 2, "seed": 3})
    assert len(result.data) == 1
    image = decode(result.data[0].b64_json)
    assert image.format == "PNG"
    assert f"{image.width}x{image.height}" == size


def pixels(b64: str) -> np.ndarray:
    return np.asarray(decode(b64), dtype=np.int16)


def test_fixed_seed_repeats_bytes_and_n_gives_distinct_images(diffusers_stack: Stack) -> None:
    first = generate(diffusers_stack, extra_body={"seed": 1234, "num_inference_steps": 2})
    again = generate(diffusers_stack, extra_body={"seed": 1234, "num_inference_steps": 2})
    assert base64.b64decode(first.data[0].b64_json) == base64.b64decode(again.data[0].b64_json)

    pair = generate(diffusers_stack, n=2, extra_body={"seed": 1234, "num_inference_steps": 2})
    a, b = (pixels(d.b64_json) for d in pair.data)
    assert np.abs(a - b).mean() > 5, "the two images of a request differ"
    # Image i of a request is the picture seed+i alone gives: n is a batch of single generations. Batched matrix
    # products may round differently from a single one (last bits of float32, seen on some CPUs), so a pixel may
    # land one level apart, never more.
    assert np.abs(a - pixels(first.data[0].b64_json)).max() <= 1
    assert [d.model_extra["seed"] for d in pair.data] == [1234, 1235]
    second_alone = generate(diffusers_stack, extra_body={"seed": 1235, "num_inference_steps": 2})
    assert np.abs(b - pixels(second_alone.data[0].b64_json)).max() <= 1


def test_random_seed_is_reported_and_reproduces(diffusers_stack: Stack) -> None:
    result = generate(diffusers_stack, extra_body={"num_inference_steps": 2})
    seed = result.data[0].model_extra["seed"]
    assert isinstance(seed, int)
    again = generate(diffusers_stack, extra_body={"num_inference_steps": 2, "seed": seed})
    assert again.data[0].b64_json == result.data[0].b64_json


def test_url_serves_the_stored_file(diffusers_stack: Stack) -> None:
    by_url = generate(diffusers_stack, response_format="url", extra_body={"seed": 7, "num_inference_steps": 2})
    url = by_url.data[0].url
    assert url.startswith("http://")
    fetched = httpx.get(url, timeout=30)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    by_b64 = generate(diffusers_stack, extra_body={"seed": 7, "num_inference_steps": 2})
    assert fetched.content == base64.b64decode(by_b64.data[0].b64_json)
    assert list(diffusers_stack.media_dir.rglob("*.png")), "the file is in the media store"


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_output_formats_and_compression(diffusers_stack: Stack, fmt: str, magic: bytes) -> None:
    sizes = []
    for compression in (95, 10):
        result = generate(
            diffusers_stack,
            size="128x128",
            output_format=fmt,
            output_compression=compression,
            extra_body={"seed": 5, "num_inference_steps": 2},
        )
        data = base64.b64decode(result.data[0].b64_json)
        assert data.startswith(magic)
        assert decode(result.data[0].b64_json).size == (128, 128)
        sizes.append(len(data))
    assert sizes[1] < sizes[0], "a higher output_compression gives a smaller file"


def test_seed_document_curl_body(diffusers_stack: Stack) -> None:
    body = {
        "model": MODEL,
        "prompt": "A sunset over the ocean",
        "size": "1024x1024",
        "response_format": "url",
        "nvext": {"num_inference_steps": 15},
    }
    response = httpx.post(f"{diffusers_stack.url}/v1/images/generations", json=body, timeout=600)
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    image = Image.open(io.BytesIO(httpx.get(url, timeout=30).content))
    assert image.size == (1024, 1024)


BAD_REQUESTS = [
    ("malformed json", b'{"prompt": "x", ', 400, None),
    ("missing prompt", {"model": MODEL}, 400, "prompt"),
    ("empty prompt", {"model": MODEL, "prompt": "  "}, 400, "prompt"),
    ("prompt not a string", {"model": MODEL, "prompt": 42}, 400, "prompt"),
    ("unknown model", {"model": "no-such-model", "prompt": "x"}, 404, "model"),
    ("size not WxH", {"model": MODEL, "prompt": "x", "size": "big"}, 400, "size"),
    ("size not a multiple", {"model": MODEL, "prompt": "x", "size": "65x64"}, 400, "width"),
    ("size zero", {"model": MODEL, "prompt": "x", "size": "0x0"}, 400, "width"),
    ("size too large", {"model": MODEL, "prompt": "x", "size": "64x99984"}, 400, "height"),
    ("n zero", {"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
    ("n too many", {"model": MODEL, "prompt": "x", "n": 11}, 400, "n"),
    ("steps zero", {"model": MODEL, "prompt": "x", "nvext": {"num_inference_steps": 0}}, 400, "num_inference_steps"),
    ("negative guidance", {"model": MODEL, "prompt": "x", "guidance_scale": -1}, 400, "guidance_scale"),
    ("bad output format", {"model": MODEL, "prompt": "x", "output_format": "gif"}, 400, "output_format"),
    ("compression > 100", {"model": MODEL, "prompt": "x", "output_compression": 101}, 400, "output_compression"),
    ("bad response_format", {"model": MODEL, "prompt": "x", "response_format": "file"}, 400, "response_format"),
    ("negative seed", {"model": MODEL, "prompt": "x", "seed": -5}, 400, "seed"),
    ("conflicting knobs", {"model": MODEL, "prompt": "x", "seed": 1, "nvext": {"seed": 2}}, 400, "seed"),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_openai_error_and_server_keeps_serving(
    diffusers_stack: Stack, case: str, body: object, status: int, param: str | None
) -> None:
    with diffusers_stack.http() as http:
        if isinstance(body, bytes):
            response = http.post("/v1/images/generations", content=body, headers={"content-type": "application/json"})
        else:
            response = http.post("/v1/images/generations", json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"] and error["type"]
        assert set(error) == {"message", "type", "param", "code"}
        if param is not None:
            assert error["param"] == param
        good = http.post(
            "/v1/images/generations",
            json={
                "model": MODEL,
                "prompt": "ok",
                "size": "64x64",
                "response_format": "b64_json",
                "num_inference_steps": 1,
            },
        )
        assert good.status_code == 200, good.text


def test_unknown_route_is_an_openai_404(diffusers_stack: Stack) -> None:
    response = httpx.get(f"{diffusers_stack.url}/v1/nothing-here")
    assert response.status_code == 404
    assert "error" in response.json()


def test_the_sdk_raises_typed_errors(diffusers_stack: Stack) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        generate(diffusers_stack, model="no-such-model")
    with pytest.raises(openai.BadRequestError) as info:
        generate(diffusers_stack, size="12x12")
    assert "multiple of 16" in info.value.message or "between" in info.value.message


def test_health_readiness_and_metrics(diffusers_stack: Stack) -> None:
    with diffusers_stack.http() as http:
        assert http.get("/health").status_code == 200
        ready = http.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["models"]["image_diffusion"] == "READY"
        generate(diffusers_stack, extra_body={"num_inference_steps": 1})
        text = http.get("/metrics").text
    assert 'openai_requests_total{route="/v1/images/generations",status="200"}' in text
    assert 'diffusion_requests_total{model="image_diffusion",outcome="success"}' in text
    assert 'diffusion_seconds_total{model="image_diffusion",phase="encode"}' in text
    assert "nv_inference_request_success" in text
    assert metric_value(text, "nv_inference_request_success", model="image_diffusion") > 0, "Triton's own names"


def test_client_disconnect_cancels_the_generation_on_the_server(diffusers_stack: Stack) -> None:
    def cancelled() -> float:
        text = httpx.get(f"{diffusers_stack.url}/metrics", timeout=10).text
        return metric_value(text, "diffusion_requests_total", model="image_diffusion", outcome="GenerationCancelled")

    before = cancelled()
    # ~6 s of denoising on a 2-core CPU, well past the client's 1.5 s: at 512² (1.56 s) the generation could end
    # before the cancellation reached it, and the request then counted as a success.
    body = {
        "model": MODEL,
        "prompt": "long",
        "size": "1024x1024",
        "response_format": "b64_json",
        "num_inference_steps": 200,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{diffusers_stack.url}/v1/images/generations", json=body, timeout=httpx.Timeout(10, read=1.5))
    wait_for(lambda: cancelled() > before, timeout=60, message="the model seeing the cancellation")
    # The model is free again and serves the next request.
    assert generate(diffusers_stack, extra_body={"num_inference_steps": 1}).data


def picture(width: int, height: int) -> bytes:
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def edit(stack: Stack, **kwargs):
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("prompt", "make it autumn")
    kwargs.setdefault("response_format", "b64_json")
    kwargs.setdefault("extra_body", {"num_inference_steps": 4, "seed": 5})
    return stack.client().images.edit(**kwargs)


def test_sdk_image_edit_keeps_the_input_size_and_is_seeded(diffusers_stack: Stack) -> None:
    source = ("photo.png", picture(96, 64), "image/png")
    first = edit(diffusers_stack, image=source)
    again = edit(diffusers_stack, image=source)
    assert decode(first.data[0].b64_json).size == (96, 64), "size auto follows the input image"
    assert first.data[0].b64_json == again.data[0].b64_json
    white = io.BytesIO()
    Image.new("RGB", (96, 64), "white").save(white, format="PNG")
    knobs = {"num_inference_steps": 4, "seed": 5, "strength": 0.5}
    from_noise = edit(diffusers_stack, image=source, extra_body=knobs)
    from_white = edit(diffusers_stack, image=("white.png", white.getvalue(), "image/png"), extra_body=knobs)
    assert from_white.data[0].b64_json != from_noise.data[0].b64_json, "the result depends on the input image"
    resized = edit(diffusers_stack, image=source, size="64x64", n=2)
    assert [decode(d.b64_json).size for d in resized.data] == [(64, 64), (64, 64)]


def test_sdk_image_edit_with_a_transparent_mask(diffusers_stack: Stack) -> None:
    mask = np.full((64, 64, 4), 255, dtype=np.uint8)
    mask[16:48, 16:48, 3] = 0  # transparent: repaint here
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    result = edit(
        diffusers_stack,
        image=("in.png", picture(64, 64), "image/png"),
        mask=("mask.png", buf.getvalue(), "image/png"),
        response_format="url",
    )
    fetched = httpx.get(result.data[0].url, timeout=30)
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)


def test_bad_edits_get_openai_errors(diffusers_stack: Stack) -> None:
    with diffusers_stack.http() as http:
        form = {"model": MODEL, "prompt": "x", "num_inference_steps": "1"}
        cases = [
            ({"image": ("notes.png", b"just text, named like a PNG", "image/png")}, form, 400, "image"),
            ({"image": ("cut.png", picture(64, 64)[:80], "image/png")}, form, 400, "image"),
            ({"mask": ("m.png", picture(64, 64), "image/png")}, form, 400, "image"),
            (
                {"image": ("a.png", picture(64, 64), "image/png"), "mask": ("m.txt", b"nope", "text/plain")},
                form,
                400,
                "mask",
            ),
            ({"image": ("a.png", picture(64, 64), "image/png")}, {**form, "strength": "0"}, 400, "strength"),
            ({"image": ("a.png", picture(64, 64), "image/png")}, {**form, "n": "many"}, 400, "n"),
        ]
        for files, data, status, param in cases:
            response = http.post("/v1/images/edits", files=files, data=data)
            assert response.status_code == status, (param, response.text)
            assert response.json()["error"]["param"] == param
        assert http.post("/v1/images/edits", json={"prompt": "x"}).status_code == 415
        # Content decides, not the name: a real PNG called .txt is fine.
        ok = http.post("/v1/images/edits", files={"image": ("photo.txt", picture(64, 64), "text/plain")}, data=form)
        assert ok.status_code == 200, ok.text


def test_access_log_is_on_by_default_and_can_be_turned_off(diffusers_stack: Stack, tmp_path) -> None:
    quiet = Frontend(
        diffusers_stack.triton,
        fs_url=f"file://{tmp_path / 'media'}",
        log_file=tmp_path / "quiet.log",
        extra_args=("--state-dir", str(tmp_path / "state"), "--no-access-log"),
    )
    quiet.start().wait_ready()
    try:
        marker = "/v1/models/access-log-marker"
        for url in (diffusers_stack.url, quiet.url):
            assert httpx.get(url + marker, timeout=30).status_code == 404
    finally:
        quiet.stop()
    assert marker in diffusers_stack.frontend.log_file.read_text()
    assert marker not in (tmp_path / "quiet.log").read_text()
