"""Build, on this CPU machine, what the remote GPU host needs and lacks, as xz archives under ``.gpu-pack/``.

The GPU host has Python 3.12 with PyTorch but no Triton, diffusers, SGLang, FastAPI or network, and each command
sent to it takes at most 64 MiB. So the pieces travel as separate archives and each command takes the ones it needs:

- ``triton.tar.xz``: the Triton 2.51 files actually used (``tritonserver``, the Python backend, the Python 3.12
  stub in the backend's folder, and the libraries they link, closed over ``DT_NEEDED``) laid out as in the
  ``nvidia-pytriton`` wheel, with a tiny ``pytriton/__init__.py`` so that ``diffusion_runtime.serve.find_tritonserver``
  finds them exactly as it does in the project's virtualenv. ICU's 29 MB data library is replaced by a stand-in
  that defines only its one symbol (libxml2 links ICU but Triton never converts character sets through it).
- ``py.tar.xz``: ``numpy<2`` (the 2.51 stub mishandles BYTES tensors under numpy 2), the frontend's and client's
  dependencies, diffusers, and the tokenizer folders of the tiny models (real-size models are built on the GPU).
- ``sglang.tar.xz``: SGLang (tests, benchmarks and the Rust extensions the diffusion path never imports left out)
  and the dependencies its ``DiffGenerator`` imports; ``scripts/gpu/standin/sgl_kernel`` replaces the 373 MB
  ``sglang-kernel`` wheel and travels with the working tree.
- ``ffmpeg.tar.xz``: imageio-ffmpeg's static ffmpeg (MP4 encoding for the video model), 19 MB, only for video runs.

Wheels are unpacked as ``opt/<dist>/``; ``install_pack.py`` on the GPU host copies in only the distributions the
host lacks (or has in a version our packages cannot use), so its own builds of shared packages stay in use.
Versions are those of the project's virtualenv (what the test suite runs), read from its metadata.

Run: ``scripts/gpu/pack.sh`` (the project's venv), or ``python scripts/gpu/pack.py [--only triton,py]``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # diffusion_runtime (the tiny models whose tokenizers travel)
PACK_DIR = ROOT / ".gpu-pack"
WHEEL_CACHE = Path(os.environ.get("TD_HOME", Path.home() / ".cache" / "triton-diffusion")) / "gpu-wheels"
DEVICE_PYTHON = "3.12"
# One command sends the working tree and its archives: keep a margin under 64 MiB for the tree itself.
SEND_LIMIT = 64 * 1024 * 1024
PLATFORMS = (
    "manylinux_2_34_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)

# The frontend, the Triton client, the models' engines (diffusers) and numpy<2.
PY_DISTS = (
    "numpy==1.26.4",
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic_core",
    "annotated-types",
    "annotated-doc",
    "typing-inspection",
    "typing_extensions",
    "uvicorn",
    "h11",
    "click",
    "anyio",
    "sniffio",
    "httpx",
    "httpcore",
    "python-multipart",
    "tritonclient",
    "python-rapidjson",
    "ml_dtypes",  # tritonclient.utils imports it, and caps it at 0.5.4
    "protobuf",
    "grpcio",
    "prometheus_client",
    "diffusers",
    "ftfy",
    "wcwidth",
    "imageio-ffmpeg",
    "opentelemetry-api",  # FastAPI's telemetry module imports it
    "importlib_metadata",
    "zipp",
)
# What SGLang's DiffGenerator imports beyond the GPU host's own packages (the list found by running it
# there), with IPython's own imports added (``sglang.utils`` imports ``IPython.display`` at module level).
SGLANG_DISTS = (
    "sglang",
    "addict",
    "apache-tvm-ffi",
    "cache_dit",
    "compressed-tensors",
    "dill",
    "gguf",
    "httpx2",
    "httpcore2",
    "ipython",
    "ipython_pygments_lexers",
    "traitlets",
    "decorator",
    "jedi",
    "parso",
    "prompt_toolkit",
    "stack_data",
    "executing",
    "asttokens",
    "pure_eval",
    "pexpect",
    "ptyprocess",
    "matplotlib-inline",
    "pygments",
    "loguru",
    "msgspec",
    "openai",
    "jiter",
    "distro",
    "orjson",
    "partial-json-parser",
    "pybase64",
    "pyzmq",
    "rich",
    "markdown-it-py",
    "mdurl",
    "setproctitle",
    "python-dateutil",
    "remote-pdb",
    "cloudpickle",
)
# Dropped from unpacked wheels: tests and data nobody imports at run time.
TRIM_DIRS = ("tests", "test", "benchmark", "benchmarks", "__pycache__")
SGLANG_DROP_GLOBS = ("sglang/srt/rust_extensions/*.so", "sglang/srt/mem_cache/rust_tree_core/*.so")
TINY_ASSETS = {
    "tiny-flux": ("tokenizer", "tokenizer_2", "scheduler"),
    "tiny-wan-t2v": ("tokenizer", "scheduler"),
}


@dataclass(frozen=True)
class Wheel:
    requirement: str  # name==version
    path: Path

    @property
    def dist(self) -> str:
        return canonical(self.path.name.split("-")[0])


def canonical(name: str) -> str:
    """PEP 503 normalisation, with underscores (the form folder names and wheel names share)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def pinned(names: Iterable[str]) -> list[str]:
    """``name==version`` for each name, the version taken from this interpreter's environment (the project venv)
    unless the name already carries one."""
    out = []
    for name in names:
        if "==" in name:
            out.append(name)
            continue
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed in {sys.prefix}: pin its version in pack.py") from None
    return out


def download(requirements: Sequence[str], cache: Path = WHEEL_CACHE) -> list[Wheel]:
    """cp312 manylinux wheels (or pure ones) for the GPU host, kept in a cache between runs."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    for requirement in requirements:
        name, version = requirement.split("==")
        found = _cached_wheel(cache, name, version)
        if found is None:
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            command += ["--python-version", DEVICE_PYTHON, "--implementation", "cp", "-d", str(cache)]
            for platform in PLATFORMS:
                command += ["--platform", platform]
            subprocess.run([*command, requirement], check=True)
            found = _cached_wheel(cache, name, version)
            if found is None:
                raise SystemExit(f"pip downloaded no wheel for {requirement}")
        wheels.append(Wheel(requirement, found))
    return wheels


def _cached_wheel(cache: Path, name: str, version: str) -> Path | None:
    """The cache holds only wheels downloaded for the GPU host (cp312, x86-64): match by name and version."""
    for path in sorted(cache.glob("*.whl")):
        dist, wheel_version = path.name.split("-")[:2]
        if canonical(dist) == canonical(name) and wheel_version == version:
            return path
    return None


def unpack_wheel(wheel: Wheel, dest: Path) -> Path:
    """The wheel's files under ``dest/<dist>/``, minus tests and caches."""
    target = dest / wheel.dist
    with zipfile.ZipFile(wheel.path) as archive:
        archive.extractall(target)
    for path in sorted(target.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and path.name in TRIM_DIRS and ".dist-info" not in str(path):
            shutil.rmtree(path, ignore_errors=True)
    for path in target.rglob("*"):  # wheels keep executables' mode in external_attr
        if path.is_file() and path.suffix in ("", ".so") and ".dist-info" not in str(path):
            path.chmod(0o755)
    return target


# --- the Triton files --------------------------------------------------------------------------------------------


def pytriton_root() -> Path:
    """The site-packages folder holding ``pytriton/tritonserver`` and ``nvidia_pytriton.libs``."""
    import pytriton

    return Path(pytriton.__file__).resolve().parent.parent


def needed_libraries(binary: Path) -> list[str]:
    """``DT_NEEDED`` entries of an ELF file (readelf, as binutils ships it)."""
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def library_closure(roots: Sequence[Path], library_dir: Path) -> list[Path]:
    """The bundled libraries the roots load, transitively (system libraries such as libc are the GPU host's)."""
    seen: dict[str, Path] = {}
    pending = list(roots)
    while pending:
        for name in needed_libraries(pending.pop()):
            candidate = library_dir / name
            if name not in seen and candidate.exists():
                seen[name] = candidate
                pending.append(candidate)
    return sorted(seen.values())


BACKEND = "pytriton/tritonserver/backends/python"


def triton_files(site: Path, python: str = DEVICE_PYTHON) -> dict[str, Path]:
    """Archive path → source file for everything tritonserver needs to serve Python-backend models with ``python``."""
    base = site / "pytriton" / "tritonserver"
    backend = base / "backends" / "python"
    stub = base / "python_backend_stubs" / python / "triton_python_backend_stub"
    roots = [base / "bin" / "tritonserver", backend / "libtriton_python.so", stub]
    files = {
        "pytriton/tritonserver/bin/tritonserver": roots[0],
        f"{BACKEND}/libtriton_python.so": roots[1],
        f"{BACKEND}/triton_python_backend_utils.py": backend / "triton_python_backend_utils.py",
        # The backend runs the stub it finds in its own folder: put the one for the GPU host's Python there.
        f"{BACKEND}/triton_python_backend_stub": stub,
    }
    for library in library_closure(roots, site / "nvidia_pytriton.libs"):
        files[f"nvidia_pytriton.libs/{library.name}"] = library
    return files


PYTRITON_INIT = '"""The Triton server files of the nvidia-pytriton wheel, without PyTriton (scripts/gpu/pack.py)."""\n'


def icu_data_standin(real: Path, workdir: Path) -> Path | None:
    """A shared library with the real ICU data library's file name, soname and one exported symbol, holding no
    data. None if no C compiler is available (the real library is packed then)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(real)], capture_output=True, text=True).stdout
    data_symbols = [line.split()[-1] for line in symbols.splitlines() if re.match(r"^icudt\d+_dat$", line.split()[-1])]
    if len(data_symbols) != 1:
        return None
    source = workdir / "icudata_standin.c"
    source.write_text(
        f"/* stand-in for ICU's data library: the symbol only */\nconst char {data_symbols[0]}[64] = {{0}};\n"
    )
    target = workdir / real.name
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{real.name}", "-o", str(target), str(source)], check=True
    )
    return target


# --- archives ----------------------------------------------------------------------------------------------------


def stage_triton(stage: Path, site: Path) -> dict:
    files = triton_files(site)
    with tempfile.TemporaryDirectory() as tmp:
        for relative, source in files.items():
            target = stage / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            replacement = None
            if source.name.startswith("libicudata"):
                replacement = icu_data_standin(source, Path(tmp))
            shutil.copy2(replacement or source, target)
            target.chmod(0o644 if target.suffix == ".py" else 0o755)
    (stage / "pytriton" / "__init__.py").write_text(PYTRITON_INIT)
    return {"files": sorted(files), "python": DEVICE_PYTHON}


def stage_wheels(stage: Path, requirements: Sequence[str], drop_globs: Sequence[str] = ()) -> dict:
    wheels = download(requirements)
    opt = stage / "opt"
    for wheel in wheels:
        unpack_wheel(wheel, opt)
    for pattern in drop_globs:
        for path in opt.glob(f"*/{pattern}"):
            path.unlink()
    ffmpeg = opt / "imageio_ffmpeg" / "imageio_ffmpeg" / "binaries"
    for binary in ffmpeg.glob("ffmpeg-*") if ffmpeg.exists() else []:
        binary.unlink()  # it travels alone in ffmpeg.tar.xz
    return {"dists": {w.dist: w.requirement.split("==")[1] for w in wheels}}


def stage_assets(stage: Path) -> dict:
    from diffusion_runtime.tiny_models import ensure_tiny_model

    copied = []
    for model, parts in TINY_ASSETS.items():
        source = ensure_tiny_model(model)
        for part in parts:
            shutil.copytree(source / part, stage / "assets" / model / part)
            copied.append(f"{model}/{part}")
    return {"assets": copied}


def stage_ffmpeg(stage: Path) -> dict:
    (wheel,) = download(pinned(["imageio-ffmpeg"]))
    with zipfile.ZipFile(wheel.path) as archive:
        (name,) = [n for n in archive.namelist() if re.search(r"binaries/ffmpeg-", n)]
        target = stage / "ffmpeg" / "ffmpeg"
        target.parent.mkdir(parents=True)
        with archive.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    target.chmod(0o755)
    return {"ffmpeg": Path(name).name}


ARCHIVES = ("triton", "py", "sglang", "ffmpeg")


def build_archive(name: str, out_dir: Path, level: str = "-9e") -> dict:
    with tempfile.TemporaryDirectory(prefix=f"gpu-pack-{name}-") as tmp:
        stage = Path(tmp)
        if name == "triton":
            info = stage_triton(stage, pytriton_root())
        elif name == "py":
            info = stage_wheels(stage, pinned(PY_DISTS))
            info.update(stage_assets(stage))
        elif name == "sglang":
            info = stage_wheels(stage, pinned(SGLANG_DISTS), SGLANG_DROP_GLOBS)
        elif name == "ffmpeg":
            info = stage_ffmpeg(stage)
        else:
            raise ValueError(name)
        unpacked = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
        target = out_dir / f"{name}.tar.xz"
        with open(target, "wb") as out:
            tar = subprocess.Popen(["tar", "-C", str(stage), "-cf", "-", "."], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-T0", level], stdin=tar.stdout, stdout=out, check=True)
            if tar.wait():
                raise SystemExit(f"tar failed for {name}")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    return {**info, "bytes": target.stat().st_size, "unpacked_bytes": unpacked, "sha256": digest}


def exclude_from_git(folder: str = "/.gpu-pack/") -> None:
    """Keep the archives out of git (and so out of the working tree that travels unless carried)."""
    exclude = ROOT / ".git" / "info" / "exclude"
    if not (ROOT / ".git").is_dir():
        return
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if folder not in lines:
        exclude.write_text("\n".join([*lines, folder]) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(ARCHIVES), help=f"archives to (re)build, of {','.join(ARCHIVES)}")
    parser.add_argument("--out", type=Path, default=PACK_DIR)
    parser.add_argument("--xz-level", default="-9e")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    exclude_from_git()
    manifest_path = args.out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in ARCHIVES:
            raise SystemExit(f"unknown archive {name!r}; choose from {', '.join(ARCHIVES)}")
        manifest[name] = build_archive(name, args.out, args.xz_level)
        print(f"[pack] {name}.tar.xz {manifest[name]['bytes'] / 2**20:.1f} MiB", flush=True)
        manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    total = {name: info["bytes"] for name, info in manifest.items()}
    print(f"[pack] archives (MiB): {', '.join(f'{k} {v / 2**20:.1f}' for k, v in total.items())}")
    for combo in (("triton", "py", "sglang"), ("triton", "py", "ffmpeg"), ("triton", "py", "sglang", "ffmpeg")):
        size = sum(total.get(n, 0) for n in combo)
        print(f"[pack] send {'+'.join(combo)}: {size / 2**20:.1f} MiB (limit 64 with the working tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
