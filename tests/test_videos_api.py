"""``/v1/videos`` through the OpenAI SDK and the seed's curl body, against real tritonserver + frontend."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from diffusion_runtime.media import probe_mp4
from tests.conftest import Stack, metric_value, start_stack, tiny_video_specs, wait_for

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend

T2V, I2V = "tiny-wan-t2v", "tiny-wan-i2v"
QUICK = {"num_frames": 9, "fps": 8, "num_inference_steps": 2, "seed": 1}


@pytest.fixture(scope="module")
def video_stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from start_stack(tiny_video_specs(tiny_models, "diffusers"), tmp_path_factory.mktemp("videos"))


def mp4_shape(data: bytes) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) of an MP4, by decoding every frame with ffmpeg."""
    info = probe_mp4(data)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    return info.frames, info.width, info.height, info.fps


def png_bytes(width: int = 64, height: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def http_progress_trace(stack: Stack, video_id: str) -> list[tuple[str, int]]:
    """Poll the job until it ends, returning every (status, progress) seen."""
    seen: list[tuple[str, int]] = []

    def finished() -> bool:
        job = httpx.get(f"{stack.url}/v1/videos/{video_id}", timeout=30).json()
        seen.append((job["status"], job["progress"]))
        return job["status"] in ("completed", "failed")

    wait_for(finished, timeout=300, interval=0.05, message="the video finishing")
    return seen


def test_sdk_create_poll_download_list_delete(video_stack: Stack) -> None:
    client = video_stack.client()
    created = client.videos.create(
        model=T2V,
        prompt="a raccoon in a garden",
        seconds="4",
        size="64x64",
        extra_body={"num_frames": 9, "fps": 8, "num_inference_steps": 40, "seed": 3},
    )
    assert created.status in ("queued", "in_progress") and created.object == "video"
    trace = http_progress_trace(video_stack, created.id)
    progresses = [p for _, p in trace]
    assert progresses == sorted(progresses), "progress never goes back"
    assert any(0 < p < 100 for p in progresses), f"progress rose through intermediate values: {trace}"
    assert trace[-1] == ("completed", 100)

    video = client.videos.poll(created.id)  # the SDK helper sees it completed
    assert video.status == "completed" and video.seconds == "4" and video.size == "64x64"
    content = client.videos.download_content(created.id)
    assert mp4_shape(content.read()) == (9, 64, 64, 8.0)

    listed = client.videos.list()
    assert created.id in [v.id for v in listed.data]
    deleted = client.videos.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(created.id)
    assert not list(video_stack.media_dir.rglob(f"{created.id}/*.mp4")), "the file went with the job"


def test_seed_document_blocking_curl(video_stack: Stack) -> None:
    body = {
        "prompt": "A curious raccoon exploring a garden",
        "model": T2V,
        "seconds": 2,
        "size": "832x480",
        "response_format": "url",
        "nvext": {"fps": 8, "num_frames": 17, "num_inference_steps": 50},
    }
    response = httpx.post(f"{video_stack.url}/v1/videos", json=body, timeout=900)
    assert response.status_code == 200, response.text
    video = response.json()
    assert video["status"] == "completed" and video["progress"] == 100
    assert video["inference_time_s"] > 0
    mp4 = httpx.get(video["data"][0]["url"], timeout=60)
    assert mp4.headers["content-type"] == "video/mp4"
    assert mp4_shape(mp4.content) == (17, 832, 480, 8.0)


def test_blocking_b64_json_and_seed_repeatability(video_stack: Stack) -> None:
    body = {"prompt": "waves", "model": T2V, "size": "64x64", "response_format": "b64_json", "nvext": QUICK}
    first = httpx.post(f"{video_stack.url}/v1/videos", json=body, timeout=300).json()
    again = httpx.post(f"{video_stack.url}/v1/videos", json=body, timeout=300).json()
    assert first["data"][0]["b64_json"] == again["data"][0]["b64_json"]
    assert first["seed"] == 1 and first["num_frames"] == 9
    assert mp4_shape(base64.b64decode(first["data"][0]["b64_json"]))[:3] == (9, 64, 64)
    # The answer carries the very file the job stored (handed over in memory, not read back).
    stored = httpx.get(f"{video_stack.url}/v1/videos/{first['id']}/content", timeout=60)
    assert stored.status_code == 200 and stored.content == base64.b64decode(first["data"][0]["b64_json"])


def test_image_to_video_from_a_multipart_upload(video_stack: Stack) -> None:
    client = video_stack.client()
    created = client.videos.create(
        model=I2V,
        prompt="the picture comes alive",
        size="64x64",
        input_reference=("reference.png", png_bytes(), "image/png"),
        extra_body=QUICK,
    )
    video = client.videos.poll(created.id)
    assert video.status == "completed", video.error
    assert mp4_shape(client.videos.download_content(created.id).read())[:3] == (9, 64, 64)


def test_image_to_video_from_a_json_data_url(video_stack: Stack) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    body = {
        "prompt": "x",
        "model": I2V,
        "size": "64x64",
        "input_reference": data_url,
        "response_format": "url",
        "nvext": QUICK,
    }
    response = httpx.post(f"{video_stack.url}/v1/videos", json=body, timeout=300)
    assert response.status_code == 200, response.text
    assert mp4_shape(httpx.get(response.json()["data"][0]["url"]).content)[:3] == (9, 64, 64)


def test_content_is_mp4_whatever_accept_says_and_previews_exist(video_stack: Stack) -> None:
    body = {"prompt": "x", "model": T2V, "size": "64x64", "response_format": "url", "nvext": QUICK}
    video_id = httpx.post(f"{video_stack.url}/v1/videos", json=body, timeout=300).json()["id"]
    for accept in ("application/binary", "application/json", "*/*"):
        response = httpx.get(f"{video_stack.url}/v1/videos/{video_id}/content", headers={"accept": accept})
        assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    client = video_stack.client()
    thumbnail = Image.open(io.BytesIO(client.videos.download_content(video_id, variant="thumbnail").read()))
    assert (thumbnail.format, thumbnail.size) == ("WEBP", (64, 64))
    sheet = Image.open(io.BytesIO(client.videos.download_content(video_id, variant="spritesheet").read()))
    assert sheet.format == "JPEG" and sheet.size == (4 * 256, 3 * 256), "9 frames: a 4-wide grid of 3 rows"
    bad = httpx.get(f"{video_stack.url}/v1/videos/{video_id}/content", params={"variant": "gif"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "variant"
    client.videos.delete(video_id)
    assert not list(video_stack.media_dir.rglob(f"{video_id}/*")), "every variant went with the job"


def test_list_paginates_with_after(video_stack: Stack) -> None:
    client = video_stack.client()
    ids = [client.videos.create(model=T2V, prompt=f"clip {i}", size="64x64", extra_body=QUICK).id for i in range(3)]
    for video_id in ids:
        client.videos.poll(video_id)
    pages, after = [], None
    while True:
        page = httpx.get(
            f"{video_stack.url}/v1/videos", params={"limit": 1, **({"after": after} if after else {})}
        ).json()
        pages.extend(v["id"] for v in page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert pages[:3] == ids[::-1], "newest first, every job exactly once"
    assert len(pages) == len(set(pages))
    ascending = httpx.get(f"{video_stack.url}/v1/videos", params={"order": "asc", "limit": 100}).json()
    assert [v["id"] for v in ascending["data"] if v["id"] in ids] == ids


def test_deleting_a_running_job_stops_the_model(video_stack: Stack) -> None:
    def cancelled() -> float:
        text = httpx.get(f"{video_stack.url}/metrics", timeout=10).text
        return metric_value(text, "diffusion_requests_total", model="video_generation", outcome="GenerationCancelled")

    before = cancelled()
    client = video_stack.client()
    job = client.videos.create(
        model=T2V, prompt="long", size="256x256", extra_body={"num_frames": 33, "fps": 8, "num_inference_steps": 200}
    )
    wait_for(lambda: client.videos.retrieve(job.id).progress > 0, timeout=120, message="the job starting")
    assert client.videos.delete(job.id).deleted
    wait_for(lambda: cancelled() > before, timeout=60, message="the model seeing the cancellation")
    # The model is free for the next job.
    quick = client.videos.create(model=T2V, prompt="next", size="64x64", extra_body=QUICK)
    assert client.videos.poll(quick.id).status == "completed"


def test_frontend_restart_keeps_completed_jobs_and_runs_unfinished_ones_again(video_stack: Stack) -> None:
    client = video_stack.client()
    done = client.videos.create(model=T2V, prompt="keep me", size="64x64", extra_body=QUICK)
    assert client.videos.poll(done.id).status == "completed"
    running = client.videos.create(
        model=T2V, prompt="cut off", size="256x256", extra_body={"num_frames": 33, "fps": 8, "num_inference_steps": 200}
    )
    wait_for(lambda: client.videos.retrieve(running.id).status == "in_progress", timeout=120, message="job start")

    video_stack.restart_frontend()  # a graceful stop hands the job back; the new process runs it from the start
    client = video_stack.client()
    kept = client.videos.retrieve(done.id)
    assert kept.status == "completed"
    assert mp4_shape(client.videos.download_content(done.id).read())[:3] == (9, 64, 64)
    wait_for(
        lambda: client.videos.retrieve(running.id).status == "in_progress", timeout=60, message="the job running again"
    )
    assert client.videos.delete(running.id).deleted


BAD = [
    ("size not WxH", {"prompt": "x", "model": T2V, "size": "wide"}, 400, "size"),
    ("negative seconds", {"prompt": "x", "model": T2V, "seconds": "-4"}, 400, "seconds"),
    ("seconds not a number", {"prompt": "x", "model": T2V, "seconds": "four"}, 400, "seconds"),
    ("zero frames", {"prompt": "x", "model": T2V, "nvext": {"num_frames": 0}}, 400, "num_frames"),
    ("frames not 4k+1", {"prompt": "x", "model": T2V, "nvext": {"num_frames": 16}}, 400, "num_frames"),
    ("missing prompt", {"model": T2V, "seconds": "4"}, 400, "prompt"),
    ("unknown model", {"prompt": "x", "model": "sora-9"}, 404, "model"),
    ("size not a multiple", {"prompt": "x", "model": T2V, "size": "70x64"}, 400, "width"),
    (
        "image to a text model",
        {"prompt": "x", "model": T2V, "input_reference": base64.b64encode(png_bytes()).decode()},
        400,
        "input_reference",
    ),
    ("no image to an i2v model", {"prompt": "x", "model": I2V}, 400, "input_reference"),
    ("reference not base64", {"prompt": "x", "model": I2V, "input_reference": "%%%"}, 400, "input_reference"),
    (
        "reference not an image",
        {"prompt": "x", "model": I2V, "input_reference": base64.b64encode(b"just some text").decode()},
        400,
        "input_reference",
    ),
    ("bad response_format", {"prompt": "x", "model": T2V, "response_format": "gif"}, 400, "response_format"),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), BAD, ids=[c[0] for c in BAD])
def test_bad_json_input(video_stack: Stack, case: str, body: dict, status: int, param: str) -> None:
    response = httpx.post(f"{video_stack.url}/v1/videos", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_multipart_uploads_and_ids(video_stack: Stack) -> None:
    with video_stack.http() as http:
        truncated = png_bytes()[:60]
        for payload in (b"not an image", truncated):
            response = http.post(
                "/v1/videos",
                data={"prompt": "x", "model": I2V},
                files={"input_reference": ("ref.png", payload, "image/png")},
            )
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == "input_reference"
        assert http.post("/v1/videos", content=b"prompt=x", headers={"content-type": "text/plain"}).status_code == 415
        for path in ("/v1/videos/video_missing", "/v1/videos/..%2F..%2Fetc", "/v1/videos/video_0/content"):
            response = http.get(path)
            assert response.status_code == 404 and "error" in response.json()
        # The server keeps serving.
        ok = http.post(
            "/v1/videos", json={"prompt": "ok", "model": T2V, "size": "64x64", "response_format": "url", "nvext": QUICK}
        )
        assert ok.status_code == 200, ok.text
