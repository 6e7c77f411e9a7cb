"""The model repository rendered for this host.

The committed ``model_repository/`` is the GPU deployment a Triton user expects. ``render_repository`` copies it
into a run folder and rewrites each ``config.pbtxt`` (parsed with Triton's own protobuf schema) for this host:
``KIND_CPU`` where there is no GPU, one instance per selected GPU (or per GPU set, for a model that spans
several), and the chosen model, engine and served name as parameters.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``diffusion_runtime`` package: the checkout, or ``site-packages`` once installed."""


def _committed_repository() -> Path:
    """``model_repository/`` of the checkout; an installed wheel carries the same files inside the package
    (``diffusion_runtime/model_repository``, see ``setup.py``)."""
    checkout = PROJECT_ROOT / "model_repository"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parents[1] / "model_repository"


REPOSITORY = _committed_repository()


@dataclass
class ModelSpec:
    """One model to serve: which repository folder, and the parameters that differ from its config.pbtxt."""

    triton_name: str
    parameters: dict[str, str] = field(default_factory=dict)
    instances_per_gpu: int = 1
    source: Path | None = None  # a model folder outside model_repository/ (tests' helper models)
    gpus_per_instance: int = 1  # >1: each instance spans that many GPUs (SGLang sequence/tensor parallel)
    max_queue_size: int | None = None  # requests waiting per model beyond those running; more are refused


def config_parameters(model_folder: Path) -> dict[str, str]:
    """The ``parameters`` of a model folder's ``config.pbtxt`` (committed or rendered), as the model reads them."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((model_folder / "config.pbtxt").read_text(), mc.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def served_parameters(triton_name: str, overrides: Mapping[str, str]) -> dict[str, str]:
    """What a committed model sees when served with ``overrides`` (a ``ModelSpec``'s parameters): its config's
    parameters under them. An engine built in-process from these is configured as the served one (a benchmark's
    bare side), defaults such as ``torch_compile=auto`` included."""
    return {**config_parameters(REPOSITORY / triton_name), **overrides}


def detect_gpus() -> list[int]:
    """GPU indices visible to this host (``nvidia-smi``); empty on CPU machines."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return list(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


def gpu_set_group_name(gpus: Sequence[int]) -> str:
    """Instance-group name that carries a multi-GPU instance's devices (``triton_io`` reads it back)."""
    return "gpus-" + "-".join(str(g) for g in gpus)


def _place_instances(config: Any, spec: ModelSpec, gpus: Sequence[int], mc: Any) -> None:
    """One instance group over the selected GPUs (Triton pins each instance to one of them); for multi-GPU
    instances, one ``KIND_MODEL`` group per GPU set, named after its GPUs; ``KIND_CPU`` on hosts without GPUs."""
    del config.instance_group[:]
    if not gpus:
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=spec.instances_per_gpu)
        return
    size = spec.gpus_per_instance
    if size <= 1:
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=spec.instances_per_gpu, gpus=gpus)
        return
    if len(gpus) % size:
        raise ValueError(f"{len(gpus)} GPUs cannot be split into instances of {size} GPUs each")
    for start in range(0, len(gpus), size):
        chunk = list(gpus[start : start + size])
        config.instance_group.add(
            name=gpu_set_group_name(chunk), kind=mc.ModelInstanceGroup.KIND_MODEL, count=spec.instances_per_gpu
        )
    config.parameters["num_gpus"].string_value = str(size)


def set_queue_bound(config: Any, size: int) -> None:
    """A model with Triton's dynamic batcher is bounded there (Triton refuses the excess); one without it
    (``image_diffusion``, see its config) by the frontend, which reads the ``max_queue_size`` parameter."""
    if config.HasField("dynamic_batching"):
        config.dynamic_batching.default_queue_policy.max_queue_size = size
    else:
        config.parameters["max_queue_size"].string_value = str(size)


def render_repository(specs: Sequence[ModelSpec], destination: Path, gpus: Sequence[int]) -> Path:
    """Write a Triton model repository for ``specs`` into ``destination`` (replacing what is there)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for spec in specs:
        source = spec.source or REPOSITORY / spec.triton_name
        target = destination / spec.triton_name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        config = text_format.Parse((source / "config.pbtxt").read_text(), mc.ModelConfig())
        config.name = spec.triton_name  # one source folder may be served under several names
        for key, value in spec.parameters.items():
            config.parameters[key].string_value = value
        _place_instances(config, spec, gpus, mc)
        if spec.max_queue_size is not None:
            set_queue_bound(config, spec.max_queue_size)
        (target / "config.pbtxt").write_text(text_format.MessageToString(config))
    return destination
