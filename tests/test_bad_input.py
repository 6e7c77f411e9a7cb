"""Malformed and hostile requests across every endpoint, against one real stack (tritonserver serving the tiny
image, text-to-video, image-to-video and text models, and the frontend).

Each case must get a 4xx carrying OpenAI's error body ``{"error": {message, type, param, code}}``, and the
server must serve a good request of the same kind right after. Unknown fields are the exception: OpenAI's SDK
sends fields a server may not know (``extra_body``), so they are accepted and ignored (200). The cases here are
the ones the per-endpoint suites (``test_images_api``, ``test_videos_api``, ``test_chat_api``) do not already
cover: wrong JSON types, huge and non-finite numbers, enormous prompts, invalid UTF-8, wrong content types,
broken multipart bodies, hostile uploads, and path tricks in ids, model names and media keys.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from diffusion_runtime.launcher.repository import ModelSpec
from scripts.reliability_report import record
from tests.conftest import Stack, start_stack, tiny_image_spec, tiny_video_specs

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend

IMAGE, T2V, I2V, TEXT = "tiny-flux", "tiny-wan-t2v", "tiny-wan-i2v", "tiny-llada"
HELLO = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}

# Low limits keep every valid request cheap: the frontend checks ranges against these before calling Triton.
IMAGE_LIMITS = {"max_size": "128", "max_steps": "4", "default_steps": "1"}
VIDEO_LIMITS = {
    "max_size": "64",
    "max_steps": "2",
    "default_steps": "1",
    "max_frames": "9",
    "default_fps": "8",
    "max_seconds": "2",
}
TEXT_LIMITS = {"max_tokens": "32", "default_max_tokens": "4", "max_steps": "32", "max_block_length": "32"}


def reliability_specs(tiny_models: dict[str, Path]) -> list[ModelSpec]:
    """Every kind of model, with low limits (also used by ``test_fuzz``)."""
    text = {
        "model_path": str(tiny_models[TEXT]),
        "served_model_name": TEXT,
        "engine": "transformers",
        "cpu_threads": "1",
        **TEXT_LIMITS,
    }
    return [
        tiny_image_spec(tiny_models, "diffusers", **IMAGE_LIMITS),
        *tiny_video_specs(tiny_models, "diffusers", **VIDEO_LIMITS),
        ModelSpec("dllm", text),
    ]


def png(width: int = 16, height: int = 16) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims ``width`` x ``height`` pixels but holds one row: a decompression
    bomb's shape without its bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")
    )


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="GIF")
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    """One bad request. ``kind`` picks the good request that must succeed right after it; ``{video}`` in the
    path stands for a completed video's id."""

    name: str
    method: str
    path: str
    status: int
    kind: str
    param: str | None = None  # the field the error must name, when one is at fault
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    params: dict[str, str] | None = None


def image_case(name: str, status: int, param: str | None = None, **request: Any) -> Case:
    return Case(name, "POST", "/v1/images/generations", status, "image", param, **request)


def video_case(name: str, status: int, param: str | None = None, **request: Any) -> Case:
    return Case(name, "POST", "/v1/videos", status, "video", param, **request)


def chat_case(name: str, status: int, param: str | None = None, **request: Any) -> Case:
    return Case(name, "POST", "/v1/chat/completions", status, "text", param, **request)


def get_case(name: str, path: str, status: int, kind: str = "stored", param: str | None = None, **request: Any) -> Case:
    return Case(name, "GET", path, status, kind, param, **request)


CASES = [
    # --- images: types, huge and non-finite values, sizes, bodies ---------------------------------------
    image_case("image prompt is a list", 400, "prompt", json={"model": IMAGE, "prompt": ["a", "b"]}),
    image_case("image n is a word", 400, "n", json={"model": IMAGE, "prompt": "x", "n": "two"}),
    image_case("image n is 10^30", 400, "n", json={"model": IMAGE, "prompt": "x", "n": 10**30}),
    image_case("image seed is 2^70", 400, "seed", json={"model": IMAGE, "prompt": "x", "seed": 2**70}),
    image_case(
        "image steps is 1e308",
        400,
        "num_inference_steps",
        json={"model": IMAGE, "prompt": "x", "num_inference_steps": 1e308},
    ),
    image_case(
        "image steps over the model's limit",
        400,
        "num_inference_steps",
        json={"model": IMAGE, "prompt": "x", "nvext": {"num_inference_steps": 5}},
    ),
    image_case(
        "image guidance is NaN",
        400,
        "guidance_scale",
        content=b'{"model": "tiny-flux", "prompt": "x", "guidance_scale": NaN}',
        headers=JSON,
    ),
    image_case(
        "image guidance is -Infinity",
        400,
        "guidance_scale",
        content=b'{"model": "tiny-flux", "prompt": "x", "nvext": {"guidance_scale": -Infinity}}',
        headers=JSON,
    ),
    image_case("image size 99999x99999", 400, "width", json={"model": IMAGE, "prompt": "x", "size": "99999x99999"}),
    image_case("image size negative", 400, "size", json={"model": IMAGE, "prompt": "x", "size": "-64x64"}),
    image_case("image size has three sides", 400, "size", json={"model": IMAGE, "prompt": "x", "size": "64x64x64"}),
    image_case(
        "image size over the model's limit", 400, "width", json={"model": IMAGE, "prompt": "x", "size": "256x64"}
    ),
    image_case("image prompt is empty", 400, "prompt", json={"model": IMAGE, "prompt": ""}),
    image_case("image prompt of 200k characters", 400, "prompt", json={"model": IMAGE, "prompt": "x" * 200_000}),
    image_case(
        "image negative prompt of 200k characters",
        400,
        "negative_prompt",
        json={"model": IMAGE, "prompt": "x", "negative_prompt": "y" * 200_000},
    ),
    image_case("image nvext is a string", 400, "nvext", json={"model": IMAGE, "prompt": "x", "nvext": "fast"}),
    image_case("image model is a number", 400, "model", json={"model": 7, "prompt": "x"}),
    image_case("image model with a path trick", 404, "model", json={"model": "../../etc/passwd", "prompt": "x"}),
    image_case("image body is empty", 400, content=b"", headers=JSON),
    image_case("image body is a JSON array", 400, json=[{"prompt": "x"}]),
    image_case(
        "image body is invalid UTF-8", 400, content=b'{"model": "tiny-flux", "prompt": "\xff\xfe"}', headers=JSON
    ),
    image_case("image body as text/plain", 400, content=b'{"prompt": "x"}', headers={"content-type": "text/plain"}),
    image_case("image body as multipart", 400, data={"prompt": "x"}, files={"f": ("a.png", png(), "image/png")}),
    Case("image PUT", "PUT", "/v1/images/generations", 405, "image", json={"prompt": "x"}),
    # --- image edits (multipart uploads) --------------------------------------------------------------
    Case("edit sent as JSON", "POST", "/v1/images/edits", 415, "image", json={"prompt": "x"}),
    Case(
        "edit with a mask but no image",
        "POST",
        "/v1/images/edits",
        400,
        "image",
        "image",
        data={"model": IMAGE, "prompt": "x"},
        files={"mask": ("mask.png", png(), "image/png")},
    ),
    Case(
        "edit image is a GIF",
        "POST",
        "/v1/images/edits",
        400,
        "image",
        "image",
        data={"model": IMAGE, "prompt": "x"},
        files={"image": ("a.png", gif(), "image/png")},
    ),
    Case(
        "edit image is truncated",
        "POST",
        "/v1/images/edits",
        400,
        "image",
        "image",
        data={"model": IMAGE, "prompt": "x"},
        files={"image": ("a.png", png()[:40], "image/png")},
    ),
    # --- videos: create ------------------------------------------------------------------------------
    video_case("video seconds is 'inf'", 400, "seconds", json={"prompt": "x", "model": T2V, "seconds": "inf"}),
    video_case(
        "video seconds is 1e309",
        400,
        "seconds",
        content=b'{"prompt": "x", "model": "tiny-wan-t2v", "seconds": 1e309}',
        headers=JSON,
    ),
    video_case("video seconds over the limit", 400, "seconds", json={"prompt": "x", "model": T2V, "seconds": "3"}),
    video_case("video fps is zero", 400, "fps", json={"prompt": "x", "model": T2V, "nvext": {"fps": 0}}),
    video_case("video frames is 10^12", 400, "num_frames", json={"prompt": "x", "model": T2V, "num_frames": 10**12}),
    video_case("video frames over the limit", 400, "num_frames", json={"prompt": "x", "model": T2V, "num_frames": 13}),
    video_case("video height is zero", 400, "height", json={"prompt": "x", "model": T2V, "size": "16x0"}),
    video_case("video prompt of 200k characters", 400, "prompt", json={"prompt": "x" * 200_000, "model": T2V}),
    video_case("video model is a list", 400, "model", json={"prompt": "x", "model": [T2V]}),
    video_case("video nvext is a list", 400, "nvext", json={"prompt": "x", "model": T2V, "nvext": [1, 2]}),
    video_case("video body is null", 400, content=b"null", headers=JSON),
    video_case(
        "video body is invalid UTF-8", 400, content=b'{"prompt": "\xff", "model": "tiny-wan-t2v"}', headers=JSON
    ),
    video_case("video body as XML", 415, content=b"<prompt>x</prompt>", headers={"content-type": "application/xml"}),
    video_case(
        "video multipart without a boundary", 400, content=b"prompt=x", headers={"content-type": "multipart/form-data"}
    ),
    video_case(
        "video multipart cut off mid-part",
        400,
        content=b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhello',
        headers={"content-type": "multipart/form-data; boundary=b"},
    ),
    video_case(
        "video prompt sent as a file part",
        400,
        "prompt",
        data={"model": T2V},
        files={"prompt": ("prompt.txt", b"x", "text/plain")},
    ),
    video_case(
        "video reference is a GIF",
        400,
        "input_reference",
        data={"prompt": "x", "model": I2V, "size": "16x16"},
        files={"input_reference": ("ref.png", gif(), "image/png")},
    ),
    video_case(
        "video reference claims 60000x60000 pixels",
        400,
        "input_reference",
        data={"prompt": "x", "model": I2V, "size": "16x16"},
        files={"input_reference": ("ref.png", png_claiming(60000, 60000), "image/png")},
    ),
    video_case(
        "video reference is an http URL",
        400,
        "input_reference",
        json={"prompt": "x", "model": I2V, "input_reference": "http://127.0.0.1:9/cat.png"},
    ),
    # --- videos: get, content, list, delete ----------------------------------------------------------
    get_case("video id with a NUL", "/v1/videos/video_" + "0" * 32 + "%00", 404),
    get_case("video id of 10k characters", "/v1/videos/" + "a" * 10_000, 404),
    get_case("video content id with a path trick", "/v1/videos/..%2F..%2Fstate%2Fvideos.sqlite3/content", 404),
    get_case("video content variant with a path trick", "/v1/videos/{video}/content", 400, params={"variant": "../x"}),
    get_case("video list limit zero", "/v1/videos", 400, param="limit", params={"limit": "0"}),
    get_case("video list limit is a word", "/v1/videos", 400, param="limit", params={"limit": "all"}),
    get_case("video list order sideways", "/v1/videos", 400, param="order", params={"order": "sideways"}),
    get_case("video list after a path", "/v1/videos", 404, param="after", params={"after": "../../x"}),
    Case("video delete unknown id", "DELETE", "/v1/videos/video_" + "f" * 32, 404, "stored"),
    Case("video delete with a path trick", "DELETE", "/v1/videos/..%2F..%2Fmedia", 404, "stored"),
    Case("video delete without an id", "DELETE", "/v1/videos", 405, "stored"),
    # --- chat and completions ------------------------------------------------------------------------
    chat_case("chat with 2000 messages", 400, "messages", json={"model": TEXT, "messages": HELLO * 2000}),
    chat_case(
        "chat content is a number", 400, "messages", json={"model": TEXT, "messages": [{"role": "user", "content": 5}]}
    ),
    chat_case("chat message is a string", 400, "messages", json={"model": TEXT, "messages": ["hi"]}),
    chat_case(
        "chat max_tokens is a word", 400, "max_tokens", json={"model": TEXT, "messages": HELLO, "max_tokens": "lots"}
    ),
    chat_case(
        "chat max_tokens is 10^20", 400, "max_tokens", json={"model": TEXT, "messages": HELLO, "max_tokens": 10**20}
    ),
    chat_case(
        "chat max_tokens over the limit", 400, "max_tokens", json={"model": TEXT, "messages": HELLO, "max_tokens": 33}
    ),
    chat_case("chat with 100 stop strings", 400, "stop", json={"model": TEXT, "messages": HELLO, "stop": ["x"] * 100}),
    chat_case(
        "chat temperature is NaN",
        400,
        "temperature",
        content=b'{"model": "tiny-llada", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        headers=JSON,
    ),
    chat_case(
        "chat stream_options is a string",
        400,
        "stream_options",
        json={"model": TEXT, "messages": HELLO, "stream": True, "stream_options": "usage"},
    ),
    chat_case(
        "chat body is invalid UTF-8",
        400,
        content=b'{"model": "tiny-llada", "messages": [{"role": "user", "content": "\xc3\x28"}]}',
        headers=JSON,
    ),
    chat_case("chat model with a path trick", 404, "model", json={"model": "../../../etc", "messages": HELLO}),
    Case(
        "completion of two prompts",
        "POST",
        "/v1/completions",
        400,
        "text",
        "prompt",
        json={"model": TEXT, "prompt": ["a", "b"]},
    ),
    Case(
        "completion prompt of 200k characters",
        "POST",
        "/v1/completions",
        400,
        "text",
        "prompt",
        json={"model": TEXT, "prompt": "x" * 200_000},
    ),
    Case(
        "completion with messages",
        "POST",
        "/v1/completions",
        400,
        "text",
        "prompt",
        json={"model": TEXT, "messages": HELLO},
    ),
    # --- models and media ----------------------------------------------------------------------------
    get_case("model unknown", "/v1/models/gpt-9", 404, "image", "model"),
    get_case("model with a path trick", "/v1/models/..%2F..%2Fetc%2Fpasswd", 404, "image", "model"),
    Case("models POST", "POST", "/v1/models", 405, "image", json={}),
    get_case("media with dot segments", "/media/%2e%2e/%2e%2e/etc/passwd", 404, "image"),
    get_case("media with encoded slashes", "/media/images/..%2F..%2F..%2Fetc%2Fpasswd", 404, "image"),
    get_case("media reaching the job store", "/media/..%2Fstate%2Fvideos.sqlite3", 404, "image"),
    get_case("media with a NUL", "/media/images/%00.png", 404, "image"),
    get_case("media without a key", "/media/", 404, "image"),
]

GOOD = {
    "image": (
        "POST",
        "/v1/images/generations",
        {"model": IMAGE, "prompt": "ok", "size": "16x16", "response_format": "b64_json"},
    ),
    "video": (
        "POST",
        "/v1/videos",
        {"model": T2V, "prompt": "ok", "size": "16x16", "response_format": "url", "num_frames": 5},
    ),
    "text": ("POST", "/v1/chat/completions", {"model": TEXT, "messages": HELLO, "max_tokens": 2}),
    "stored": ("GET", "/v1/videos/{video}/content", None),  # reading a finished job touches the store and media
}
SEEN: Counter[int] = Counter()


@pytest.fixture(scope="module")
def stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    start = time.monotonic()
    yield from start_stack(reliability_specs(tiny_models), tmp_path_factory.mktemp("bad-input"))
    record(
        "bad_input",
        {
            "cases": len(CASES),
            "statuses": {str(status): count for status, count in sorted(SEEN.items())},
            "server_errors": sum(count for status, count in SEEN.items() if status >= 500),
            "module_seconds": round(time.monotonic() - start, 1),
        },
    )


@pytest.fixture(scope="module")
def video_id(stack: Stack) -> str:
    method, path, body = GOOD["video"]
    response = httpx.request(method, f"{stack.url}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> None:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if param is not None:
        assert error["param"] == param, error


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_request_gets_an_openai_4xx_and_the_next_good_one_succeeds(stack: Stack, video_id: str, case: Case) -> None:
    assert 400 <= case.status < 500
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        response = http.request(
            case.method,
            case.path.replace("{video}", video_id),
            json=case.json,
            content=case.content,
            headers=case.headers,
            data=case.data,
            files=case.files,
            params=case.params,
        )
        SEEN[response.status_code] += 1
        assert_openai_error(response, case.status, case.param)
        method, path, body = GOOD[case.kind]
        good = http.request(method, path.replace("{video}", video_id), json=body, timeout=120)
        assert good.status_code == 200, good.text[:500]


UNKNOWN_FIELDS = [
    ("image", "/v1/images/generations", {**GOOD["image"][2], "quality": "hd", "not_a_field": {"deep": [1, 2]}}),
    ("chat", "/v1/chat/completions", {**GOOD["text"][2], "logit_bias": {"1": 2}, "frobnicate": True}),
    ("video", "/v1/videos", {**GOOD["video"][2], "remix_of": "nothing", "nvext": {"num_frames": 5, "warp": 9}}),
]


@pytest.mark.parametrize(("kind", "path", "body"), UNKNOWN_FIELDS, ids=[c[0] for c in UNKNOWN_FIELDS])
def test_unknown_fields_are_accepted_and_ignored(stack: Stack, kind: str, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(f"{stack.url}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text[:500]


def test_unknown_multipart_fields_are_accepted_and_ignored(stack: Stack) -> None:
    fields = {"model": I2V, "prompt": "x", "size": "16x16", "num_frames": "5", "response_format": "b64_json"}
    response = httpx.post(
        f"{stack.url}/v1/videos",
        data={**fields, "characters[]": "raccoon", "watermark": "false"},
        files={"input_reference": ("ref.png", png(), "image/png")},
        timeout=120,
    )
    assert response.status_code == 200, response.text[:500]
    assert base64.b64decode(response.json()["data"][0]["b64_json"])[4:8] == b"ftyp"
