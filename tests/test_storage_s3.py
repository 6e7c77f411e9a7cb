"""Media in S3, through a real S3-protocol server process (moto's server mode on loopback)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from diffusion_runtime.launcher.processes import Frontend
from diffusion_runtime.media import probe_mp4
from tests.conftest import S3Server, Stack, start_stack, tiny_image_spec, tiny_video_specs

pytestmark = pytest.mark.e2e  # starts moto's S3 server, tritonserver and the frontend

BUCKET, PREFIX = "media-bucket", "team-a/generated"


@pytest.fixture(scope="module")
def s3_stack(
    tiny_models: dict[str, Path], s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    s3_server.client().create_bucket(Bucket=BUCKET)
    yield from start_stack(
        [tiny_image_spec(tiny_models, "diffusers"), tiny_video_specs(tiny_models, "diffusers")[0]],
        tmp_path_factory.mktemp("s3"),
        fs_url=f"s3://{BUCKET}/{PREFIX}",
        frontend_env=s3_server.env,
        frontend_args=("--presign-expiry", "600"),
    )


def objects(s3_server: S3Server) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=BUCKET)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_images_land_under_the_prefix_and_presigned_urls_serve_them(s3_stack: Stack, s3_server: S3Server) -> None:
    before = set(objects(s3_server))
    result = s3_stack.client().images.generate(
        model="tiny-flux",
        prompt="a kite",
        size="64x64",
        n=2,
        response_format="url",
        user="../../../../escape",
        extra_body={"num_inference_steps": 1},
    )
    new = sorted(set(objects(s3_server)) - before)
    assert len(new) == 2 and all(key.startswith(f"{PREFIX}/images/") for key in new), new
    assert not any("escape" in key or ".." in key for key in new)
    for item in result.data:
        url = urlparse(item.url)
        query = parse_qs(url.query)
        assert url.path.lstrip("/").startswith(f"{BUCKET}/{PREFIX}/images/")
        # A presigned URL: signed, and valid for the configured time from now (moto does not enforce expiry,
        # so the expiry is checked in the URL itself).
        assert query["X-Amz-Expires"] == ["600"] and "X-Amz-Signature" in query
        signed_at = time.mktime(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")) - time.timezone
        assert abs(signed_at - time.time()) < 120
        response = httpx.get(item.url, timeout=30)
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
        key = url.path.lstrip("/").split("/", 1)[1]
        assert s3_server.client().get_object(Bucket=BUCKET, Key=key)["ContentType"] == "image/png"


def test_http_url_replaces_presigned_urls(s3_stack: Stack, s3_server: S3Server, tmp_path: Path) -> None:
    frontend = (
        Frontend(
            s3_stack.triton,
            fs_url=f"s3://{BUCKET}/{PREFIX}",
            http_url="https://cdn.example.com/media/",
            env=s3_server.env,
            log_file=tmp_path / "frontend.log",
            extra_args=("--state-dir", str(tmp_path / "state")),
        )
        .start()
        .wait_ready()
    )
    try:
        response = httpx.post(
            f"{frontend.url}/v1/images/generations",
            json={"model": "tiny-flux", "prompt": "x", "size": "64x64", "num_inference_steps": 1},
            timeout=120,
        )
        url = response.json()["data"][0]["url"]
        assert url.startswith("https://cdn.example.com/media/images/") and url.endswith("/0.png")
        assert f"{PREFIX}/{url.removeprefix('https://cdn.example.com/media/')}" in objects(s3_server)
    finally:
        frontend.stop()


def test_a_missing_bucket_stops_startup_with_a_clear_error(
    s3_server: S3Server, s3_stack: Stack, tmp_path: Path
) -> None:
    frontend = Frontend(
        s3_stack.triton, fs_url="s3://no-such-bucket/x", env=s3_server.env, log_file=tmp_path / "frontend.log"
    ).start()
    assert frontend.process is not None
    assert frontend.process.wait(timeout=60) != 0, "it exits on its own instead of serving"
    assert "S3 bucket 'no-such-bucket' does not exist" in (tmp_path / "frontend.log").read_text()


def test_videos_land_under_the_prefix_and_their_urls_serve_the_mp4(s3_stack: Stack, s3_server: S3Server) -> None:
    body = {
        "prompt": "x",
        "model": "tiny-wan-t2v",
        "size": "64x64",
        "response_format": "url",
        "nvext": {"num_frames": 9, "fps": 8, "num_inference_steps": 2},
    }
    video = httpx.post(f"{s3_stack.url}/v1/videos", json=body, timeout=300).json()
    assert f"{PREFIX}/videos/{video['id']}/video.mp4" in objects(s3_server)
    response = httpx.get(video["data"][0]["url"], timeout=30)
    assert response.status_code == 200 and probe_mp4(response.content).frames == 9
    # The job API serves the same bytes from the bucket.
    content = httpx.get(f"{s3_stack.url}/v1/videos/{video['id']}/content", timeout=30)
    assert content.content == response.content
    assert httpx.delete(f"{s3_stack.url}/v1/videos/{video['id']}").json()["deleted"] is True
    assert f"{PREFIX}/videos/{video['id']}/video.mp4" not in objects(s3_server)
