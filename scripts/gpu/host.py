"""What a run records about where it ran (commit, device, library versions), and what the host can run.

A result without its commit and device cannot be compared with another one, so the smoke test and the GPU
benchmark write these first, and the CPU benchmark records the same library versions. Nothing in this module
initialises CUDA beyond querying device names.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = (
    "numpy",
    "torch",
    "diffusers",
    "transformers",
    "sglang",
    "tritonclient",
    "fastapi",
    "uvicorn",
    "openai",
    "pillow",
)


def git_commit(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (a dirty run is not that commit's)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    digest = source_digest(root)
    try:
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
        sha = git("rev-parse", "HEAD")
        return {"sha": sha, "dirty": bool(changed), "changed_files": len(changed), "source_digest": digest}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"sha": None, "dirty": None, "error": f"not a git checkout, or no git: {exc}", "source_digest": digest}


SOURCE_FOLDERS = ("model_repository", "diffusion_runtime", "openai_frontend")


def source_digest(root: Path = PROJECT_ROOT) -> str:
    """SHA-256 over the product's code as it is on disk (paths and contents of the ``.py`` and ``.pbtxt`` files
    under ``SOURCE_FOLDERS``), so a result can be matched to a commit even where the checkout's git metadata is
    missing or older than its files (a copied tree): ``python -m scripts.gpu.host`` prints it for a checkout."""
    hasher = hashlib.sha256()
    for folder in SOURCE_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".pbtxt") and "__pycache__" not in path.parts:
                hasher.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()


def library_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def nvidia_smi(query: str) -> list[str]:
    """Rows of ``nvidia-smi --query-gpu=<query>``; empty where there is no NVIDIA driver."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.strip().splitlines() if out.returncode == 0 else []


def gpu_memory() -> list[str]:
    return nvidia_smi("index,memory.used,memory.total")


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch means no CUDA for our purposes
        return False


def describe_device() -> dict[str, Any]:
    """The accelerator (``name``: the first GPU's name, or ``cpu``) and its driver."""
    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "gpus": []}
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal: the record says why it lacks a GPU name
        info["torch_error"] = repr(exc)
    info["name"] = info["gpus"][0] if info["gpus"] else "cpu"
    info["nvidia_smi"] = nvidia_smi("name,driver_version,memory.total,clocks.max.sm")
    info["driver"] = info["nvidia_smi"][0].split(", ")[1] if info["nvidia_smi"] else None
    return info


def release_gpu() -> None:
    """Give cached GPU memory back between phases that load their own copies of a model."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:  # noqa: S110 - best effort
        pass


def sglang_installed() -> bool:
    return importlib.util.find_spec("sglang") is not None


def command_line(module: str, arguments: Sequence[str]) -> str:
    """How a run was started, as a user would type it (no paths of the machine it ran on)."""
    return " ".join(["python", "-m", module, *arguments])


if __name__ == "__main__":
    print(source_digest())
