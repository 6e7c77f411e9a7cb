"""The benchmarks that set the served stack beside something else: SGLang's own server (``benchmarks.gpu.peer``,
started with the flags our engine gives ``DiffGenerator``; the plan runs end to end on toy models, a dry run of the GPU
measurement on the CPU) and the bare dLLM engine (``benchmarks.dllm_concurrency --bare``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu.peer import peer_flags
from diffusion_runtime.launcher.repository import PROJECT_ROOT


def serve_parser() -> argparse.ArgumentParser:
    """``sglang serve --model-type diffusion``'s own argument parser."""
    from sglang.multimodal_gen.runtime.entrypoints.cli.serve import add_multimodal_gen_serve_args

    parser = argparse.ArgumentParser()
    add_multimodal_gen_serve_args(parser)
    return parser


def test_the_peer_is_started_with_our_engines_settings_in_flags_sglang_serve_accepts(tmp_path: Path) -> None:
    parameters = {
        "model_path": str(tmp_path / "my-flux"),
        "engine": "sglang",
        "sglang_backend": "sglang",
        "sglang_model_id": "black-forest-labs/FLUX.1-dev",
        "sglang_attention_backend": "torch_sdpa",
        "sglang_sleep_on_idle": "true",
        "num_gpus": "1",
    }
    flags = peer_flags(parameters, "cuda:0")
    parsed = vars(serve_parser().parse_args(flags))
    assert parsed["model_path"] == str(tmp_path / "my-flux")
    assert parsed["model_id"] == "black-forest-labs/FLUX.1-dev"
    assert parsed["attention_backend"] == "torch_sdpa"
    assert parsed["backend"] == "sglang"
    assert parsed["sleep_on_idle"] is True
    assert parsed["num_gpus"] == 1


@pytest.mark.e2e  # builds toy FLUX, starts tritonserver, the frontend and sglang serve
def test_the_peer_plan_measures_both_servers_on_toy_models(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "benchmarks.gpu.bench", "--plan", "peer", "--tiny", "--pairs", "3"]
    command += ["--throughput-images", "4", "--concurrency", "2", "--deadline", "500"]
    command += ["--out", str(out), "--work", str(tmp_path / "work"), "--model-root", str(tmp_path / "models")]
    run = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    peer = json.loads((out / "results.json").read_text())["peer"]["image"]
    assert peer["peer_command"][3:6] == ["serve", "--model-type", "diffusion"]
    latency = peer["latency"]
    assert len(latency["ours_s"]) == len(latency["peer_s"]) == latency["pairs"] >= 3
    assert latency["ours_over_peer"] > 0
    phases = latency["ours_by_phase_s"]  # where our time went, from the model's own counters
    assert phases["denoise_s"] > 0 and phases["encode_s"] > 0
    assert phases["denoise_s"] + phases["encode_s"] < min(latency["ours_s"])
    assert all(seconds > 0 for seconds in latency["peer_inference_time_s"])
    assert latency["file_bytes"]["ours"] == latency["file_bytes"]["peer"], "both answer the same stored PNG size"
    throughput = peer["throughput"]
    assert len(throughput["wall_s"]["ours"]) == len(throughput["wall_s"]["peer"]) == 2
    assert throughput["ours_over_peer"] == pytest.approx(
        throughput["ours_images_per_s"] / throughput["peer_images_per_s"]
    )
    assert "peer image: latency ours" in run.stdout, "the summary names the comparison"
    assert not (PROJECT_ROOT / "outputs").exists(), "sglang serve kept no copies of the images in the checkout"


@pytest.mark.e2e  # starts tritonserver and the frontend over the tiny dLLM, and the same engine bare
def test_the_dllm_benchmark_measures_served_against_bare_at_each_concurrency(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.dllm_concurrency", "--bare", "--rounds", "2", "--requests", "4"]
    command += ["--concurrency", "1,2", "--max-running-requests", "1", "--max-tokens", "16", "--block-length", "8"]
    command += ["--out-dir", str(tmp_path), "--work", str(tmp_path / "work"), "--date", "test"]
    run = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((tmp_path / "dllm-concurrency-cpu-test.json").read_text())
    for level in ("1", "2"):
        assert record["bare_tokens_per_s"][level]["median"] > 0
        assert record["served_over_bare"][level]["median"] > 0
        engine, latency = record["levels"][level]["engine_ms_per_request"], record["levels"][level]["latency_ms"]
        assert 0 < engine["median"] <= latency["max"], "the model's engine time is part of what the client waited"
        assert record["bare_latency_ms"][level]["n"] == latency["n"]
    assert "served/bare" in run.stdout, "the table has the served/bare column"
    assert record["rounds_done"] == 2 and record["stopped_early"] is None
    assert len(record["commit"]["sha"]) == 40, "the record says which code it measured"
    for step in ("served stack ready", "bare engine loaded", "warm-up bare concurrency 2"):
        assert f"[dllm-concurrency] {step} after" in run.stdout, "a run cut short shows how far it got"


def test_the_dllm_benchmark_keeps_each_finished_round_and_starts_none_past_its_deadline() -> None:
    """A round is recorded as soon as it ends; once the time left is shorter than the last round took, no round is
    started and the record says why (a GPU call with a time limit ends with numbers, not with nothing)."""
    from contextlib import contextmanager

    from benchmarks import dllm_concurrency

    args = dllm_concurrency.parse_args(["--rounds", "3", "--requests", "2", "--concurrency", "1,2", "--bare"])

    @contextmanager
    def instant_client():
        yield lambda index: 8  # eight completion tokens per request

    served: dict[int, list] = {1: [], 2: []}
    bare: dict[int, list] = {1: [], 2: []}
    recorded: list[tuple[int, str | None, dict]] = []

    def checkpoint(rounds_done: int, stopped_early: str | None) -> None:
        recorded.append((rounds_done, stopped_early, dllm_concurrency.summary(args, served, bare)))

    left = iter([float("inf"), 0.0])  # asked before rounds 2 and 3: time for round 2, none for round 3
    engine_clock = iter(range(100))  # the served model's engine seconds: one more at each reading
    sides = [
        dllm_concurrency.Side("served", instant_client, served, lambda: float(next(engine_clock))),
        dllm_concurrency.Side("bare", instant_client, bare),
    ]
    dllm_concurrency.measure_rounds(args, sides, checkpoint, lambda: next(left))
    assert [(done, why is None) for done, why, _ in recorded] == [(1, True), (2, True), (2, False)]
    assert recorded[-1][1].startswith("out of time")
    assert len(served[1]) == len(bare[2]) == 2, "two rounds measured, the third not started"
    first = recorded[0][2]
    assert first["levels"]["2"]["tokens_per_round"] == [32] and first["served_over_bare"]["1"]["n"] == 1
    assert first["levels"]["2"]["engine_ms_per_request"]["median"] == 250, "1 s of engine time over 4 requests"
    assert first["bare_latency_ms"]["2"]["n"] == 4
