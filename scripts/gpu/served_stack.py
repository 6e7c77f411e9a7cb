"""The served product for the smoke test and the benchmarks, started exactly as ``scripts/serve.sh`` starts it: the
committed repository rendered for this host's GPUs (``KIND_GPU`` over every GPU given; ``KIND_CPU`` where there
are none), ``tritonserver``, then the OpenAI frontend in front of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from diffusion_runtime.launcher.processes import Frontend, TritonServer
from diffusion_runtime.launcher.repository import ModelSpec, render_repository


def start_triton(
    specs: Sequence[ModelSpec], gpus: Sequence[int], workdir: Path, env: Mapping[str, str]
) -> TritonServer:
    """Render the repository for these GPUs and start tritonserver (it loads the models in the background)."""
    repository = render_repository(specs, workdir / "model_repository", gpus)
    return TritonServer(repository, log_file=workdir / "tritonserver.log", env=env).start()


def start_frontend(
    triton: TritonServer,
    workdir: Path,
    env: Mapping[str, str],
    load_timeout: float,
    extra_args: Sequence[str] = (),
    log_level: str = "warning",
) -> Frontend:
    """Wait for Triton to have loaded every model, then start the frontend over it with media and job records
    in ``workdir``; a frontend that does not become ready is stopped before the error propagates."""
    triton.wait_ready(timeout=load_timeout)
    frontend = Frontend(
        triton,
        fs_url=f"file://{workdir / 'media'}",
        log_file=workdir / "frontend.log",
        extra_args=("--state-dir", str(workdir / "state"), "--log-level", log_level, *extra_args),
        env=env,
    )
    try:
        return frontend.start().wait_ready()
    except BaseException:
        frontend.stop()
        raise
