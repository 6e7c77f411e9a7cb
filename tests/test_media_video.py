"""MP4 encoding (H.264, yuv420p, faststart, exact fps) and conditioning images for image-to-video."""

from __future__ import annotations

import io
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.media import decode_input_image, encode_mp4, fit_image, probe_mp4

RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def solid_frames(colors: list[tuple[int, int, int]], width: int = 96, height: int = 64) -> np.ndarray:
    return np.stack([np.full((height, width, 3), color, dtype=np.uint8) for color in colors])


def decode_from_pipe(data: bytes, width: int, height: int) -> np.ndarray:
    """Decode through a pipe: ffmpeg can only read an MP4 without seeking when its index comes first."""
    completed = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return np.frombuffer(completed.stdout, dtype=np.uint8).reshape(-1, height, width, 3)


def test_round_trip_keeps_frames_size_and_exact_fps() -> None:
    for fps, count in ((12, 9), (24, 5), (16, 81)):
        data = encode_mp4(solid_frames(RGB * (count // 3) + RGB[: count % 3]), fps)
        info = probe_mp4(data)
        assert (info.frames, info.width, info.height, info.fps) == (count, 96, 64, float(fps))
        assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")


def test_faststart_puts_the_index_first_and_colours_survive_in_order() -> None:
    data = encode_mp4(solid_frames(RGB * 3), 8)
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat")
    frames = decode_from_pipe(data, 96, 64)
    assert len(frames) == 9
    means = frames.reshape(9, -1, 3).mean(axis=1)
    assert np.abs(means - np.array(RGB * 3)).max() < 8, means.round()


def test_same_frames_same_bytes_and_crf_trades_size_for_quality() -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    assert encode_mp4(noise, 8) == encode_mp4(noise, 8)
    assert len(encode_mp4(noise, 8, crf=10)) > 2 * len(encode_mp4(noise, 8, crf=40))


def test_float_frames_are_scaled() -> None:
    frames = np.zeros((5, 32, 32, 3), dtype=np.float32)
    frames[..., 1] = 1.0
    decoded = decode_from_pipe(encode_mp4(frames, 8), 32, 32)
    assert np.abs(decoded.reshape(5, -1, 3).mean(axis=1) - [0, 255, 0]).max() < 8


def test_sizes_yuv420p_cannot_hold_and_empty_videos_are_refused() -> None:
    with pytest.raises(ValueError, match="even width and height"):
        encode_mp4(np.zeros((5, 63, 64, 3), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="at least one frame"):
        encode_mp4(np.zeros((0, 64, 64, 3), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="THWC"):
        encode_mp4(np.zeros((64, 64, 3), dtype=np.uint8), 8)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_input_images_that_are_not_whole_images_are_invalid_requests() -> None:
    good = png_bytes(Image.new("RGBA", (20, 10), (1, 2, 3, 4)))
    image = decode_input_image(good, "input_reference")
    assert image.mode == "RGB" and image.size == (20, 10)
    for bad, message in ((b"GIF89a...", "is not a PNG, JPEG or WebP"), (good[:40], "could not be decoded")):
        with pytest.raises(InvalidRequest, match=message) as info:
            decode_input_image(bad, "input_reference")
        assert info.value.param == "input_reference"


def test_fit_image_covers_the_size_and_crops_the_centre() -> None:
    stripes = Image.new("RGB", (300, 100))
    for i, color in enumerate(RGB):
        stripes.paste(color, (i * 100, 0, (i + 1) * 100, 100))
    fitted = fit_image(stripes, 64, 64)
    assert fitted.size == (64, 64)
    assert np.abs(np.asarray(fitted).reshape(-1, 3).mean(axis=0) - RGB[1]).max() < 4, "only the green middle"
    wide = fit_image(stripes, 96, 32)  # the same aspect ratio: everything stays
    assert wide.size == (96, 32) and wide.getpixel((5, 16))[0] > 200 and wide.getpixel((90, 16))[2] > 200
