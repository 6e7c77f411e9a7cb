"""Launch presets mirroring the seed deployment's scripts (``scripts/launch/*.sh``).

Each preset serves one kind of model with the seed's defaults (model, port, GPU count) through the serve
command (``cli.main``, what ``scripts/serve.sh`` runs); everything a preset does not set can still be passed
through (see ``--help``). ``python -m diffusion_runtime.launcher.presets PRESET SCRIPT [options]`` runs one.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from diffusion_runtime.launcher import cli


@dataclass(frozen=True)
class Preset:
    slot: str
    description: str
    model: str
    port: int
    gpus_per_instance: int = 1


WAN_T2V = {
    "1b": Preset("video", "Wan2.1 text-to-video, 1.3B on one GPU", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 8000, 1),
    "14b": Preset("video", "Wan2.1 text-to-video, 14B over two GPUs", "Wan-AI/Wan2.1-T2V-14B-Diffusers", 8000, 2),
}
PRESETS = {
    "image": Preset("image", "FLUX text-to-image", "black-forest-labs/FLUX.1-dev", 8000),
    "llada": Preset(
        "dllm", "LLaDA diffusion language model (chat and completions)", "inclusionAI/LLaDA2.0-mini-preview", 8001
    ),
    "t2v": Preset(
        "video", "Wan2.1 text-to-video (--wan-size: 1.3B on one GPU or 14B over two)", WAN_T2V["1b"].model, 8000
    ),
    "i2v": Preset(
        "i2v", "Wan2.1 image-to-video, 14B 480P over two GPUs", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", 8000, 2
    ),
}


def build_parser(name: str, script: str) -> argparse.ArgumentParser:
    preset = PRESETS[name]
    parser = argparse.ArgumentParser(
        prog=script,
        description=f"Serve {preset.description} behind the OpenAI-compatible API (tritonserver + frontend). "
        "Options not listed here are passed to scripts/serve.sh (see its --help).",
    )
    parser.add_argument("--model", default=None, help=f"HF id or local folder (default {preset.model})")
    parser.add_argument("--port", type=int, default=preset.port, help=f"API port (default {preset.port})")
    parser.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    parser.add_argument("--fs-url", default=None, help="media storage: file:///path or s3://bucket/prefix")
    parser.add_argument("--http-url", default=None, help="public base URL of the stored media")
    parser.add_argument("--gpus", default=None, help="GPU indices to use, e.g. 0,1 (default: all)")
    parser.add_argument("--engine", default="auto", help="auto, sglang, or the portable engine")
    parser.add_argument("--served-name", default=None, help="the model id clients send (default: the model)")
    if name == "t2v":
        parser.add_argument(
            "--wan-size",
            choices=sorted(WAN_T2V),
            default="1b",
            help="1b: Wan2.1 T2V 1.3B on one GPU; 14b: Wan2.1 T2V 14B over two GPUs",
        )
    if name == "llada":
        parser.add_argument("--dllm-algorithm", default="LowConfidence", help="SGLang dLLM algorithm")
        parser.add_argument("--dllm-algorithm-config", default=None, help="YAML file with the algorithm's settings")
    return parser


def serve_arguments(name: str, args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    preset = WAN_T2V[args.wan_size] if name == "t2v" else PRESETS[name]
    slot = next(s for s in cli.SLOTS if s.flag == preset.slot)
    argv = [
        "--kinds",
        slot.kind,
        f"--{slot.flag}-model",
        args.model or preset.model,
        f"--{slot.flag}-engine",
        args.engine,
        "--port",
        str(args.port),
        "--host",
        args.host,
        "--gpus-per-instance",
        str(preset.gpus_per_instance),
    ]
    for flag, value in (
        ("--fs-url", args.fs_url),
        ("--http-url", args.http_url),
        ("--gpus", args.gpus),
        (f"--{slot.flag}-served-name", args.served_name),
    ):
        if value:
            argv += [flag, value]
    if name == "llada":
        argv += ["--param", f"dllm.dllm_algorithm={args.dllm_algorithm}"]
        if args.dllm_algorithm_config:
            argv += ["--param", f"dllm.dllm_algorithm_config={args.dllm_algorithm_config}"]
    return argv + passthrough


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in PRESETS:
        raise SystemExit(f"usage: launch PRESET SCRIPT [options]; presets: {', '.join(PRESETS)}")
    name, script, rest = argv[0], argv[1], argv[2:]
    args, passthrough = build_parser(name, script).parse_known_args(rest)
    return cli.main(serve_arguments(name, args, passthrough))


if __name__ == "__main__":
    sys.exit(main())
