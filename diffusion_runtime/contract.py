"""The tensors each Triton model takes and gives, declared once.

The model reads its inputs through its contract, the frontend builds its requests through it, and the committed
``config.pbtxt`` must agree with it (``tests/test_contract.py`` fails when any of them drifts).

One batching convention for every model: ``max_batch_size: 0``. A request is one generation (one prompt, which
may ask for ``NUM_IMAGES`` images), and each model takes one request per ``execute``, so a batch dimension would
promise batching that does not happen. Settings are tensors of shape ``[1]``; a list (``STOP``) is ``[-1]``;
outputs have the shapes below, with no batch dimension. A model that starts batching requests itself changes its
``max_batch_size`` here and in its config, and the test keeps the two together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# Triton's data type names (as the clients and perf_analyzer spell them) and the numpy types that carry them.
NUMPY_TYPES: dict[str, type] = {
    "BYTES": np.object_,
    "BOOL": np.bool_,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
}
Kind = Literal["setting", "file", "list"]


@dataclass(frozen=True)
class Tensor:
    """One input or output. ``field`` is the keyword the request's parameters use for an input (``n`` for
    ``NUM_IMAGES``); ``kind`` says how the model reads it: a single ``setting``, an encoded ``file`` (raw bytes), or
    a ``list`` of strings."""

    name: str
    dtype: str
    dims: tuple[int, ...] = (1,)
    optional: bool = True
    field: str = ""
    kind: Kind = "setting"


@dataclass(frozen=True)
class ModelContract:
    name: str
    decoupled: bool
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int = 0

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def fields(self, kind: Kind) -> dict[str, str]:
        """``{tensor name: field}`` of the inputs of one kind (the model skeleton reads them by kind)."""
        return {t.name: t.field for t in self.inputs if t.kind == kind}

    def request_tensors(self, **values: Any) -> dict[str, np.ndarray]:
        """A request's input arrays from field values (``prompt=..., n=...``); ``None`` leaves an optional input
        out, so the model applies its default. Strings are sent as UTF-8."""
        by_field = {t.field: t for t in self.inputs}
        unknown = set(values) - set(by_field)
        if unknown:
            raise KeyError(f"{self.name} has no inputs for {sorted(unknown)}")
        arrays = {}
        for field, value in values.items():
            if value is None:
                continue
            tensor = by_field[field]
            items = list(value) if tensor.kind == "list" else [value]
            arrays[tensor.name] = np.array([_wire(v) for v in items], dtype=NUMPY_TYPES[tensor.dtype])
        missing = [t.name for t in self.inputs if not t.optional and t.name not in arrays]
        if missing:
            raise KeyError(f"{self.name} needs {missing}")
        return arrays


def _wire(value: Any) -> Any:
    return value.encode("utf-8") if isinstance(value, str) else value


def _settings(*specs: tuple[str, str, str]) -> tuple[Tensor, ...]:
    return tuple(Tensor(name, dtype, field=field) for name, dtype, field in specs)


def _outputs(*specs: tuple[str, str, Iterable[int]]) -> tuple[Tensor, ...]:
    return tuple(Tensor(name, dtype, tuple(dims), optional=False) for name, dtype, dims in specs)


IMAGE = ModelContract(
    name="image_diffusion",
    decoupled=False,
    inputs=(
        Tensor("PROMPT", "BYTES", optional=False, field="prompt"),
        *_settings(
            ("NEGATIVE_PROMPT", "BYTES", "negative_prompt"),
            ("HEIGHT", "INT32", "height"),
            ("WIDTH", "INT32", "width"),
            ("NUM_IMAGES", "INT32", "n"),
            ("NUM_INFERENCE_STEPS", "INT32", "num_inference_steps"),
            ("GUIDANCE_SCALE", "FP32", "guidance_scale"),
            ("SEED", "INT64", "seed"),
            ("OUTPUT_FORMAT", "BYTES", "output_format"),
            ("OUTPUT_COMPRESSION", "INT32", "output_compression"),
        ),
        Tensor("INPUT_IMAGE", "BYTES", field="image", kind="file"),
        Tensor("MASK_IMAGE", "BYTES", field="mask", kind="file"),
        Tensor("STRENGTH", "FP32", field="strength"),
    ),
    outputs=_outputs(("IMAGES", "BYTES", [-1]), ("SEEDS", "INT64", [-1]), ("INFERENCE_TIME_S", "FP32", [1])),
)

VIDEO = ModelContract(
    name="video_generation",
    decoupled=True,
    inputs=(
        Tensor("PROMPT", "BYTES", optional=False, field="prompt"),
        Tensor("NEGATIVE_PROMPT", "BYTES", field="negative_prompt"),
        Tensor("INPUT_IMAGE", "BYTES", field="image", kind="file"),
        *_settings(
            ("HEIGHT", "INT32", "height"),
            ("WIDTH", "INT32", "width"),
            ("SECONDS", "FP32", "seconds"),
            ("NUM_FRAMES", "INT32", "num_frames"),
            ("FPS", "INT32", "fps"),
            ("NUM_INFERENCE_STEPS", "INT32", "num_inference_steps"),
            ("GUIDANCE_SCALE", "FP32", "guidance_scale"),
            ("SEED", "INT64", "seed"),
        ),
    ),
    outputs=_outputs(
        ("PROGRESS", "INT32", [2]),
        ("VIDEO", "BYTES", [1]),
        ("SEED", "INT64", [1]),
        ("NUM_FRAMES", "INT32", [1]),
        ("INFERENCE_TIME_S", "FP32", [1]),
    ),
)

TEXT = ModelContract(
    name="dllm",
    decoupled=True,
    inputs=(
        *_settings(
            ("PROMPT", "BYTES", "prompt"),
            ("MESSAGES", "BYTES", "messages"),
            ("MAX_TOKENS", "INT32", "max_tokens"),
        ),
        Tensor("STOP", "BYTES", (-1,), field="stop", kind="list"),
        *_settings(
            ("TEMPERATURE", "FP32", "temperature"),
            ("SEED", "INT64", "seed"),
            ("BLOCK_LENGTH", "INT32", "block_length"),
            ("STEPS", "INT32", "steps"),
            ("THRESHOLD", "FP32", "threshold"),
            ("STREAM", "BOOL", "stream"),
        ),
    ),
    outputs=_outputs(
        ("TEXT", "BYTES", [1]),
        ("FINISH_REASON", "BYTES", [1]),
        ("PROMPT_TOKENS", "INT32", [1]),
        ("COMPLETION_TOKENS", "INT32", [1]),
    ),
)

CONTRACTS: Mapping[str, ModelContract] = {c.name: c for c in (IMAGE, VIDEO, TEXT)}
