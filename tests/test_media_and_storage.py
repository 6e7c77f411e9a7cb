"""Image encoding and the media store."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_runtime.media import decode_image, encode_image, sniff_image_format, to_uint8_hwc
from openai_frontend.storage import FileStorage, new_media_key, open_storage


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 5 % 256, (x + y) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_decodes_back_to_the_same_size(fmt: str) -> None:
    data = encode_image(gradient(), fmt, 90)
    assert sniff_image_format(data) == fmt
    assert decode_image(data).size == (64, 48)


def test_png_is_lossless_at_every_level() -> None:
    pixels = gradient()
    for level in (0, 1, 9):
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(encode_image(pixels, "png", png_compress_level=level)))), pixels
        )


def test_default_png_is_stored_uncompressed_and_a_compress_level_shrinks_it() -> None:
    """The default trades bytes for latency (one request waits for its encoding); the setting trades back."""
    pixels = np.tile(gradient(), (8, 8, 1))  # 384 x 512, smooth: zlib halves it easily
    stored = encode_image(pixels, "png")
    assert sniff_image_format(stored) == "png"
    assert len(stored) > pixels.size, "level 0 keeps every byte of the pixels"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), pixels)
    assert len(encode_image(pixels, "png", png_compress_level=1)) < len(stored) / 2


def test_float_images_are_scaled_and_clipped() -> None:
    arr = to_uint8_hwc(np.array([[[0.0, 0.5, 1.5]]], dtype=np.float32))
    assert arr.dtype == np.uint8 and arr.tolist() == [[[0, 128, 255]]]


def test_sniffing_is_by_content_not_name() -> None:
    assert sniff_image_format(b"GIF89a....") is None
    assert sniff_image_format(b"not an image at all") is None


def test_truncated_images_fail_to_decode() -> None:
    data = encode_image(gradient(), "png")
    with pytest.raises(OSError):
        decode_image(data[: len(data) // 2])


def test_file_storage_round_trip_and_refuses_escapes(tmp_path: Path) -> None:
    store = open_storage(f"file://{tmp_path}/media")
    assert isinstance(store, FileStorage)
    key = new_media_key("images", "abc123", 0, "png")
    store.put(key, b"data", "image/png")
    assert store.get(key) == b"data"
    assert (tmp_path / "media" / key).read_bytes() == b"data"
    for hostile in ["../etc/passwd", "images/../../x.png", "/etc/passwd", "images/..", "images//x", ".hidden/x"]:
        with pytest.raises(KeyError):
            store.put(hostile, b"x", "image/png")
    assert store.get("images/../../../etc/passwd") is None
    store.delete(key)
    assert store.get(key) is None


def test_unsupported_storage_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        open_storage("ftp://host/path")
