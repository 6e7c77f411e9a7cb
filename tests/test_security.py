"""Who may call and what they may send, on a real frontend in front of a real tritonserver: API keys, body
limits, uploads checked by content, URLs as inputs refused (and never fetched), media keys never made from
user input, and prompts kept out of the logs."""

from __future__ import annotations

import base64
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from diffusion_runtime.launcher.processes import Frontend
from tests.conftest import Stack, start_stack
from tests.test_bad_input import I2V, IMAGE, TEXT, png, reliability_specs

pytestmark = pytest.mark.e2e  # starts tritonserver and frontends

KEYS = ("key-one", "key-two")


@pytest.fixture(scope="module")
def stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The image model, the image-to-video model (uploads) and the text model (prompts in chats)."""
    specs = [spec for spec in reliability_specs(tiny_models) if spec.triton_name != "video_generation"]
    yield from start_stack(specs, tmp_path_factory.mktemp("security"))


@pytest.fixture(scope="module")
def guarded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    workdir = tmp_path_factory.mktemp("guarded")
    frontend = Frontend(
        stack.triton,
        fs_url=f"file://{workdir}/media",
        log_file=workdir / "frontend.log",
        extra_args=("--state-dir", str(workdir / "state"), "--api-key", KEYS[0], "--max-body-mb", "1"),
        env={"TRITON_DIFFUSION_API_KEYS": KEYS[1]},
    )
    try:
        yield frontend.start().wait_ready()
    finally:
        frontend.stop()


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic a2V5LW9uZQ==", f"bearer {KEYS[0]}x", "Bearer"])
def test_missing_or_wrong_keys_get_401_in_openai_shape(guarded: Frontend, header: str | None) -> None:
    headers = {"authorization": header} if header else {}
    response = httpx.get(f"{guarded.url}/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"


def test_every_configured_key_works_and_health_stays_open(guarded: Frontend) -> None:
    for key in KEYS:
        client = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=key, max_retries=0)
        assert "tiny-flux" in [m.id for m in client.models.list().data]
    assert httpx.get(f"{guarded.url}/health").status_code == 200
    assert httpx.get(f"{guarded.url}/health/ready").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0).models.list()


def test_bodies_over_the_limit_get_413_and_the_server_keeps_serving(guarded: Frontend) -> None:
    headers = {"authorization": f"Bearer {KEYS[0]}"}
    big = {"model": "tiny-flux", "prompt": "x" * (2 * 1024 * 1024)}
    response = httpx.post(f"{guarded.url}/v1/images/generations", json=big, headers=headers, timeout=60)
    assert response.status_code == 413 and "larger than" in response.json()["error"]["message"]

    def chunks():  # no content-length: the limit is enforced while reading
        for _ in range(40):
            yield b"x" * 65536

    response = httpx.post(
        f"{guarded.url}/v1/videos",
        content=chunks(),
        timeout=60,
        headers={**headers, "content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    ok = httpx.post(
        f"{guarded.url}/v1/images/generations",
        headers=headers,
        timeout=120,
        json={
            "model": "tiny-flux",
            "prompt": "ok",
            "size": "64x64",
            "response_format": "b64_json",
            "num_inference_steps": 1,
        },
    )
    assert ok.status_code == 200 and base64.b64decode(ok.json()["data"][0]["b64_json"])[:4] == b"\x89PNG"


def test_binding_beyond_loopback_demands_keys(stack: Stack, tmp_path: Path) -> None:
    frontend = Frontend(
        stack.triton,
        host="0.0.0.0",
        log_file=tmp_path / "frontend.log",
        extra_args=("--state-dir", str(tmp_path / "state")),
    ).start()
    assert frontend.process.wait(timeout=60) != 0
    assert "give --api-key" in (tmp_path / "frontend.log").read_text()


TEXT_BYTES = b"just some text, no pixels here\n"


def video_upload(stack: Stack, filename: str, data: bytes, content_type: str, **fields: str) -> httpx.Response:
    form = {"model": I2V, "prompt": "x", "size": "16x16", "num_frames": "5", "response_format": "url", **fields}
    files = {"input_reference": (filename, data, content_type)}
    return httpx.post(f"{stack.url}/v1/videos", data=form, files=files, timeout=120)


def edit_upload(stack: Stack, files: dict[str, tuple[str, bytes, str]]) -> httpx.Response:
    form = {"model": IMAGE, "prompt": "x", "size": "16x16", "response_format": "b64_json"}
    return httpx.post(f"{stack.url}/v1/images/edits", data=form, files=files, timeout=120)


def test_uploads_are_checked_by_content_not_by_name(stack: Stack) -> None:
    """An image called notes.txt (sent as text/plain) is an image; a text file called photo.png is not."""
    accepted = video_upload(stack, "notes.txt", png(), "text/plain")
    assert accepted.status_code == 200 and accepted.json()["status"] == "completed", accepted.text
    refused = video_upload(stack, "photo.png", TEXT_BYTES, "image/png")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input_reference", refused.text

    assert edit_upload(stack, {"image": ("notes.txt", png(), "text/plain")}).status_code == 200
    for part in ("image", "mask"):
        files = {"image": ("photo.png", png(), "image/png"), part: ("photo.png", TEXT_BYTES, "image/png")}
        refused = edit_upload(stack, files)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == part, refused.text


class Listener:
    """A TCP port on loopback that records every connection made to it: proof of whether a URL was fetched."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, peer = self.socket.accept()
            except OSError:
                continue
            self.connections.append(peer)
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close()


def test_urls_given_as_inputs_are_refused_and_never_fetched(stack: Stack) -> None:
    """No input is fetched from a URL (the server would otherwise reach loopback, link-local and private
    addresses on a caller's behalf): URLs are refused with a 400 naming the field."""
    listener = Listener()
    try:
        urls = [f"http://127.0.0.1:{listener.port}/cat.png", f"https://127.0.0.1:{listener.port}/cat.png"]
        for url in [*urls, "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"]:
            body = {"model": I2V, "prompt": "x", "size": "16x16", "input_reference": url}
            response = httpx.post(f"{stack.url}/v1/videos", json=body, timeout=60)
            assert response.status_code == 400 and response.json()["error"]["param"] == "input_reference", url
        as_field = {"input_reference": (None, urls[0])}  # multipart, the URL as a text field rather than a file
        form = {"model": I2V, "prompt": "x", "size": "16x16"}
        response = httpx.post(f"{stack.url}/v1/videos", data=form, files=as_field, timeout=60)
        assert response.status_code == 400 and response.json()["error"]["param"] == "input_reference", response.text
        edit = httpx.post(
            f"{stack.url}/v1/images/edits",
            data={"model": IMAGE, "prompt": "x", "image": urls[0]},
            files={"mask": ("mask.png", png(), "image/png")},
            timeout=60,
        )
        assert edit.status_code == 400 and edit.json()["error"]["param"] == "image", edit.text
        picture = {"type": "image_url", "image_url": {"url": urls[0]}}
        chat = {"model": TEXT, "messages": [{"role": "user", "content": [picture]}]}
        response = httpx.post(f"{stack.url}/v1/chat/completions", json=chat, timeout=60)
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages", response.text
    finally:
        listener.close()
    assert listener.connections == [], "the server fetched a URL it was given"


MEDIA_KEY = re.compile(r"^(images/[0-9a-f]{32}/\d+\.(png|jpeg|webp)|videos/video_[0-9a-f]{32}/[a-z0-9_.-]+)$")


def test_stored_media_keys_never_come_from_user_input(stack: Stack) -> None:
    trick = "../../../../evil-" + uuid.uuid4().hex[:8]
    image = httpx.post(
        f"{stack.url}/v1/images/generations",
        json={"model": IMAGE, "prompt": trick, "user": trick, "size": "16x16", "response_format": "url"},
        timeout=120,
    )
    assert image.status_code == 200, image.text
    key = image.json()["data"][0]["url"].split("/media/", 1)[1]
    assert MEDIA_KEY.match(key), key
    video = video_upload(stack, trick, png(), "image/png", user=trick, prompt=trick)
    assert video.status_code == 200, video.text
    assert re.fullmatch(r"video_[0-9a-f]{32}", video.json()["id"])

    stored = [path.relative_to(stack.media_dir).as_posix() for path in stack.media_dir.rglob("*") if path.is_file()]
    assert stored and all(MEDIA_KEY.match(path) for path in stored), stored
    workdir = stack.media_dir.parent
    assert not list(workdir.rglob("*evil-*")), "a user-given name reached the disk"
    assert not (stack.media_dir / trick).resolve().exists()


def test_prompts_are_not_written_to_logs(stack: Stack) -> None:
    """At the default log level neither the frontend nor tritonserver (with the models' own logging) writes a
    prompt, whether the request succeeds, is refused or streams."""
    secret = f"secret-prompt-{uuid.uuid4().hex}"
    message = [{"role": "user", "content": secret}]
    requests = [
        ("/v1/images/generations", {"model": IMAGE, "prompt": secret, "negative_prompt": secret, "size": "16x16"}),
        ("/v1/images/generations", {"model": IMAGE, "prompt": secret, "size": "17x17"}),  # refused
        ("/v1/chat/completions", {"model": TEXT, "messages": message, "max_tokens": 4}),
        ("/v1/chat/completions", {"model": TEXT, "messages": message, "max_tokens": 4, "stream": True}),
        ("/v1/chat/completions", {"model": TEXT, "messages": message, "temperature": 9}),  # refused
        ("/v1/completions", {"model": TEXT, "prompt": secret, "max_tokens": 4}),
    ]
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        statuses = [http.post(path, json=body).status_code for path, body in requests]
    assert statuses == [200, 400, 200, 200, 400, 200], statuses
    assert video_upload(stack, "ref.png", png(), "image/png", prompt=secret).status_code == 200

    frontend_log = Path(stack.frontend.log_file).read_text(errors="replace")
    triton_log = Path(stack.triton.log_file).read_text(errors="replace")
    assert "POST /v1/chat/completions" in frontend_log, "the frontend's log is being written"
    assert "successfully loaded" in triton_log, "tritonserver's log is being written"
    assert secret not in frontend_log
    assert secret not in triton_log
