"""Encoding: what turning pixels into files costs, set against the generation it follows.

Images are encoded by ``diffusion_runtime.media.encode_image`` exactly as the model does (PNG at zlib levels
1 — the served default —, 6 — Pillow's default — and 9; JPEG and WebP at ``output_compression`` 100, OpenAI's
default), videos by ``encode_mp4`` (H.264, yuv420p, CRF 18). Two contents: a photograph (matplotlib's sample
portrait, resized; frames pan across it) and uniform noise, the worst case for every codec — and close to what
randomly initialised models produce. Generation times to compare with were measured on an H100 (FLUX.1-dev at
1024², Wan2.1-1.3B at 832×480×81); other sizes are scaled from them (marked as estimates).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.stats import summarize

IMAGE_FORMATS = (
    ("png-1", "png", 100, 1),
    ("png-6", "png", 100, 6),
    ("png-9", "png", 100, 9),
    ("jpeg", "jpeg", 100, 1),
    ("webp", "webp", 100, 1),
)
# Generation the encoding follows, measured on an H100: FLUX.1-dev 28 steps; Wan2.1-1.3B 50 steps at 832x480.
GPU_GENERATION_S = {
    1024: (5.28, "FLUX.1-dev 1024², 28 steps, H100 (measured)"),
    512: (5.28 / 4, "FLUX.1-dev 512², 28 steps, H100 (estimate: 1024² time x 1/4 of the tokens)"),
    81: (65.0, "Wan2.1-1.3B 832x480x81, 50 steps, H100 (measured: 0.651 s per forward)"),
    33: (65.0 * 9 / 21, "Wan2.1-1.3B 832x480x33, 50 steps, H100 (estimate: 9 of 21 latent frames)"),
}
# The same encoders measured on the H100 host's CPU (1024², the random-weight FLUX output).
GPU_HOST_ENCODE_S = {"png-6": 0.176, "webp": 0.259, "jpeg": 0.007}


def photo(width: int, height: int) -> np.ndarray:
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as source:
        picture = source.convert("RGB")
    scale = max(width / picture.width, height / picture.height)
    resized = picture.resize((round(picture.width * scale) + 1, round(picture.height * scale) + 1), Image.LANCZOS)
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)))


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def panning_clip(frames: int, width: int, height: int) -> np.ndarray:
    """A camera pan across the photograph: real motion for the encoder's motion search."""
    wide = photo(width * 2, height)
    step = width / max(frames - 1, 1)
    return np.stack([wide[:, int(i * step) : int(i * step) + width] for i in range(frames)])


def noise_clip(frames: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def _time(function, reps: int) -> tuple[list[float], int]:
    function()  # warm-up (imports, codec set-up)
    times = []
    size = 0
    for _ in range(reps):
        start = time.perf_counter()
        out = function()
        times.append(time.perf_counter() - start)
        size = len(out)
    return times, size


def image_encoding(reps: int, sizes: tuple[int, ...] = (512, 1024)) -> list[dict[str, Any]]:
    from diffusion_runtime.media import encode_image

    rows = []
    for size in sizes:
        gen_s, gen_note = GPU_GENERATION_S[size]
        for content, pixels in (("photo", photo(size, size)), ("noise", noise(size, size))):
            # Interleave formats within each repetition so drift in the machine's load hits all alike.
            samples: dict[str, list[float]] = {label: [] for label, *_ in IMAGE_FORMATS}
            sizes_out: dict[str, int] = {}
            for _label, fmt, quality, level in IMAGE_FORMATS:
                encode_image(pixels, fmt, quality, level)
            for _ in range(reps):
                for label, fmt, quality, level in IMAGE_FORMATS:
                    start = time.perf_counter()
                    data = encode_image(pixels, fmt, quality, level)
                    samples[label].append(time.perf_counter() - start)
                    sizes_out[label] = len(data)
            for label, *_ in IMAGE_FORMATS:
                stats = summarize(samples[label], 1000)
                rows.append(
                    {
                        "size": size,
                        "content": content,
                        "format": label,
                        "encode_ms": stats,
                        "bytes": sizes_out[label],
                        "gpu_generation_s": gen_s,
                        "gpu_generation": gen_note,
                        "fraction_of_generation": stats["p50"] / 1000 / gen_s,
                        "gpu_host_encode_s": GPU_HOST_ENCODE_S.get(label) if size == 1024 else None,
                    }
                )
            print(f"[bench] encoding {size}² {content}: done", flush=True)
    return rows


def video_encoding(reps: int, frame_counts: tuple[int, ...] = (33, 81), contents=("pan", "noise")) -> list[dict]:
    from diffusion_runtime.media import encode_mp4

    rows = []
    width, height, fps = 832, 480, 16
    for frames in frame_counts:
        gen_s, gen_note = GPU_GENERATION_S[frames]
        for content in contents:
            clip = panning_clip(frames, width, height) if content == "pan" else noise_clip(frames, width, height)
            times, size = _time(lambda clip=clip: encode_mp4(clip, fps), reps)
            stats = summarize(times, 1000)
            rows.append(
                {
                    "frames": frames,
                    "size": f"{width}x{height}",
                    "content": content,
                    "format": "mp4 (h264 crf 18)",
                    "encode_ms": stats,
                    "bytes": size,
                    "gpu_generation_s": gen_s,
                    "gpu_generation": gen_note,
                    "fraction_of_generation": stats["p50"] / 1000 / gen_s,
                }
            )
            print(f"[bench] encoding mp4 {frames} frames {content}: {stats['p50']:.0f} ms", flush=True)
    return rows
