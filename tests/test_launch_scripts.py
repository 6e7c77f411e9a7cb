"""The seed-style launch scripts: each answers --help, and each preset renders the deployment it promises."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from diffusion_runtime.launcher import cli, presets
from diffusion_runtime.launcher.repository import PROJECT_ROOT, render_repository

SCRIPTS = {
    "image_diffusion.sh": "black-forest-labs/FLUX.1-dev",
    "diffusion_llada.sh": "inclusionAI/LLaDA2.0-mini-preview",
    "text-to-video-diffusion.sh": "--wan-size",
    "image-to-video-diffusion.sh": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
}


@pytest.mark.e2e  # runs each script (setup.sh, then Python)
@pytest.mark.parametrize(("script", "mentions"), SCRIPTS.items())
def test_each_launch_script_answers_help(script: str, mentions: str) -> None:
    done = subprocess.run(
        [str(PROJECT_ROOT / "scripts" / "launch" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {PROJECT_ROOT / 'scripts' / 'launch' / script}")
    for flag in ("--model", "--port", "--fs-url", "--http-url", "--gpus", mentions):
        assert flag in done.stdout, flag


def rendered(preset: str, argv: list[str], gpus: list[int], tmp_path: Path) -> tuple[mc.ModelConfig, list[str]]:
    args, rest = presets.build_parser(preset, "x").parse_known_args(argv)
    serve_args = cli.build_parser().parse_args(presets.serve_arguments(preset, args, rest))
    serve_args.kinds = serve_args.kinds.split(",")
    specs = cli.model_specs(serve_args)
    assert len(specs) == 1
    folder = render_repository(specs, tmp_path / "repo", gpus=gpus) / specs[0].triton_name
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    return config, presets.serve_arguments(preset, args, rest)


def test_wan_14b_spans_two_gpus_and_1b_takes_one_each(tmp_path: Path) -> None:
    big, argv = rendered("t2v", ["--wan-size", "14b", "--fs-url", "s3://bucket/p"], [0, 1], tmp_path)
    assert big.parameters["model_path"].string_value == "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    assert [(g.name, g.kind) for g in big.instance_group] == [("gpus-0-1", mc.ModelInstanceGroup.KIND_MODEL)]
    assert big.parameters["num_gpus"].string_value == "2"
    assert argv[argv.index("--fs-url") + 1] == "s3://bucket/p"

    small, _ = rendered("t2v", [], [0, 1], tmp_path)
    assert small.parameters["model_path"].string_value == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert [(g.kind, list(g.gpus)) for g in small.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, [0, 1])]


def test_llada_preset_uses_port_8001_and_passes_the_algorithm(tmp_path: Path) -> None:
    config, argv = rendered("llada", ["--dllm-algorithm", "JointThreshold"], [0], tmp_path)
    assert argv[argv.index("--port") + 1] == "8001"
    assert config.parameters["dllm_algorithm"].string_value == "JointThreshold"
    assert config.parameters["model_path"].string_value == "inclusionAI/LLaDA2.0-mini-preview"


def test_image_preset_passes_other_options_through(tmp_path: Path) -> None:
    config, argv = rendered("image", ["--model", "/models/flux", "--instances", "2"], [0], tmp_path)
    assert config.parameters["model_path"].string_value == "/models/flux"
    assert config.instance_group[0].count == 2
