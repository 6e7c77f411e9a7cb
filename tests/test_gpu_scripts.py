"""The GPU tools (``scripts/gpu/`` and ``benchmarks/gpu/``), checked on the CPU: the model shapes built for the GPU,
the engine settings shared by the benchmark and the smoke test, and the statistics and the report the results rest
on. No GPU and no network needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import stats
from benchmarks.gpu import bench, report
from diffusion_runtime import model_shapes
from scripts.gpu import make_models
from scripts.gpu.engine_parameters import engine_parameters
from scripts.gpu.results_file import ResultsFile

# --- the models built on the GPU ---------------------------------------------------------------------------------


def test_published_shapes_have_the_published_sizes():
    torch = pytest.importorskip("torch")
    from diffusers import FluxTransformer2DModel, WanTransformer3DModel

    with torch.device("meta"):
        flux = sum(p.numel() for p in FluxTransformer2DModel(**model_shapes.FLUX_TRANSFORMER).parameters())
        wan = sum(p.numel() for p in WanTransformer3DModel(**model_shapes.WAN_1_3B).parameters())
    assert 11.8e9 < flux < 12.0e9  # FLUX.1-dev: 11.9 B
    assert 1.3e9 < wan < 1.5e9  # Wan2.1-T2V-1.3B: 1.42 B


def test_mini_flux_folder_loads_as_a_flux_pipeline(tmp_path, tiny_models):
    """With no tokenizer folder given, the builder takes the project's tiny FLUX's: nothing to download."""
    from diffusers import DiffusionPipeline

    info = make_models.build("flux", tmp_path / "flux", mini=True, device="cpu")
    assert info["parameters"]["transformer"] > 0 and (tmp_path / "flux" / "random_weights.json").exists()
    assert info["shape_digest"] == make_models.shape_digest("flux", mini=True)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "flux")
    assert type(pipe).__name__ == "FluxPipeline"
    assert pipe.tokenizer_2.model_max_length == 512  # the transformer sees 512 text tokens, as with T5-XXL


def test_a_built_folder_is_reused_until_its_shapes_change(tmp_path, monkeypatch):
    """``ensure_built`` builds in a child process (``python -m scripts.gpu.make_models``) only when the folder is
    missing or its stamp names other shapes."""
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        out = Path(command[command.index("scripts.gpu.make_models") + 2])
        out.mkdir(parents=True, exist_ok=True)
        info = {"kind": "wan", "shape_digest": make_models.shape_digest("wan", True)}
        (out / make_models.STAMP).write_text(json.dumps(info))
        return make_models.subprocess.CompletedProcess(command, 0, json.dumps(info) + "\n", "")

    monkeypatch.setattr(make_models.subprocess, "run", fake_run)
    folder, built = make_models.ensure_built("wan", tmp_path, mini=True, device="cpu")
    assert folder == tmp_path / "wan-mini" and built is not None and "wall_s" in built
    assert commands[0][1:] == ["-m", "scripts.gpu.make_models", "wan", str(folder), "--device", "cpu", "--mini"]
    assert make_models.ensure_built("wan", tmp_path, mini=True, device="cpu") == (folder, None)
    (folder / make_models.STAMP).write_text(json.dumps({"shape_digest": "an older shape"}))
    assert make_models.ensure_built("wan", tmp_path, mini=True, device="cpu")[1] is not None
    assert len(commands) == 2


# --- what the benchmark and the smoke test serve -----------------------------------------------------------------


def test_sglang_runs_its_native_pipelines_on_gpus_and_stays_quiet_on_cpus():
    on_gpu = engine_parameters("flux", "sglang", on_gpu=True)
    assert on_gpu == {
        "engine": "sglang",
        "sglang_backend": "sglang",
        "sglang_model_id": "FLUX.1-dev",
        "sglang_attention_backend": "torch_sdpa",
    }
    wan_on_cpu = engine_parameters("wan-t2v", "sglang", on_gpu=False, attention_backend="fa")
    assert wan_on_cpu["sglang_backend"] == "diffusers"  # SGLang's native Wan needs sgl-kernel's CPU ops
    assert wan_on_cpu["sglang_sleep_on_idle"] == "true" and wan_on_cpu["sglang_attention_backend"] == "fa"
    assert engine_parameters("wan-i2v", "diffusers", on_gpu=False) == {"engine": "diffusers", "cpu_threads": "1"}
    assert engine_parameters("wan-i2v", "diffusers", on_gpu=True) == {"engine": "diffusers"}
    with pytest.raises(ValueError):
        engine_parameters("flux", "transformers", on_gpu=True)


def test_results_file_is_rewritten_whole_after_each_change(tmp_path):
    results = ResultsFile(tmp_path / "out" / "results.json", {"started": "now"})
    results.put(["image", "sglang", "load_s"], 1.5)
    results.append("checks", {"name": "a"})
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == {
        "started": "now",
        "image": {"sglang": {"load_s": 1.5}},
        "checks": [{"name": "a"}],
    }
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.json"]


# --- statistics --------------------------------------------------------------------------------------------------


def test_summary_and_quantiles_match_numpy():
    numpy = pytest.importorskip("numpy")
    values = [5.31, 5.29, 5.40, 5.28, 5.35, 5.33, 5.30]
    summary = stats.summarize(values)
    assert summary["n"] == 7
    assert summary["median"] == pytest.approx(float(numpy.median(values)))
    assert summary["p25"] == pytest.approx(float(numpy.quantile(values, 0.25)))
    assert summary["p75"] == pytest.approx(float(numpy.quantile(values, 0.75)))
    assert summary["min"] == 5.28 and summary["max"] == 5.40
    assert stats.summarize([2.0])["stdev"] == 0.0


def test_ratios_of_interleaved_runs():
    served, bare = [1.02, 2.04, 3.06], [1.0, 2.0, 3.0]
    assert stats.ratio_of_medians(served, bare) == pytest.approx(1.02)
    assert stats.paired_ratios(served, bare)["median"] == pytest.approx(1.02)
    with pytest.raises(ValueError):
        stats.paired_ratios([1.0], [1.0, 2.0])


def test_repetitions_shrink_to_the_time_left():
    assert bench.fit_repetitions(6, 10.0, seconds_left=200, reserve=50) == 6
    assert bench.fit_repetitions(6, 10.0, seconds_left=90, reserve=50) == 4
    assert bench.fit_repetitions(6, 10.0, seconds_left=30, reserve=50, minimum=3) == 3


# --- the report, and the serve fix found on the GPU -------------------------------------------------------------


def _run(label, served, bare, before_fix=False):
    latency = {
        "served_s": served,
        "bare_s": bare,
        "bare_engine_s": [b - 0.2 for b in bare],
        "bare_encode_s": [0.2] * len(bare),
        "pairs": len(bare),
        "identical_files": [True] * len(bare),
        "file_bytes": [1] * len(bare),
    }
    for key in ("served", "bare", "bare_engine", "bare_encode"):
        latency[key] = stats.summarize(latency[f"{key}_s"])
    latency["served_over_bare"] = stats.ratio_of_medians(served, bare)
    latency["served_over_bare_paired"] = stats.paired_ratios(served, bare)
    settings = {"image_size": [1024, 1024], "image_steps": 28}
    results = {"settings": settings, "device": {"gpus": ["H100"]}, "image": {"sglang": {"latency": latency}}}
    return {"label": label, "device": "", "before_fix": before_fix, "results": results}


def test_report_pools_pairs_after_the_fix_and_judges_goals():
    runs = [_run("a", [5.0, 5.0], [4.0, 4.0], before_fix=True), _run("b", [4.1, 4.2], [4.0, 4.0])]
    runs.append(_run("c", [4.05, 4.0], [4.0, 4.0]))
    table = report.rows(runs)
    (pool,) = report.pooled(table)
    assert pool["runs"] == ["b", "c"] and pool["pairs"] == 4  # the run before the fix is left out
    assert pool["served_over_bare_latency"] == pytest.approx(4.075 / 4.0)
    goals = {(g["run"], g["metric"]): g["met"] for g in report.verdicts(table)}
    assert goals == {("b", "served_over_bare_latency"): False, ("c", "served_over_bare_latency"): True}


def test_an_images_time_splits_into_steps_and_what_comes_before_and_after():
    from benchmarks.gpu.variants import step_phases

    # start; steps end at 1.0 (text encoding + step 1), 1.5, 2.0, 2.5; the request ends at 3.2 (decoding)
    assert step_phases([0.0, 1.0, 1.5, 2.0, 2.5, 3.2]) == pytest.approx(
        {"step_s": 0.5, "steps_s": 2.0, "before_steps_s": 0.5, "after_steps_s": 0.7, "steps": 4}
    )
    assert step_phases([0.0, 4.0, 4.1]) is None  # an engine that reports no steps (SGLang's)


def test_a_flux_step_is_the_published_flops_and_its_floor_adds_up_its_kernels():
    """FLUX.1-dev at 1024²: 59.5 TFLOP of matrix products and 14.9 of attention per step (4096 image and 512 text
    tokens through 19 double and 38 single blocks). The floor sums each kernel's time as often as a step runs it."""
    from benchmarks.gpu import step_floor
    from diffusion_runtime import model_shapes

    ops = step_floor.flux_step_ops(model_shapes.FLUX_TRANSFORMER, 1024, 1024)
    flops = {kind: sum(op.flops * n for op, n in ops.items() if op.kind == kind) for kind in ("linear", "attention")}
    assert flops["linear"] == pytest.approx(59.5e12, rel=0.01)
    assert flops["attention"] == pytest.approx(14.9e12, rel=0.01)
    assert ops[step_floor.StepOp("attention", 24, 4608, 128)] == 57

    floor = step_floor.measure_step_floor(model_shapes.TINY_FLUX_TRANSFORMER, 64, 64, "cpu", repeats=3)
    calls = sum(call["count"] * call["call_s"] for call in floor["calls"])
    assert floor["step_s"] == pytest.approx(calls) and floor["step_s"] > 0
    text = step_floor.floor_text(floor, step_s=2 * floor["step_s"], steps=28)
    assert "= 2.00x the floor" in text and "28 steps at the floor" in text


def test_report_tables_the_image_variants_with_their_speed_and_pixel_error():
    settings = {"image_size": [1024, 1024], "image_steps": 28}
    measured = {"load_s": 20.0, "first_request_s": 4.0, "seconds": [4.0, 4.0], "latency": {"median": 4.0}}
    entry = {
        "_base_parameters": {"engine": "diffusers"},
        "eager": {**measured, "warmup_s": None, "speedup_vs_reference": 1.0, "reference": True},
        "compile-blocks": {
            **measured,
            "parameters": {"torch_compile": "blocks"},
            "warmup_s": 16.0,
            "speedup_vs_reference": 1.25,
            "error_vs_reference": {"identical": False, "max_abs": 7, "mean_abs": 0.74, "psnr_db": 47.8},
        },
        "fa3": {"parameters": {"attention_backend": "_flash_3"}, "error": "Traceback ...\nImportError: no FA3\n"},
    }
    results = {"settings": settings, "device": {"gpus": ["H200"]}, "image_variants": {"diffusers": entry}}
    runs = [{"label": "c", "device": "", "before_fix": False, "results": results}]
    rows = report.variant_rows(runs)
    assert [row["variant"] for row in rows] == ["eager", "compile-blocks", "fa3"]  # not _base_parameters
    assert rows[1]["speedup_vs_reference"] == 1.25 and rows[2]["not_measured"] == "ImportError: no FA3"
    text = report.markdown([], [], [], [], [], rows)
    assert "one transformer step" not in text, "no floor measured, none reported"
    compiled = "| compile-blocks | 4.000 (2) | **1.250×** | 4.00 | 20.0 | 16.0 | – | max 7, mean 0.74, 47.8 dB |"
    assert compiled in text
    assert "| c | diffusers | eager | 4.000 (2) | **1.000×** | 4.00 | 20.0 | – | – | reference |" in text
    assert "not measured: ImportError: no FA3" in text

    # A run that timed the kernel floor: one line per run, against the fastest measured step.
    floor = {"step_s": 0.1, "step_flops": 74e12, "kinds": {"linear": {"step_s": 0.1, "tflops": 740.0}}}
    entry["_step_floor"] = floor
    entry["eager"]["phases"] = {"step_s": 0.2, "steps": 28, "before_steps_s": 0.0, "after_steps_s": 0.1}
    assert report.step_floors(runs) == {"c": floor}
    text = report.markdown([], [], [], [], [], report.variant_rows(runs), report.step_floors(runs))
    assert "Run c, one transformer step: kernel floor per step 100.0 ms" in text and "= 2.00x the floor" in text


def test_system_library_dirs_stay_off_the_models_library_path(monkeypatch):
    """A system Python's LIBDIR on LD_LIBRARY_PATH made the model stubs load the system cuDNN (seen on the H100)."""
    import sysconfig

    from diffusion_runtime.launcher import processes

    monkeypatch.setattr(processes.shutil, "which", lambda name: None)
    real = sysconfig.get_config_var
    for libdir, kept in (("/usr/lib/x86_64-linux-gnu", False), ("/usr/lib", False), ("/opt/python/lib", True)):
        monkeypatch.setattr(
            processes.sysconfig, "get_config_var", lambda key, d=libdir: d if key == "LIBDIR" else real(key)
        )
        install = processes.find_tritonserver()
        assert (libdir in install.lib_dirs) is kept
        assert install.lib_dirs[-1].endswith("nvidia_pytriton.libs")


def test_the_source_digest_follows_the_products_code_and_nothing_else(tmp_path):
    from scripts.gpu.host import source_digest

    (tmp_path / "model_repository" / "m").mkdir(parents=True)
    (tmp_path / "diffusion_runtime").mkdir()
    (tmp_path / "model_repository" / "m" / "config.pbtxt").write_text('name: "m"')
    (tmp_path / "diffusion_runtime" / "a.py").write_text("x = 1\n")
    before = source_digest(tmp_path)
    (tmp_path / "diffusion_runtime" / "notes.txt").write_text("not code")
    assert source_digest(tmp_path) == before
    (tmp_path / "diffusion_runtime" / "a.py").write_text("x = 2\n")
    assert source_digest(tmp_path) != before


# --- image-engine variants --------------------------------------------------------------------------------------


def test_variants_are_presets_joined_or_a_json_object(tmp_path):
    from benchmarks.gpu import variants

    parsed = variants.parse_variants("eager, compile+fuse+cudnn ,first-block")
    assert list(parsed) == ["eager", "compile+fuse+cudnn", "first-block"]  # the first is the reference
    assert parsed["eager"] == {"torch_compile": "off"} and variants.combine("default") == {}
    assert parsed["compile+fuse+cudnn"] == {
        "torch_compile": "transformer",
        "fuse_qkv_projections": "true",
        "attention_backend": "_native_cudnn",
    }
    (tmp_path / "v.json").write_text('{"plain": {}, "fast": {"torch_compile": "blocks", "warmup_steps": 3}}')
    assert variants.parse_variants(f"@{tmp_path / 'v.json'}")["fast"] == {
        "torch_compile": "blocks",
        "warmup_steps": "3",
    }
    with pytest.raises(ValueError, match="unknown image variant 'compiled'"):
        variants.parse_variants("eager,compiled")
    assert variants.parse_settings(["sglang=compile", "pixels", "diffusers=compile-blocks+autotune"]) == {
        "sglang": {"torch_compile": "transformer"},
        "*": {"pixels_on_device": "true"},
        "diffusers": {"torch_compile": "blocks", "compile_mode": "max-autotune-no-cudagraphs"},
    }
    for spec in variants.DEFAULT_VARIANTS.split(",") + variants.SGLANG_VARIANTS.split(","):
        variants.combine(spec)


def test_pixel_error_against_the_reference():
    numpy = pytest.importorskip("numpy")
    from benchmarks.gpu import variants

    reference = [numpy.full((4, 4, 3), 100, numpy.uint8)] * 2
    assert variants.pixel_error(reference, reference) == {
        "images": 2,
        "identical": True,
        "max_abs": 0,
        "mean_abs": 0.0,
        "psnr_db": None,
    }
    off = [reference[0], numpy.full((4, 4, 3), 102, numpy.uint8)]
    error = variants.pixel_error(off, reference)
    assert (error["identical"], error["max_abs"], error["mean_abs"]) == (False, 2, 1.0)
    assert error["psnr_db"] == pytest.approx(10 * numpy.log10(255**2 / 2.0))  # mean squared error 4 over half


def test_variants_run_side_by_side_on_the_tiny_flux(tiny_models):
    """The variants phase in this process on the CPU: each variant loads, generates the same seeds, and is held to
    the reference; one that cannot load is recorded with its error and the others go on."""
    from benchmarks.gpu import variants
    from benchmarks.workloads import ImageJob

    recorded = {}
    base = {"model_path": str(tiny_models["tiny-flux"]), "engine": "diffusers", "cpu_threads": "1"}
    base |= {"default_width": "64", "default_height": "64"}
    variants.measure_variants(
        variants.parse_variants("eager,pixels,fuse,first-block,cudnn"),
        base,
        "cpu",
        job=lambda seed: ImageJob("a fox", width=64, height=64, n=1, steps=3, seed=seed, output_format="png"),
        runs=lambda first_s, left_s: 2,
        seconds_left=lambda: 600.0,
        put=lambda keys, value: recorded.__setitem__(keys[0], value),
        release=lambda: None,
    )
    assert recorded["eager"]["reference"] and recorded["eager"]["latency"]["n"] == 2
    assert recorded["pixels"]["error_vs_reference"]["identical"]
    assert recorded["fuse"]["error_vs_reference"]["max_abs"] <= 1
    assert recorded["first-block"]["warmup_s"] > 0  # a step cache is tried at load
    assert "speedup_vs_reference" in recorded["first-block"]
    assert "warm-up generation failed" in recorded["cudnn"]["error"]  # no cuDNN attention on a CPU
    assert "not measured" in variants.variant_line(recorded["cudnn"])
    assert "identical" in variants.variant_line(recorded["pixels"])


@pytest.mark.e2e
def test_the_variants_plan_dry_runs_on_the_cpu(tmp_path):
    """``--tiny`` runs the whole command line: models built, variants measured, results written, summary printed."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "benchmarks.gpu.bench", "--tiny", "--plan", "image-variants"]
    command += ["--engines", "diffusers", "--image-variants", "eager,pixels+fuse,first-block"]
    command += ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--model-root", str(tmp_path)]
    command += ["--deadline", "300", "--pairs", "2", "--image-steps", "4"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    measured = results["image_variants"]["diffusers"]
    assert measured["_base_parameters"]["default_width"] == "64"
    assert measured["pixels+fuse"]["error_vs_reference"]["max_abs"] <= 1
    assert "first-block" in measured and "finished" in results
    phases = measured["eager"]["phases"]  # where each image's time went, step by step
    assert phases["steps"] == results["settings"]["image_steps"]
    assert phases["step_s"] > 0 and phases["steps_s"] <= measured["eager"]["latency"]["max"]
    assert "variant diffusers pixels+fuse: median" in completed.stdout
    floor = measured["_step_floor"]  # the tiny transformer's kernels alone, per step
    assert floor["size"] == "64x64" and floor["step_s"] > 0 and set(floor["kinds"]) == {"linear", "attention"}
    assert "kernel floor per step" in completed.stdout
    bad = subprocess.run([*command[:6], "--image-variants", "eager,bogus"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown image variant 'bogus'" in bad.stderr
