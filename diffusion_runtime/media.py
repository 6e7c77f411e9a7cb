"""Encoding generated pixels into the files users receive.

Encoding runs off the denoising path (``triton_model.DiffusionModel.denoise_then_encode``), yet a single request
still waits for it, so the choices here trade file size for latency. PNG is stored uncompressed by default
(``png_compress_level`` 0, ``stored_png``): at 1024² that is ~3 MB, against ~1.5 MB for a photo-like image at zlib
level 1, which costs ~0.1 s of CPU; Pillow's default level, 6, took 0.176 s on an H100 host's CPU. SGLang's own
server answers with stored PNGs too. JPEG/WebP take OpenAI's ``output_compression`` as their quality.
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from diffusion_runtime.errors import InvalidRequest

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
DEFAULT_PNG_COMPRESS_LEVEL = 0


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
    pixels = to_uint8_hwc(pixels)
    if output_format == "png" and png_compress_level == 0:
        return stored_png(pixels)
    image = Image.fromarray(pixels)
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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def stored_png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of uint8 HWC ``pixels`` with every row unfiltered (filter byte 0) and the zlib stream at
    level 0 (stored blocks). Pillow filters each row even at ``compress_level=0``, work that buys nothing when
    nothing is compressed: for a 1024² image this takes a few milliseconds where Pillow's level 0 takes ~70."""
    height, width, _ = pixels.shape
    rows = np.zeros((height, 1 + width * 3), dtype=np.uint8)  # column 0: each row's filter type, 0 (none)
    rows[:, 1:] = pixels.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows, 0)),
            _png_chunk(b"IEND", b""),
        )
    )


def sniff_image_format(data: bytes) -> str | None:
    """The image format by content (never by file name): ``png``, ``jpeg``, ``webp`` or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(data: bytes, mode: str | None = "RGB") -> Image.Image:
    """Decode an uploaded image fully (so truncated files fail here, not inside a pipeline), as ``mode``
    (None keeps the file's own, e.g. a mask's alpha)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert(mode) if mode else image


# --- videos --------------------------------------------------------------------------------------------------


def to_uint8_video(frames: np.ndarray) -> np.ndarray:
    """Accept a float video in [0, 1] or a uint8 one, THWC; return contiguous uint8 THWC RGB."""
    arr = np.asarray(frames)
    if arr.ndim != 4:
        raise ValueError(f"expected a THWC video, got shape {arr.shape}")
    return np.stack([to_uint8_hwc(frame) for frame in arr]) if len(arr) else arr.astype(np.uint8)


def encode_mp4(frames: np.ndarray, fps: int, crf: int = 18) -> bytes:
    """Encode uint8 THWC RGB frames as MP4 (H.264, yuv420p, ``+faststart`` so players can start before the
    whole file arrives), at exactly ``fps``. ``crf`` is x264's constant rate factor (lower: better, bigger).

    ffmpeg writes MP4 to a seekable file (the index goes first only after a second pass), so it goes through a
    temporary file. yuv420p halves chroma resolution, hence even sizes only; nothing is rescaled silently.
    """
    import imageio_ffmpeg

    video = to_uint8_video(frames)
    count, height, width = video.shape[:3]
    if count == 0:
        raise ValueError("a video needs at least one frame")
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs an even width and height, got {width}x{height}")
    with tempfile.TemporaryDirectory(prefix="mp4-") as folder:
        path = os.path.join(folder, "video.mp4")
        writer = imageio_ffmpeg.write_frames(
            path,
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", str(crf), "-movflags", "+faststart", "-map_metadata", "-1", "-fflags", "+bitexact"],
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in video:
                writer.send(frame)
        finally:
            writer.close()
        with open(path, "rb") as file:
            return file.read()


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder sees in a video file."""

    frames: int
    width: int
    height: int
    fps: float
    codec: str
    pix_fmt: str


def _ffmpeg_decode(data: bytes, output_args: list[str], text: bool = True) -> subprocess.CompletedProcess:
    """Run imageio-ffmpeg's ffmpeg on a video given as bytes (through a temporary file: MP4 needs seeking)."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="mp4-") as folder:
        path = os.path.join(folder, "video.mp4")
        with open(path, "wb") as file:
            file.write(data)
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path, *output_args]
        completed = subprocess.run(command, capture_output=True, text=text, timeout=600)
    if completed.returncode != 0:
        stderr = completed.stderr if text else completed.stderr.decode(errors="replace")
        raise ValueError(f"ffmpeg could not decode the video: {stderr[-2000:]}")
    return completed


def video_previews(data: bytes, columns: int = 4, rows: int = 4, tile_width: int = 256) -> tuple[bytes, bytes]:
    """OpenAI's other content variants of a video: a WebP thumbnail (the first frame, full size) and a JPEG
    spritesheet (up to ``columns * rows`` evenly spaced frames, ``tile_width`` wide, in a grid)."""
    info = probe_mp4(data)
    raw = _ffmpeg_decode(data, ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"], text=False).stdout
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, info.height, info.width, 3)
    thumbnail = io.BytesIO()
    Image.fromarray(frames[0]).save(thumbnail, format="WEBP", quality=85)
    picks = np.linspace(0, len(frames) - 1, num=min(len(frames), columns * rows)).round().astype(int)
    tile_height = max(2, round(info.height * tile_width / info.width))
    sheet = Image.new("RGB", (tile_width * columns, tile_height * -(-len(picks) // columns)))
    for slot, index in enumerate(picks):
        tile = Image.fromarray(frames[index]).resize((tile_width, tile_height), Image.Resampling.BILINEAR)
        sheet.paste(tile, ((slot % columns) * tile_width, (slot // columns) * tile_height))
    spritesheet = io.BytesIO()
    sheet.save(spritesheet, format="JPEG", quality=85)
    return thumbnail.getvalue(), spritesheet.getvalue()


def probe_mp4(data: bytes) -> VideoInfo:
    """Decode every frame of a video file with imageio-ffmpeg's ffmpeg and report what it saw (exact frame count).

    ffmpeg runs through ``subprocess.run`` rather than imageio-ffmpeg's reader: the reader starts ffmpeg with a
    ``preexec_fn``, i.e. a full ``fork()``, and in a process with live gRPC threads (a Triton client, the
    frontend) gRPC's fork handlers sometimes write into the child's stderr before ``exec``, and the reader then
    fails to parse ffmpeg's header (observed: 2 calls in 200). Without ``preexec_fn`` Python spawns with
    ``vfork``, which runs no fork handlers.
    """

    completed = _ffmpeg_decode(data, ["-map", "0:v:0", "-f", "null", "-"])
    stream = _VIDEO_STREAM.search(completed.stderr)
    counts = _FRAME_COUNT.findall(completed.stderr)
    if stream is None or not counts:
        raise ValueError(f"no video stream in the file: {completed.stderr[-2000:]}")
    codec, pix_fmt, width, height, fps = stream.groups()
    return VideoInfo(int(counts[-1]), int(width), int(height), float(fps), codec, pix_fmt)


_VIDEO_STREAM = re.compile(r"Stream #0:\d+.*?: Video: (\w+).*?, (\w+)(?:\([^)]*\))?, (\d+)x(\d+)[^\n]*?, ([\d.]+) fps")
_FRAME_COUNT = re.compile(r"frame=\s*(\d+)")


# --- conditioning images -------------------------------------------------------------------------------------


def decode_input_image(data: bytes, param: str, mode: str | None = "RGB") -> Image.Image:
    """An uploaded conditioning image as RGB, or ``InvalidRequest`` naming ``param`` when it is not a whole,
    readable PNG, JPEG or WebP (Pillow raises several types for a bad file; the user only needs to know which)."""
    if sniff_image_format(data) is None:
        raise InvalidRequest(f"{param} is not a PNG, JPEG or WebP image", param)
    try:
        return decode_image(data, mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"{param} could not be decoded: {exc}", param) from exc


def fitted_input_image(data: bytes, param: str, width: int, height: int) -> Image.Image:
    """An uploaded conditioning image (``decode_input_image``) fitted to the requested size (``fit_image``)."""
    return fit_image(decode_input_image(data, param), width, height)


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` to cover ``width``x``height`` and crop the centre: the output keeps the requested size
    without distorting the picture (pipelines would otherwise stretch it to the new aspect ratio)."""
    if image.size == (width, height):
        return image
    return ImageOps.fit(image.convert("RGB"), (width, height), method=Image.Resampling.LANCZOS)


def edit_mask(mask: Image.Image, width: int, height: int) -> Image.Image:
    """OpenAI's edit mask marks the area to repaint with transparency; diffusers' inpainting pipelines want it
    white on black. A mask without alpha is taken as already white-on-black. Fitted like the image."""
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        grey = alpha.point(lambda a: 255 if a < 128 else 0)
    else:
        grey = mask.convert("L")
    return ImageOps.fit(grey, (width, height), method=Image.Resampling.NEAREST)


def edit_inputs(
    image: bytes | None, mask: bytes | None, width: int, height: int
) -> tuple[Image.Image | None, Image.Image | None]:
    """An edit request's image (fitted to the requested size) and its mask, decoded from their files; ``(None,
    None)`` when the request is no edit."""
    if not image:
        if mask:
            raise InvalidRequest("a mask needs an image to edit", "mask")
        return None, None
    fitted = fitted_input_image(image, "image", width, height)
    return fitted, edit_mask(decode_input_image(mask, "mask", mode=None), width, height) if mask else None
