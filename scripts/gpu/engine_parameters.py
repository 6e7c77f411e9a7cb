"""The config parameters that put a FLUX- or Wan-class model on a given engine, for the benchmark and the smoke.

One place, so that what the smoke proves runnable is exactly what the benchmark measures.
"""

from __future__ import annotations

# SGLang's own pipeline ids for the model classes these scripts serve. SGLang recognises FLUX.1 only by id; for
# Wan it would read the class from model_index.json, but the id also brings its pipeline defaults.
SGLANG_MODEL_IDS = {
    "flux": "FLUX.1-dev",
    "wan-t2v": "Wan2.1-T2V-1.3B-Diffusers",
    "wan-i2v": "Wan2.1-I2V-14B-480P-Diffusers",
}
# PyTorch's SDPA exists wherever PyTorch does; SGLang's default backends need kernels some hosts lack.
DEFAULT_SGLANG_ATTENTION_BACKEND = "torch_sdpa"


def sglang_parameters(family: str, *, on_gpu: bool, attention_backend: str = DEFAULT_SGLANG_ATTENTION_BACKEND) -> dict:
    """SGLang's native pipeline for ``family`` (a key of ``SGLANG_MODEL_IDS``) on a GPU, never a silent fall back
    to its diffusers backend. On a CPU: a generator that sleeps when idle (a busy-polling one takes a core), and for
    Wan SGLang's diffusers backend, since its native Wan needs sgl-kernel CPU ops that PyPI's wheels lack."""
    parameters = {
        "engine": "sglang",
        "sglang_backend": "sglang",
        "sglang_model_id": SGLANG_MODEL_IDS[family],
        "sglang_attention_backend": attention_backend,
    }
    if not on_gpu:
        parameters["sglang_sleep_on_idle"] = "true"
        if family.startswith("wan"):
            parameters["sglang_backend"] = "diffusers"
    return parameters


def engine_parameters(
    family: str, engine: str, *, on_gpu: bool, attention_backend: str = DEFAULT_SGLANG_ATTENTION_BACKEND
) -> dict[str, str]:
    """Parameters selecting ``engine`` (``sglang`` or ``diffusers``) for a model of ``family``. On a CPU the
    diffusers engine gets one torch thread: beside tritonserver, the frontend and other stubs, more threads spin
    against each other."""
    if engine == "sglang":
        return sglang_parameters(family, on_gpu=on_gpu, attention_backend=attention_backend)
    if engine != "diffusers":
        raise ValueError(f"image and video models run on sglang or diffusers, not {engine!r}")
    return {"engine": "diffusers"} if on_gpu else {"engine": "diffusers", "cpu_threads": "1"}
