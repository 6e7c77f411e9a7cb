"""Helpers the Python-backend models share: configuration, device pinning, reading input tensors.

``triton_python_backend_utils`` exists only inside Triton's stub, so it is passed in by each ``model.py``
rather than imported here; everything else in this package stays importable (and testable) without Triton.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from diffusion_runtime.errors import GenerationCancelled, InvalidRequest, error_message

_GPU_SET = re.compile(r"gpus-(\d+(?:-\d+)*)")


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The model's ``config.pbtxt`` parameters, each overridable by ``<MODEL_NAME>_<KEY>`` in the environment
    (e.g. ``IMAGE_DIFFUSION_MODEL_PATH``), which is how launch scripts point a stock repository elsewhere."""
    config = json.loads(args["model_config"])
    prefix = config["name"].upper().replace("-", "_") + "_"
    params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    for key in list(params):
        override = os.environ.get(prefix + key.upper())
        if override is not None:
            params[key] = override
    return params


def pin_instance_device(args: Mapping[str, str]) -> str:
    """Make this stub see only its own GPUs, before anything initialises CUDA (Triton does not do it, and
    SGLang ignores ``base_gpu_id``). A ``KIND_GPU`` instance gets Triton's device id; a multi-GPU instance is a
    ``KIND_MODEL`` instance whose group is named after its GPUs (``gpus-0-1``, see
    ``launcher.repository.render_repository``). Indices are those of the server's own ``CUDA_VISIBLE_DEVICES``
    when it has one. Returns the torch device."""
    kind = args.get("model_instance_kind")
    if kind == "GPU":
        wanted = [int(args.get("model_instance_device_id", "0"))]
    elif kind == "MODEL" and (match := _GPU_SET.search(args.get("model_instance_name", ""))):
        wanted = [int(g) for g in match.group(1).split("-")]
    else:
        return "cpu"
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    devices = [visible[i] if i < len(visible) else str(i) for i in wanted]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return "cuda:0"


def _scalar(pb_utils: Any, request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size == 0:
        return None
    if array.size != 1:
        raise InvalidRequest(f"input {name} must hold a single value (send one prompt per request)", name)
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"input {name} is not valid UTF-8", name) from exc
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_scalars(pb_utils: Any, request: Any, names: Mapping[str, str]) -> dict[str, Any]:
    """Read optional single-value inputs: ``{tensor name: keyword}`` → ``{keyword: value or None}``."""
    return {keyword: _scalar(pb_utils, request, tensor) for tensor, keyword in names.items()}


def read_bytes(pb_utils: Any, request: Any, name: str) -> bytes | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None or tensor.as_numpy().size == 0:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return bytes(value) if not isinstance(value, bytes) else value


def read_strings(pb_utils: Any, request: Any, name: str, field: str) -> object:
    """A ``list`` input: its strings, or, when it holds one string that is a JSON list, that list (for clients
    that send one tensor); ``None`` when absent. What the list holds is for the params validation to check."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None or tensor.as_numpy().size == 0:
        return None
    try:
        values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"input {name} is not valid UTF-8", field) from exc
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            return json.loads(values[0])
        except ValueError:
            pass  # a string that merely starts with "["
    return values


def requested_outputs(request: Any) -> frozenset[str]:
    """The outputs the client asked for, read while ``execute`` still holds the request."""
    return frozenset(request.requested_output_names())


def inference_response(pb_utils: Any, outputs: Mapping[str, np.ndarray], wanted: Collection[str]) -> Any:
    """A response holding only the outputs the client asked for (all of them when it named none).

    Never leave that filtering to Triton: the Python backend (24.10, and its main branch still) drops unrequested
    tensors inside ``ResponseSender.send`` after releasing the GIL, so their numpy arrays are freed without it, and
    a stub sending from a worker thread dies. Every model builds its responses here.

    How that was found: until responses held exactly the requested outputs, every image ``image_diffusion``
    answered from its encoder thread killed the model's stub on a ``KIND_GPU`` instance (H200, 2026-12-01): the
    client waited forever, and the next request got "Stub process ... is not healthy". The cause, bisected on that
    GPU with variants of the model behind one tritonserver:
    - The OpenAI frontend asks for ``IMAGES`` and ``SEEDS`` only. Triton 24.10's Python backend removes the other
      outputs (``INFERENCE_TIME_S``) in ``ResponseSender::Send`` (``src/response_sender.cc``), *after* that
      function released the GIL. The removed ``pb_utils.Tensor`` owns a numpy array, which is thus freed without
      the GIL while the model's other threads run Python. The stub died there: its log stops between building the
      response and ``send`` returning, and the process was left a zombie.
    - Same model, same inputs, direct gRPC: asking for all three outputs answered every size (64² to 512²); asking
      for ``IMAGES`` and ``SEEDS`` killed the stub at the first thread-sent image. Answered within ``execute``
      (64²), the response is pruned in the stub's main thread, which holds the GIL: no crash. (An earlier minimal
      model that sent from a thread worked, as the direct client here did when it asked for every output.)
    - Ruled out on the same GPU, each answering 64², 256² and 512²: the engine (a numpy stand-in with and without
      CUDA initialised), custom metrics, cancellation polling, plain threads instead of the pool, sending inside
      ``execute``, keeping the request handles, a delayed send, a decoupled transaction policy. Decoupled would
      not have helped: its responses go through the same ``send``.
    On a CPU the same freeing without the GIL went unpunished in every test; it is undefined behaviour all the
    same."""
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items() if not wanted or name in wanted]
    )


def cancellation_check(request: Any, min_interval: float = 0.05) -> Callable[[int, int], None]:
    """A step hook for engines: raises ``GenerationCancelled`` once Triton marks the request cancelled.

    ``is_cancelled()`` is a round trip to the Triton process (0.06 to 0.12 ms on the CPU machine), so it is asked
    at step 0 (a request cancelled while queued does no work) and then at most every ``min_interval`` seconds:
    the dLLM decoder calls this after every refinement step, which on a CPU made 65 round trips (~4% of a
    request), and asked every 10 ms still ~1%. A cancelled request stops within 50 ms plus one step."""
    last = -math.inf

    def on_step(step: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if step and now - last < min_interval:
            return
        last = now
        if request.is_cancelled():
            raise GenerationCancelled(f"cancelled by the client at step {step}/{total}")

    return on_step


def error_for(pb_utils: Any, exc: BaseException) -> Any:
    """One mapping from our exceptions to Triton errors: the code (INVALID_ARG → HTTP 400 / gRPC INVALID_ARGUMENT)
    for clients that read it, and a message that says the same where Triton drops the code (``error_message``)."""
    if isinstance(exc, InvalidRequest):
        code = pb_utils.TritonError.INVALID_ARG
    elif isinstance(exc, GenerationCancelled):
        code = pb_utils.TritonError.CANCELLED
    else:
        code = pb_utils.TritonError.INTERNAL
    return pb_utils.TritonError(error_message(exc), code)


class ModelMetrics:
    """Triton custom metrics for one model (shown on Triton's ``/metrics``, which the frontend re-exports):
    request outcomes, and seconds spent denoising and encoding, from which steps/s and shares follow.

    Every update goes through one lock. Triton 24.10's stub is not safe for one ``Metric`` updated from two threads
    at once: ``increment`` releases the GIL, then writes the value into the metric's one shared-memory record and
    sends its handle, so a second thread's write lands on (or frees) the record the Triton process is reading.
    Reproduced on a CPU with a six-line decoupled model: eight threads each incrementing one counter per response
    crashed tritonserver within seconds (segfault in ``libtriton_python.so``, then ``boost::interprocess::
    lock_exception``); the same model with the increments behind a lock served 12,000 requests in 30 s, as it did
    without metrics, with ``send`` and ``is_cancelled`` from eight threads. The models update metrics from their
    encoder and worker threads."""

    def __init__(self, pb_utils: Any, model: str) -> None:
        family = pb_utils.MetricFamily
        self._requests = family(
            name="diffusion_requests_total", description="Generation requests by outcome", kind=family.COUNTER
        )
        self._seconds = family(
            name="diffusion_seconds_total",
            description="Seconds spent per phase (denoise: engine call; encode: file encoding; warmup: at load)",
            kind=family.COUNTER,
        )
        self._steps = family(name="diffusion_steps_total", description="Denoising steps completed", kind=family.COUNTER)
        self._model = model
        self._metrics: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _get(self, family: Any, label: str, value: str) -> Any:
        key = (id(family), value)
        if key not in self._metrics:
            self._metrics[key] = family.Metric(labels={"model": self._model, label: value})
        return self._metrics[key]

    def _increment(self, family: Any, label: str, value: str, amount: float) -> None:
        with self._lock:
            self._get(family, label, value).increment(amount)

    def request(self, outcome: str) -> None:
        self._increment(self._requests, "outcome", outcome, 1)

    def seconds(self, phase: str, seconds: float) -> None:
        self._increment(self._seconds, "phase", phase, seconds)

    def steps(self, count: int) -> None:
        self._increment(self._steps, "kind", "denoise", count)

    def close(self) -> None:
        """Release the metric families while the stub can still delete them. Freed later, when the stub drops the
        model in its own destructor (or never, while something keeps the model alive: SGLang keeps an ImportError
        whose traceback reaches ``initialize``), they segfault the exiting stub: Triton 24.10's ``Metric::Clear``
        then fetches a new, empty stub singleton and writes through it."""
        with self._lock:
            self._metrics.clear()
            self._requests = self._seconds = self._steps = None


def release_before_exit(metrics: ModelMetrics) -> None:
    """The last step of every model's ``finalize`` (after its threads and engine stopped, since they record
    metrics): metrics released, then the objects alive now frozen out of the garbage collector, so the stub's
    teardown spares full collections over them (over a million with SGLang loaded: about 4 s per stop on 2 cores,
    enough with the engine's own stop to run past Triton's exit timeout). Reference counting still frees them."""
    metrics.close()
    gc.freeze()
