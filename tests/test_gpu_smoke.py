"""The product's smoke test (``python -m scripts.gpu.smoke``), run here on the CPU exactly as a user runs it on a
GPU host, with the tiny models and the engines that run here; and its parts that decide what it checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from diffusion_runtime.launcher.repository import PROJECT_ROOT, ModelSpec
from scripts.gpu import smoke
from scripts.gpu.results_file import ResultsFile


def test_size_thresholds_are_read_from_the_source(tmp_path: Path) -> None:
    source = tmp_path / "model.py"
    source.write_text(
        "INLINE_ENCODE_PIXELS = 128 * 128\nINLINE_BASE64_BYTES: int = 64 * 1024\nOTHER = 5\nMAX_PIXELS = width\n"
    )
    found = {t.name: (t.limit, t.unit) for t in smoke.find_size_thresholds([source], config=None)}
    assert found == {"INLINE_ENCODE_PIXELS": (16384, "pixels"), "INLINE_BASE64_BYTES": (65536, "bytes")}


def test_image_sizes_fall_on_both_sides_of_a_pixel_threshold() -> None:
    threshold = smoke.SizeThreshold("INLINE_ENCODE_PIXELS", "model.py", 128 * 128, "pixels")
    cases = smoke.image_cases("tiny", [threshold])
    sides = {threshold.side(c.width * c.height * c.n, 0) for c in cases}
    assert sides == {"at_or_below", "above"}
    assert smoke.ImageCase(128, 128, 1, "b64_json") in cases and smoke.ImageCase(144, 144, 1, "b64_json") in cases
    assert smoke.ImageCase(128, 128, 2, "b64_json") in cases  # each image at the threshold, the request above it
    assert smoke.ImageCase(512, 512, 1, "url") in cases
    assert all(c.width % 16 == 0 for c in cases)
    assert {(c.width, c.n) for c in smoke.image_cases("mini", [threshold])} >= {(64, 1), (256, 1), (64, 2)}


def test_engines_the_host_cannot_run_are_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smoke, "sglang_installed", lambda: True)
    monkeypatch.setattr(smoke, "cuda_available", lambda: False)
    every = smoke.Options(None, ("tiny",), on_gpu=False, sglang_attention_backend="torch_sdpa", dllm_sglang_model=None)
    assert smoke.engine_unavailable_reason("image", "diffusers", every) is None
    assert smoke.engine_unavailable_reason("image", "sglang", every).startswith("no CUDA")
    # Named on a CPU host, SGLang's image and video engines run (slowly); its dLLM engine needs CUDA.
    named = smoke.Options(("sglang",), ("tiny",), False, "torch_sdpa", None)
    assert smoke.engine_unavailable_reason("t2v", "sglang", named) is None
    assert "needs CUDA" in smoke.engine_unavailable_reason("text", "sglang", named)
    assert smoke.engine_unavailable_reason("text", "transformers", named).startswith("not selected")
    monkeypatch.setattr(smoke, "cuda_available", lambda: True)
    assert "--dllm-sglang-model" in smoke.engine_unavailable_reason("text", "sglang", every)
    with_model = smoke.Options(None, ("tiny",), True, "torch_sdpa", "/models/LLaDA2.0-mini")
    assert smoke.engine_unavailable_reason("text", "sglang", with_model) is None
    monkeypatch.setattr(smoke, "sglang_installed", lambda: False)
    assert smoke.engine_unavailable_reason("image", "sglang", with_model) == "the sglang package is not installed"


def test_mini_folders_are_served_as_a_users_own_folder_without_sglang_model_id(monkeypatch) -> None:
    """The mini FLUX and Wan folders (named ``flux-mini``, ``wan-mini``, as any user's folder may be) reach SGLang
    without ``sglang_model_id``, so the smoke proves the engine derives SGLang's pipeline from the folder; the tiny
    ones keep the id, so both ways are served."""
    monkeypatch.setattr(smoke, "sglang_installed", lambda: True)
    monkeypatch.setattr(smoke, "cuda_available", lambda: True)
    options = smoke.Options(("sglang",), ("tiny", "mini"), True, "torch_sdpa", None)
    mini = {kind: Path(f"/models/{kind}-mini") for kind in ("image", "t2v")}
    served, _ = smoke.plan_stack(dict.fromkeys(smoke.KINDS, "sglang"), options, mini)
    by_shape = {(m.kind, m.shape): m.spec.parameters for m in served}
    for kind in ("image", "t2v"):
        assert "sglang_model_id" not in by_shape[kind, "mini"] and by_shape[kind, "mini"]["engine"] == "sglang"
        assert by_shape[kind, "tiny"]["sglang_model_id"]


def test_sglang_video_backend_option_changes_only_the_wan_models_on_sglang() -> None:
    """``--sglang-video-backend diffusers`` serves Wan through SGLang's diffusers backend (a host without SGLang's
    CuTe-DSL kernels cannot import its native Wan); FLUX and the other engines keep their parameters."""
    args = smoke.build_parser().parse_args(["--sglang-video-backend", "diffusers"])
    options = smoke.Options(
        ("sglang",), ("tiny",), True, "torch_sdpa", None, sglang_video_backend=args.sglang_video_backend
    )
    assert smoke.model_parameters("t2v", "sglang", options)["sglang_backend"] == "diffusers"
    assert smoke.model_parameters("i2v", "sglang", options)["video_mode"] == "i2v"
    assert smoke.model_parameters("image", "sglang", options)["sglang_backend"] == "sglang"
    assert "sglang_backend" not in smoke.model_parameters("t2v", "diffusers", options)
    default = smoke.Options(("sglang",), ("tiny",), True, "torch_sdpa", None)
    assert smoke.model_parameters("t2v", "sglang", default)["sglang_backend"] == "sglang"
    with pytest.raises(SystemExit):
        smoke.build_parser().parse_args(["--sglang-video-backend", "native"])


def test_a_missed_deadline_fails_loudly_and_spares_the_models_other_checks(tmp_path: Path) -> None:
    record = smoke.Smoke(ResultsFile(tmp_path / "smoke.json", {}), deadline=5)
    model = smoke.ServedModel("image", "tiny", "diffusers", ModelSpec("image_diffusion", {"served_model_name": "m"}))
    calls = []

    def hangs() -> str:
        calls.append("hangs")
        raise httpx.ReadTimeout("timed out")

    def fine() -> str:
        calls.append("fine")
        return "ok"

    assert not record.run("first", "diffusers", "tiny", hangs, model)
    assert not record.run("second", "diffusers", "tiny", fine, model)
    assert record.run("another model", "diffusers", "tiny", fine)
    assert calls == ["hangs", "fine"]
    first, second, _ = json.loads((tmp_path / "smoke.json").read_text())["checks"]
    assert first["outcome"] == "fail" and "within the 5 s deadline" in first["detail"]
    assert second["outcome"] == "fail" and second["detail"] == "not run: m missed its deadline in 'first'"


@pytest.mark.e2e  # runs the smoke test, which starts tritonserver and the frontend
def test_smoke_on_the_cpu_passes_every_check_and_stops_cleanly(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "gpu-smoke.json"
    command = [sys.executable, "-m", "scripts.gpu.smoke", "--shapes", "tiny", "--engines", "diffusers,transformers"]
    command += ["--out", str(out), "--work", str(tmp_path / "work"), "--deadline", "120"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["outcome"] == "pass" and len(results["commit"]["sha"]) == 40
    assert results["device"]["name"] == "cpu" and results["versions"]["torch"]
    checks = {(c["name"], c["engine"], c["shape"]): c for c in results["checks"]}
    failed = [c for c in checks.values() if c["outcome"] == "fail"]
    assert not failed, failed
    skipped = {(name, engine) for (name, engine, _), c in checks.items() if c["outcome"] == "skipped"}
    assert skipped == {(f"{kind} checks", "sglang") for kind in ("image", "t2v", "i2v", "text")}
    names = {name for name, _, _ in checks}
    assert {
        "image 64x64 n=2 b64_json",
        "image edit (multipart, size auto)",
        "text-to-video job 64x64: create, poll, download, delete",
        "text-to-video blocking 96x64 response_format=url",
        "image-to-video job 64x64: create, poll, download, delete",
        "chat stream dropped mid-way: the model sees the cancellation",
        "frontend /health/ready",
        "every Triton model ready, every stub alive",
        "stack stopped cleanly",
        "size thresholds crossed both ways",
    } <= names
    assert all(c["seconds"] >= 0 and c["detail"] for c in checks.values())
    assert "passed, 0 failed" in done.stdout
