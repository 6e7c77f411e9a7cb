"""The GPU measurement scripts (scripts/gpu/), checked on the CPU: what the pack carries, what the device installs
from it, the model shapes built there, and the statistics the results rest on. No GPU and no network needed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GPU_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "gpu"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU_SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pack = _load("pack")
install_pack = _load("install_pack")
bench = _load("bench_gpu")
make_models = _load("make_models")


# --- what travels ------------------------------------------------------------------------------------------------


def test_triton_files_hold_the_server_backend_312_stub_and_the_libraries_they_link():
    files = pack.triton_files(pack.pytriton_root())
    backend = "pytriton/tritonserver/backends/python/"
    assert "pytriton/tritonserver/bin/tritonserver" in files
    assert backend + "libtriton_python.so" in files
    assert backend + "triton_python_backend_utils.py" in files
    stub = files[backend + "triton_python_backend_stub"]
    assert stub.parent.name == "3.12" and stub.parent.parent.name == "python_backend_stubs"
    libraries = {name.split("/", 1)[1] for name in files if name.startswith("nvidia_pytriton.libs/")}
    assert any(name.startswith("libtritonserver") for name in libraries)
    assert any(name.startswith("libcudart") for name in libraries)
    assert any(name.startswith("libicudata") for name in libraries)  # through libxml2 → libicuuc
    assert not any(name.startswith("libpython") for name in libraries)  # the stub uses the device's libpython
    # Closed over DT_NEEDED: every bundled library any packed binary asks for is packed.
    bundled = {p.name for p in (pack.pytriton_root() / "nvidia_pytriton.libs").iterdir()}
    for path in files.values():
        if path.suffix != ".py":
            for needed in pack.needed_libraries(path):
                assert needed not in bundled or needed in libraries, (path.name, needed)


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
def test_icu_data_standin_keeps_name_soname_and_symbol(tmp_path):
    real = next((pack.pytriton_root() / "nvidia_pytriton.libs").glob("libicudata*"))
    standin = pack.icu_data_standin(real, tmp_path)
    assert standin is not None and standin.name == real.name
    assert standin.stat().st_size < 100_000 < real.stat().st_size
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(standin)], capture_output=True, text=True).stdout
    assert any(line.split()[-1].startswith("icudt") for line in symbols.splitlines())
    soname = subprocess.run(["readelf", "-d", str(standin)], capture_output=True, text=True).stdout
    assert f"[{real.name}]" in soname


def test_cached_wheels_match_by_normalised_name_and_version(tmp_path):
    for name in ("pydantic_core-2.46.5-cp312-cp312-manylinux_2_17_x86_64.whl", "python_rapidjson-1.25-cp312.whl"):
        (tmp_path / name).touch()
    assert pack._cached_wheel(tmp_path, "pydantic-core", "2.46.5").name.startswith("pydantic_core-2.46.5")
    assert pack._cached_wheel(tmp_path, "python-rapidjson", "1.25") is not None
    assert pack._cached_wheel(tmp_path, "pydantic-core", "2.46.4") is None


def test_pinned_takes_versions_from_this_environment():
    (numpy_pin, fastapi_pin) = pack.pinned(["numpy==1.26.4", "fastapi"])
    assert numpy_pin == "numpy==1.26.4"
    assert fastapi_pin.startswith("fastapi==") and fastapi_pin.split("==")[1][0].isdigit()


# --- what the device installs from it ----------------------------------------------------------------------------


def _dist(name, version, *requires):
    return install_pack.PackedDist(name, version, list(requires))


def test_device_keeps_its_own_builds_unless_missing_unsuitable_or_numpy():
    packed = {
        "numpy": _dist("numpy", "1.26.4"),
        "fastapi": _dist("fastapi", "0.165.0", "starlette>=0.40", "pydantic>=2"),
        "starlette": _dist("starlette", "1.10.0", "anyio>=4"),
        "pydantic": _dist("pydantic", "2.13.5"),
        "anyio": _dist("anyio", "4.16.0"),
        "tritonclient": _dist(
            "tritonclient", "2.73.0", 'grpcio>=1.81.1; extra == "grpc"', 'aiohttp>=3.8; extra == "http"'
        ),
        "grpcio": _dist("grpcio", "1.85.3"),
        "aiohttp": _dist("aiohttp", "3.14.5"),
        "httpx": _dist("httpx", "0.28.1"),
    }
    installed = {
        "numpy": "2.5.2",
        "fastapi": None,
        "starlette": None,
        "pydantic": "2.12.0",
        "anyio": "3.7.1",  # too old for the starlette we bring
        "tritonclient": None,
        "grpcio": "1.60.0",  # too old for tritonclient[grpc]
        "aiohttp": "3.0.0",  # only the unused [http] extra wants newer
        "httpx": "0.28.1",
    }
    chosen = install_pack.choose(packed, installed)
    assert set(chosen) == {"numpy", "fastapi", "starlette", "tritonclient", "anyio", "grpcio"}
    assert chosen["numpy"] == "always ours"
    assert "starlette requires >=4" in chosen["anyio"]


def test_install_copies_chosen_dists_into_site(tmp_path):
    opt = tmp_path / "opt"
    for name, version in (("fresh_pkg", "1.0"), ("numpy", "1.26.4")):
        (opt / name / name).mkdir(parents=True)
        (opt / name / name / "__init__.py").write_text(f"VERSION = {version!r}\n")
        info = opt / name / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    report = install_pack.install(tmp_path / "site", [opt])
    assert set(report["from_pack"]) == {"fresh_pkg", "numpy"}
    assert (tmp_path / "site" / "fresh_pkg" / "__init__.py").exists()
    assert (tmp_path / "site" / "numpy-1.26.4.dist-info" / "METADATA").exists()


# --- the models built on the GPU ---------------------------------------------------------------------------------


def test_published_shapes_have_the_published_sizes():
    torch = pytest.importorskip("torch")
    from diffusers import FluxTransformer2DModel, WanTransformer3DModel

    with torch.device("meta"):
        flux = sum(p.numel() for p in FluxTransformer2DModel(**make_models.FLUX_TRANSFORMER).parameters())
        wan = sum(p.numel() for p in WanTransformer3DModel(**make_models.WAN_1_3B).parameters())
    assert 11.8e9 < flux < 12.0e9  # FLUX.1-dev: 11.9 B
    assert 1.3e9 < wan < 1.5e9  # Wan2.1-T2V-1.3B: 1.42 B


def test_mini_flux_folder_loads_as_a_flux_pipeline(tmp_path, tiny_models):
    from diffusers import DiffusionPipeline

    info = make_models.build("flux", tmp_path / "flux", tiny_models["tiny-flux"], mini=True, device="cpu")
    assert info["parameters"]["transformer"] > 0 and (tmp_path / "flux" / "random_weights.json").exists()
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "flux")
    assert type(pipe).__name__ == "FluxPipeline"
    assert pipe.tokenizer_2.model_max_length == 512  # the transformer sees 512 text tokens, as with T5-XXL


# --- statistics --------------------------------------------------------------------------------------------------


def test_summary_and_quantiles_match_numpy():
    numpy = pytest.importorskip("numpy")
    values = [5.31, 5.29, 5.40, 5.28, 5.35, 5.33, 5.30]
    summary = bench.summarize(values)
    assert summary["n"] == 7
    assert summary["median"] == pytest.approx(float(numpy.median(values)))
    assert summary["p25"] == pytest.approx(float(numpy.quantile(values, 0.25)))
    assert summary["p75"] == pytest.approx(float(numpy.quantile(values, 0.75)))
    assert summary["min"] == 5.28 and summary["max"] == 5.40
    assert bench.summarize([2.0])["stdev"] == 0.0


def test_ratios_of_interleaved_runs():
    served, bare = [1.02, 2.04, 3.06], [1.0, 2.0, 3.0]
    assert bench.ratio_of_medians(served, bare) == pytest.approx(1.02)
    assert bench.paired_ratios(served, bare)["median"] == pytest.approx(1.02)
    with pytest.raises(ValueError):
        bench.paired_ratios([1.0], [1.0, 2.0])


def test_repetitions_shrink_to_the_time_left():
    assert bench.fit_repetitions(6, 10.0, seconds_left=200, reserve=50) == 6
    assert bench.fit_repetitions(6, 10.0, seconds_left=90, reserve=50) == 4
    assert bench.fit_repetitions(6, 10.0, seconds_left=30, reserve=50, minimum=3) == 3


def test_device_script_parses():
    subprocess.run(["bash", "-n", str(GPU_SCRIPTS / "device_run.sh")], check=True)
    subprocess.run(["bash", "-n", str(GPU_SCRIPTS / "pack.sh")], check=True)


# --- the report, and the serve fix found on the GPU -------------------------------------------------------------

report = _load("report")


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
        latency[key] = bench.summarize(latency[f"{key}_s"])
    latency["served_over_bare"] = bench.ratio_of_medians(served, bare)
    latency["served_over_bare_paired"] = bench.paired_ratios(served, bare)
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


def test_system_library_dirs_stay_off_the_models_library_path(monkeypatch):
    """A system Python's LIBDIR on LD_LIBRARY_PATH made the model stubs load the system cuDNN (seen on the H100)."""
    import sysconfig

    from diffusion_runtime import serve

    monkeypatch.setattr(serve.shutil, "which", lambda name: None)
    real = sysconfig.get_config_var
    for libdir, kept in (("/usr/lib/x86_64-linux-gnu", False), ("/usr/lib", False), ("/opt/python/lib", True)):
        monkeypatch.setattr(
            serve.sysconfig, "get_config_var", lambda key, d=libdir: d if key == "LIBDIR" else real(key)
        )
        install = serve.find_tritonserver()
        assert (libdir in install.lib_dirs) is kept
        assert install.lib_dirs[-1].endswith("nvidia_pytriton.libs")
