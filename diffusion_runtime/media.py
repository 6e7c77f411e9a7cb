"""Encoding generated pixels into the files users receive.

Encoding runs off the denoising path (see ``image_diffusion``'s model), so the choices here trade file size
for CPU time: PNG uses a fast zlib level by default (FACTS: Pillow's default level costs ~3% of a FLUX-size
generation on an H100), JPEG/WebP take OpenAI's ``output_compression`` as their quality.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
DEFAULT_PNG_COMPRESS_LEVEL = 1


def to_uint8_hwc(pixels: np.ndarray) -> np.ndarray:
    """Accept float images in [0, 1] or uint8 ones, HWC; return contiguous uint8 HWC RGB."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an HWC image with 3 or 4 channels, got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def encode_image(
    pixels: np.ndarray,
    output_format: str,
    output_compression: int = 100,
    png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
) -> bytes:
    """Encode one HWC image. ``output_compression`` is the JPEG/WebP quality (OpenAI's field); PNG is lossless
    and uses ``png_compress_level`` (a deployment setting) instead."""
    image = Image.fromarray(to_uint8_hwc(pixels))
    buf = io.BytesIO()
    if output_format == "png":
        image.save(buf, format="PNG", compress_level=png_compress_level)
    elif output_format == "jpeg":
        image.save(buf, format="JPEG", quality=max(1, output_compression))
    elif output_format == "webp":
        image.save(buf, format="WEBP", quality=output_compression, method=4)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buf.getvalue()


def sniff_image_format(data: bytes) -> str | None:
    """The image format by content (never by file name): ``png``, ``jpeg``, ``webp`` or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(data: bytes) -> Image.Image:
    """Decode an uploaded image fully (so truncated files fail here, not inside a pipeline) as RGB."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")
