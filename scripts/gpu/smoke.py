"""The product's smoke test on whatever host it runs on: every model kind on every engine the host can run, through
the real stack, as a user drives it, in a few minutes.

    python -m scripts.gpu.smoke [--out benchmarks/results/gpu-smoke.json] [--deadline SECONDS] [--engines ...]

It starts the stack the way ``scripts/serve.sh`` does (``diffusion_runtime.launcher``: the committed repository
rendered for this host — ``KIND_GPU`` on every visible GPU, ``KIND_CPU`` where there is none — ``tritonserver``,
the OpenAI frontend), once per engine family: the portable engines (``diffusers`` for images and videos,
``transformers`` for the dLLM), then SGLang's. Each stack serves every model kind at the selected shapes: ``tiny``
(the project's tiny models, ``diffusion_runtime.tiny_models``) and ``mini`` (FLUX and Wan2.1 T2V of the published
classes at toy widths, ``scripts.gpu.make_models --mini``). Then, through the ``openai`` SDK and ``httpx``:

- images on both sides of every size threshold of the image path (read from the code at run time), ``n=2``, an
  edit (the ``sglang`` engine must refuse it with 400), URLs and base64;
- videos: text-to-video through the job API (created, polled, downloaded, deleted) and the blocking form,
  image-to-video from an uploaded reference;
- text: chat and completions, whole and streamed, and a stream the client drops mid-way, which the model must see
  cancelled (its ``diffusion_requests_total{outcome="GenerationCancelled"}``);
- finally the frontend ready, every Triton model ready, every model's stub process the one that loaded it, and,
  once stopped, no process of the stack left.

Every request has a deadline (``--deadline``); one that does not answer in time fails its check, and the model's
remaining checks fail without sending anything (a hung model would otherwise cost a deadline per check). An engine
the host cannot run is recorded as skipped with the reason, never left out. The results file holds the commit, the
device, the library versions, and each check's name, engine, shape, outcome (pass, fail, skipped), seconds and
detail; it is rewritten after every check, so a killed run keeps what it did. The exit status is 1 when any check
failed.

It lives in ``scripts/gpu/`` with the product's other tools, not in ``benchmarks/``: it is the product's own check
of a host (every change to the models, engines or Triton I/O passes it on a GPU before it lands, and the image the
Dockerfile builds ships it), it measures nothing, and most of its code is its own checks. The helpers it shares
with the GPU benchmark (engine parameters, the served stack, the host record, the results file, the model
builder) live here once; the benchmark imports them, never the other way round.
"""

from __future__ import annotations

import argparse
import ast
import base64
import io
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import openai
import psutil
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from diffusion_runtime.launcher.processes import Frontend, TritonServer
from diffusion_runtime.launcher.repository import REPOSITORY, ModelSpec, config_parameters, detect_gpus
from diffusion_runtime.media import probe_mp4
from diffusion_runtime.tiny_models import default_cache_dir, ensure_tiny_model
from scripts.gpu.engine_parameters import DEFAULT_SGLANG_ATTENTION_BACKEND, engine_parameters
from scripts.gpu.host import (
    PROJECT_ROOT,
    command_line,
    cuda_available,
    describe_device,
    git_commit,
    library_versions,
    sglang_installed,
)
from scripts.gpu.make_models import ensure_built
from scripts.gpu.results_file import ResultsFile
from scripts.gpu.served_stack import start_frontend, start_triton

DEFAULT_OUT = PROJECT_ROOT / "benchmarks" / "results" / "gpu-smoke.json"
SHAPES = ("tiny", "mini")
ENGINES = ("diffusers", "transformers", "sglang")
KINDS = ("image", "t2v", "i2v", "text")
PORTABLE_ENGINE = {"image": "diffusers", "t2v": "diffusers", "i2v": "diffusers", "text": "transformers"}
MODEL_FAMILY = {"image": "flux", "t2v": "wan-t2v", "i2v": "wan-i2v"}
TINY_MODEL = {"image": "tiny-flux", "t2v": "tiny-wan-t2v", "i2v": "tiny-wan-i2v", "text": "tiny-llada"}
MINI_MODEL = {"image": "flux", "t2v": "wan"}  # make_models kinds; it builds no image-to-video or dLLM model
TRITON_SOURCE = {"image": "image_diffusion", "t2v": "video_generation", "i2v": "video_generation", "text": "dllm"}
# Where the image path changes behaviour with size: constants named like these, in these files.
THRESHOLD_SOURCES = (
    REPOSITORY / "image_diffusion" / "1" / "model.py",
    PROJECT_ROOT / "openai_frontend" / "services" / "images.py",
)
IMAGE_CONFIG = REPOSITORY / "image_diffusion" / "config.pbtxt"
STEPS = 2
PROMPT = "a lighthouse on a cliff at dusk, waves below"
SIZE_MULTIPLE = 16
VIDEO = {"num_frames": 9, "fps": 8, "num_inference_steps": STEPS, "seed": 11}
# A stream long enough to be dropped mid-way on any GPU: 3000 tokens decoded 4 at a time, 4 steps per block.
LONG_STREAM = {"max_tokens": 3000, "steps": 3000, "block_length": 4}
# What tritonserver's log says when its shutdown goes wrong.
SHUTDOWN_TROUBLE = ("live models", "failed to stop", "Segfault", "terminate called")
SGLANG_DLLM_NEEDS_MODEL = (
    "SGLang's dLLM engine loads LLaDA2/SDAR checkpoints only and the tiny LLaDA is a ModernBERT-based masked LM: "
    "give --dllm-sglang-model PATH to run it"
)


class DeadlineMissed(Exception):
    """A request or a job that did not answer within its deadline."""


class NotRun(Exception):
    """A check that was not attempted because something it needs already failed."""


# --- what is served ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One model of a stack: its kind, shape and engine, and the spec that renders it."""

    kind: str  # image | t2v | i2v | text
    shape: str  # tiny | mini
    engine: str
    spec: ModelSpec

    @property
    def name(self) -> str:
        """The id clients send as ``model``."""
        return self.spec.parameters["served_model_name"]

    @property
    def triton_name(self) -> str:
        return self.spec.triton_name


@dataclass
class Skip:
    kind: str
    shape: str
    engine: str
    reason: str


@dataclass(frozen=True)
class Options:
    engines: tuple[str, ...] | None  # None: every engine this host can run
    shapes: tuple[str, ...]
    on_gpu: bool
    sglang_attention_backend: str
    dllm_sglang_model: str | None
    dllm_sglang_args: str = ""  # JSON object of further sglang.Engine kwargs (the model's sglang_args)
    sglang_video_backend: str | None = None  # sglang_backend for Wan on the sglang engine (None: the default)


def engine_unavailable_reason(kind: str, engine: str, options: Options) -> str | None:
    """Why ``engine`` cannot serve ``kind`` here (None: it can). SGLang's image and video engines also run on a
    CPU, slowly, so there they run only when ``--engines`` names them; its dLLM engine needs CUDA and a model."""
    if options.engines is not None and engine not in options.engines:
        return f"not selected (--engines {','.join(options.engines)})"
    if engine != "sglang":
        return None
    if not sglang_installed():
        return "the sglang package is not installed"
    if not cuda_available():
        if kind == "text":
            return "SGLang's dLLM engine needs CUDA, and this host has none"
        if options.engines is None:
            return (
                "no CUDA device: SGLang's engines are for CUDA hosts (name sglang in --engines to run its image and "
                "video engines on the CPU, slowly)"
            )
    if kind == "text" and not options.dllm_sglang_model:
        return SGLANG_DLLM_NEEDS_MODEL
    return None


def model_parameters(kind: str, engine: str, options: Options) -> dict[str, str]:
    if kind != "text":
        parameters = engine_parameters(
            MODEL_FAMILY[kind], engine, on_gpu=options.on_gpu, attention_backend=options.sglang_attention_backend
        )
        if kind in ("t2v", "i2v"):
            parameters["video_mode"] = kind
            if engine == "sglang" and options.sglang_video_backend:
                parameters["sglang_backend"] = options.sglang_video_backend
        return parameters
    if engine == "sglang":
        extra = {"sglang_args": options.dllm_sglang_args} if options.dllm_sglang_args else {}
        return {"engine": "sglang", **extra}
    return {"engine": "transformers"} if options.on_gpu else {"engine": "transformers", "cpu_threads": "1"}


def plan_stack(
    engines: dict[str, str], options: Options, mini_models: dict[str, Path]
) -> tuple[list[ServedModel], list[Skip]]:
    """The models one stack serves (``engines``: kind → engine), and what it cannot serve here, with why."""
    served, skipped = [], []
    for kind in KINDS:
        engine = engines[kind]
        for shape in options.shapes:
            if shape == "mini" and kind not in MINI_MODEL:
                continue
            reason = engine_unavailable_reason(kind, engine, options)
            if reason is None and shape == "mini" and kind not in mini_models:
                reason = f"the mini {MINI_MODEL[kind]} model could not be built (see its build check)"
            if reason is not None:
                skipped.append(Skip(kind, shape, engine, reason))
                continue
            if kind == "text" and engine == "sglang":  # no tiny model of an architecture it loads: the one given
                path, name, shape = str(options.dllm_sglang_model), "sglang-dllm", "given"
            elif shape == "tiny":
                path, name = str(ensure_tiny_model(TINY_MODEL[kind])), TINY_MODEL[kind]
            else:
                path, name = str(mini_models[kind]), f"mini-{MINI_MODEL[kind]}-{kind}"
            suffix = "" if shape == "tiny" else "_mini"
            triton_name = ("video_generation_i2v" if kind == "i2v" else TRITON_SOURCE[kind]) + suffix
            parameters = {"model_path": path, "served_model_name": name, **model_parameters(kind, engine, options)}
            if shape == "mini":  # served as a user's own folder is: the engine derives SGLang's model id from it
                parameters.pop("sglang_model_id", None)
            spec = ModelSpec(triton_name, parameters, source=REPOSITORY / TRITON_SOURCE[kind])
            served.append(ServedModel(kind, shape, engine, spec))
    return served, skipped


# --- size thresholds -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeThreshold:
    """A size at which the image path changes how it answers: ``unit`` pixels (width × height × n, at or below
    one way, above the other) or bytes (of the encoded files)."""

    name: str
    where: str
    limit: int
    unit: str  # pixels | bytes

    def applies_to(self, response_format: str) -> bool:
        """A threshold on base64 text only matters to ``b64_json`` answers."""
        return "BASE64" not in self.name.upper() or response_format == "b64_json"

    def side(self, pixels: int, file_bytes: int) -> str:
        value = pixels if self.unit == "pixels" else file_bytes
        return "at_or_below" if value <= self.limit else "above"


def shown(path: Path) -> str:
    """A path as the project names it (relative to its root), or whole when outside it."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


_OPERATORS: dict[type, Callable[[int, int], int]] = {
    ast.Mult: lambda a, b: a * b,
    ast.Add: lambda a, b: a + b,
    ast.Pow: lambda a, b: a**b,
}


def _constant_int(node: ast.expr | None) -> int | None:
    """The value of an integer expression built from literals (``128 * 128``, ``64 * 1024``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _constant_int(node.left), _constant_int(node.right)
        return None if left is None or right is None else _OPERATORS[type(node.op)](left, right)
    return None


def _module_constants(path: Path) -> Iterator[tuple[str, int]]:
    """Module-level names bound to integer constant expressions."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        value = _constant_int(node.value)
        for target in targets:
            if isinstance(target, ast.Name) and value is not None:
                yield target.id, value


def find_size_thresholds(
    sources: Sequence[Path] = THRESHOLD_SOURCES, config: Path | None = IMAGE_CONFIG
) -> list[SizeThreshold]:
    """Module-level integer constants named ``*_PIXELS`` or ``INLINE_*`` in the image model and the frontend's
    image service, read from the source (the model imports Triton's stub module, so it cannot be imported here),
    plus any ``*pixels*`` parameter of the image model's config. Read at run time: the mechanism may move."""
    found = []
    for path in sources:
        if path.exists():
            for name, value in _module_constants(path):
                if name.endswith("_PIXELS") or name.startswith("INLINE_"):
                    unit = "pixels" if "PIXEL" in name else "bytes"
                    found.append(SizeThreshold(name, shown(path), value, unit))
    if config is not None and config.exists():
        for key, value in config_parameters(config.parent).items():
            if "pixels" in key and value.strip().isdigit():
                found.append(SizeThreshold(key, shown(config), int(value), "pixels"))
    return found


@dataclass(frozen=True)
class ImageCase:
    width: int
    height: int
    n: int
    response_format: str

    @property
    def label(self) -> str:
        return f"image {self.width}x{self.height} n={self.n} {self.response_format}"


def sides_of(limit_pixels: int) -> tuple[int, int]:
    """The largest square side (a multiple of 16) whose single image is at or below ``limit_pixels``, and the
    next one, above it."""
    at = max(SIZE_MULTIPLE, math.isqrt(limit_pixels) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return at, at + SIZE_MULTIPLE


def image_cases(shape: str, thresholds: Sequence[SizeThreshold]) -> list[ImageCase]:
    """Sizes on both sides of every pixel threshold, with ``n=2`` crossing it too, plus small and large sizes
    whose files fall on both sides of the byte thresholds (64² noise is ~12 KB as PNG, 256² ~200 KB)."""
    sides = {64, 256} if shape == "mini" else {64, 256, 512}
    pairs = [(64, 2)]
    for threshold in thresholds:
        if threshold.unit == "pixels":
            at, above = sides_of(threshold.limit)
            sides |= {at} if shape == "mini" else {at, above}
            if 2 * at * at > threshold.limit:
                pairs.append((at, 2))  # each image at the threshold, the request's two above it
    cases = [ImageCase(s, s, 1, "url" if s == max(sides) else "b64_json") for s in sorted(sides)]
    cases += [ImageCase(s, s, n, "b64_json") for s, n in dict.fromkeys(pairs)]
    return cases


# --- the record ------------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    engine: str
    shape: str
    outcome: str  # pass | fail | skipped
    seconds: float
    detail: str
    model: str | None = None


def first_line(text: str, characters: int = 300) -> str:
    return (text.strip().splitlines() or [""])[0][:characters]


class Smoke:
    """Runs checks and records each one as it ends; remembers which models missed a deadline."""

    def __init__(self, results: ResultsFile, deadline: float) -> None:
        self.results = results
        self.deadline = deadline
        self.checks: list[Check] = []
        self.missed: dict[str, str] = {}  # served model → the check in which it missed its deadline
        self.server_log: Path | None = None  # the running stack's tritonserver.log: a failure quotes what it added

    def record(self, check: Check) -> None:
        self.checks.append(check)
        self.results.append("checks", vars(check))
        mark = {"pass": "PASS", "fail": "FAIL", "skipped": "skip"}[check.outcome]
        line = f"[smoke] {mark} {check.seconds:7.2f}s {check.engine:<12} {check.shape:<5} {check.name}"
        if check.outcome != "pass":
            line += f" -- {first_line(check.detail)}"
        print(line, file=sys.stderr if check.outcome == "fail" else sys.stdout, flush=True)

    def skip(self, name: str, engine: str, shape: str, reason: str) -> None:
        self.record(Check(name, engine, shape, "skipped", 0.0, reason))

    def run(
        self, name: str, engine: str, shape: str, body: Callable[[], str], model: ServedModel | None = None
    ) -> bool:
        """Run one check: ``body`` returns its detail or raises. A timeout marks ``model`` as having missed its
        deadline; later checks on it fail at once."""
        started = time.perf_counter()
        served = model.name if model else None
        log_start = self.server_log.stat().st_size if self.server_log and self.server_log.exists() else 0
        try:
            if served in self.missed:
                raise NotRun(f"not run: {served} missed its deadline in {self.missed[served]!r}")
            detail, outcome = body(), "pass"
        except (DeadlineMissed, httpx.TimeoutException, openai.APITimeoutError) as exc:
            outcome = "fail"
            detail = f"no answer within the {self.deadline:.0f} s deadline: {type(exc).__name__}: {exc}".strip()
            if served:
                self.missed[served] = name
        except NotRun as exc:
            outcome, detail = "fail", str(exc)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, loudly, and the run goes on
            outcome = "fail"
            detail = f"{type(exc).__name__}: {exc}"[:4000] + "\n" + "".join(traceback.format_exc(limit=-3))[-1500:]
        if outcome == "fail" and self.server_log and self.server_log.exists():
            with self.server_log.open("rb") as log:  # the model's own account of the failure, e.g. a traceback
                log.seek(log_start)
                added = log.read().decode(errors="replace")
            detail += f"\n... tritonserver.log during this check ends:\n{added[-4000:]}" if added.strip() else ""
        self.record(Check(name, engine, shape, outcome, round(time.perf_counter() - started, 3), detail, served))
        return outcome == "pass"


# --- the stack -------------------------------------------------------------------------------------------------


@dataclass
class RunningStack:
    models: list[ServedModel]
    instances: int  # per model: one per GPU, or one on the CPU
    triton: TritonServer | None = None
    frontend: Frontend | None = None
    stub_pids: dict[str, list[int]] = field(default_factory=dict)  # Triton model → its stubs after loading

    @property
    def url(self) -> str:
        if self.frontend is None:
            raise RuntimeError("the frontend is not running")
        return self.frontend.url

    @property
    def triton_http_url(self) -> str:
        if self.triton is None:
            raise RuntimeError("tritonserver is not running")
        return self.triton.http_url

    def sdk_client(self, deadline: float) -> openai.OpenAI:
        # max_retries=0: a retry would hide a failed request.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=deadline)

    def http(self, deadline: float) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=deadline)

    def processes(self) -> list[psutil.Process]:
        """tritonserver and everything under it (stubs, and the processes SGLang starts), and the frontend."""
        found = []
        for server in (self.triton, self.frontend):
            if server is None or server.process is None:
                continue
            try:
                root = psutil.Process(server.process.pid)
                found += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def stop(self) -> None:
        if self.frontend is not None:
            self.frontend.stop()
        if self.triton is not None:
            self.triton.stop()


def stub_pids(triton: TritonServer, triton_name: str) -> list[int]:
    """The live ``triton_python_backend_stub`` children of ``triton`` that run ``triton_name``."""
    assert triton.process is not None
    pids = []
    for child in psutil.Process(triton.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and f"/{triton_name}/1/model.py" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(pids)


def load_failures(log: Path | None, characters: int = 3000) -> str:
    """What tritonserver's log says about models that failed to load, then its last lines."""
    text = log.read_text(errors="replace") if log and log.exists() else ""
    failed = [line[:500] for line in text.splitlines() if "failed to load" in line]
    return "\n".join([*failed, "... tritonserver.log ends:", text[-characters:]])


@contextmanager
def running_stack(
    smoke: Smoke, label: str, models: list[ServedModel], gpus: Sequence[int], workdir: Path, load_timeout: float
) -> Iterator[RunningStack | None]:
    """Start the stack (a check of its own: loading every model), yield it (None if it did not start), then stop
    it and check that nothing of it is left running."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(workdir / "hf")}
    stack = RunningStack(models, max(1, len(gpus)))

    def start() -> str:
        started = time.perf_counter()
        stack.triton = start_triton([m.spec for m in models], gpus, workdir, env)
        try:
            stack.frontend = start_frontend(stack.triton, workdir, env, load_timeout, ("--video-poll-ms", "100"))
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{load_failures(stack.triton.log_file)}") from None
        for model in models:
            stack.stub_pids[model.triton_name] = stub_pids(stack.triton, model.triton_name)
        version = httpx.get(f"{stack.triton_http_url}/v2", timeout=10).json().get("version")
        smoke.results.put(["stacks", label], {"triton_version": version, "workdir": str(workdir), "gpus": list(gpus)})
        names = ", ".join(m.name for m in models)
        return f"tritonserver {version} loaded {names} in {time.perf_counter() - started:.1f} s"

    engine = "+".join(dict.fromkeys(m.engine for m in models))
    try:
        yield stack if smoke.run(f"stack start ({len(models)} models)", engine, "all", start) else None
    finally:
        smoke.run("stack stopped cleanly", engine, "all", lambda: stop_cleanly(stack))


def _still_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_label(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:160]}"
    except psutil.Error:
        return str(process.pid)


def stop_cleanly(stack: RunningStack) -> str:
    """Stop the stack: tritonserver and the frontend must exit 0, and none of the processes under them (stubs, the
    processes SGLang starts) outlive them."""
    processes = stack.processes()
    stack.stop()
    codes = {
        name: server.process.returncode
        for name, server in (("tritonserver", stack.triton), ("frontend", stack.frontend))
        if server is not None and server.process is not None
    }
    deadline = time.monotonic() + 15
    alive = [p for p in processes if _still_running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _still_running(p)]
    if alive:
        raise RuntimeError(f"still running 15 s after stop: {[process_label(p) for p in alive]}")
    if any(code != 0 for code in codes.values()):
        log = stack.triton.log_file if stack.triton is not None else None
        text = log.read_text(errors="replace") if log and log.exists() else ""
        said = [line[:300] for line in text.splitlines() if any(m in line for m in SHUTDOWN_TROUBLE)]
        raise RuntimeError(f"exit codes {codes}; tritonserver.log: {said[-6:]}")
    return f"exit codes {codes}; {len(processes)} processes, none left"


# --- checks ----------------------------------------------------------------------------------------------------


def picture(width: int, height: int, seed: int = 0) -> bytes:
    """A PNG of noise: an input image for edits and image-to-video."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_checks(smoke: Smoke, stack: RunningStack, model: ServedModel, thresholds: list[SizeThreshold]) -> None:
    client = stack.sdk_client(smoke.deadline)

    def generate(case: ImageCase) -> str:
        seed = 7
        result = client.images.generate(
            model=model.name,
            prompt=PROMPT,
            size=f"{case.width}x{case.height}",
            n=case.n,
            response_format=case.response_format,
            extra_body={"num_inference_steps": STEPS, "seed": seed},
        )
        if len(result.data) != case.n:
            raise AssertionError(f"asked for {case.n} images, got {len(result.data)}")
        files = []
        for item in result.data:
            if case.response_format == "b64_json":
                files.append(base64.b64decode(item.b64_json))
            else:
                fetched = httpx.get(item.url, timeout=smoke.deadline)
                fetched.raise_for_status()
                if fetched.headers["content-type"] != "image/png":
                    raise AssertionError(f"{item.url} is {fetched.headers['content-type']}, not image/png")
                files.append(fetched.content)
        for data in files:
            size = Image.open(io.BytesIO(data)).size
            if size != (case.width, case.height):
                raise AssertionError(f"an image is {size[0]}x{size[1]}, asked for {case.width}x{case.height}")
        seeds = [item.model_extra.get("seed") for item in result.data]
        if seeds != list(range(seed, seed + case.n)):
            raise AssertionError(f"seeds {seeds}, expected {list(range(seed, seed + case.n))}")
        if case.n > 1 and len(set(files)) != len(files):
            raise AssertionError("the images of one request are identical")
        pixels = case.width * case.height * case.n
        sides = {t.name: t.side(pixels, sum(map(len, files))) for t in thresholds if t.applies_to(case.response_format)}
        smoke.results.append("threshold_sides", {"model": model.name, "engine": model.engine, **sides})
        return f"{sum(map(len, files))} bytes of PNG; " + ", ".join(f"{k} {v}" for k, v in sides.items())

    for case in image_cases(model.shape, thresholds):
        smoke.run(case.label, model.engine, model.shape, lambda c=case: generate(c), model)

    if model.shape == "tiny":
        smoke.run("image edit (multipart, size auto)", model.engine, model.shape, lambda: edit(client, model), model)
    if stack.instances > 1:
        name = f"image 64x64 x{stack.instances} at once (one per instance)"
        cases = [ImageCase(64, 64, 1, "b64_json")] * stack.instances
        smoke.run(name, model.engine, model.shape, lambda: concurrently(generate, cases), model)


def edit(client: openai.OpenAI, model: ServedModel) -> str:
    """An edit of a 96x64 picture: the result keeps the input's size. The sglang engine refuses edits (400)."""
    image = ("photo.png", picture(96, 64), "image/png")
    knobs = {"num_inference_steps": STEPS, "seed": 3, "strength": 0.6}
    if model.engine == "sglang":
        try:
            client.images.edit(model=model.name, image=image, prompt=PROMPT, extra_body=knobs)
        except openai.BadRequestError as exc:
            return f"refused with 400 as documented: {exc.message[:200]}"
        raise AssertionError("the sglang engine answered an edit; it is documented to refuse them with 400")
    result = client.images.edit(
        model=model.name, image=image, prompt=PROMPT, response_format="b64_json", extra_body=knobs
    )
    (item,) = result.data
    size = Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size
    if size != (96, 64):
        raise AssertionError(f"the edit is {size[0]}x{size[1]}, the input 96x64")
    return "96x64 in, 96x64 out"


def concurrently(generate: Callable[[ImageCase], str], cases: list[ImageCase]) -> str:
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(generate, cases))
    return f"{len(results)} requests answered"


def check_mp4(data: bytes, content_type: str, width: int, height: int) -> str:
    if content_type != "video/mp4":
        raise AssertionError(f"content-type {content_type!r}, expected video/mp4")
    info = probe_mp4(data)
    expected = (VIDEO["num_frames"], width, height, "h264")
    if (info.frames, info.width, info.height, info.codec) != expected:
        raise AssertionError(f"the MP4 is {info}, expected frames/width/height/codec {expected}")
    return f"{len(data)} bytes of MP4, {info.frames} frames {info.width}x{info.height} {info.codec}"


def video_job(smoke: Smoke, stack: RunningStack, model: ServedModel, width: int, height: int) -> str:
    """Create a job (an uploaded reference for image-to-video), poll it to completion, download, delete."""
    client = stack.sdk_client(smoke.deadline)
    reference = {}
    if model.kind == "i2v":
        reference["input_reference"] = ("reference.png", picture(width, height), "image/png")
    started = time.monotonic()
    created = client.videos.create(
        model=model.name, prompt=PROMPT, size=f"{width}x{height}", extra_body=dict(VIDEO), **reference
    )
    job = created
    while job.status not in ("completed", "failed"):
        if time.monotonic() - started > smoke.deadline:
            raise DeadlineMissed(f"job {created.id} still {job.status} at {job.progress}%")
        time.sleep(0.1)
        job = client.videos.retrieve(created.id)
    if job.status != "completed":
        raise AssertionError(f"job {created.id} failed: {job.error}")
    content = client.videos.download_content(created.id)
    described = check_mp4(content.read(), content.response.headers.get("content-type"), width, height)
    deleted = client.videos.delete(created.id)
    if not deleted.deleted:
        raise AssertionError(f"DELETE answered {deleted}")
    try:
        client.videos.retrieve(created.id)
    except openai.NotFoundError:
        return f"created, completed in {time.monotonic() - started:.1f} s, {described}, deleted"
    raise AssertionError("the deleted job is still there")


def video_blocking(smoke: Smoke, stack: RunningStack, model: ServedModel, width: int, height: int, fmt: str) -> str:
    """The seed's blocking form: a create that carries ``response_format`` returns the finished video."""
    body = {"model": model.name, "prompt": PROMPT, "size": f"{width}x{height}", "response_format": fmt, "nvext": VIDEO}
    with stack.http(smoke.deadline) as http:
        response = http.post("/v1/videos", json=body)
        if response.status_code != 200:
            raise AssertionError(f"{response.status_code}: {response.text[:500]}")
        video = response.json()
        if video["status"] != "completed":
            raise AssertionError(f"status {video['status']}")
        if fmt == "b64_json":
            return check_mp4(base64.b64decode(video["data"][0]["b64_json"]), "video/mp4", width, height)
        fetched = http.get(video["data"][0]["url"])
        fetched.raise_for_status()
        return check_mp4(fetched.content, fetched.headers["content-type"], width, height)


def video_checks(smoke: Smoke, stack: RunningStack, model: ServedModel) -> None:
    label = {"t2v": "text-to-video", "i2v": "image-to-video"}[model.kind]
    engine, shape = model.engine, model.shape
    smoke.run(
        f"{label} job 64x64: create, poll, download, delete",
        engine,
        shape,
        lambda: video_job(smoke, stack, model, 64, 64),
        model,
    )
    if model.kind == "t2v":
        fmt = "url" if shape == "tiny" else "b64_json"
        smoke.run(
            f"{label} blocking 96x64 response_format={fmt}",
            engine,
            shape,
            lambda: video_blocking(smoke, stack, model, 96, 64, fmt),
            model,
        )


def cancelled_generations(stack: RunningStack, model: ServedModel) -> float:
    """The model's generations stopped because Triton marked them cancelled (its own counter, re-exported on the
    frontend's /metrics)."""
    text = httpx.get(f"{stack.url}/metrics", timeout=30).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "diffusion_requests_total"
                and labels.get("model") == model.triton_name
                and labels.get("outcome") == "GenerationCancelled"
            ):
                total += sample.value
    return total


def dropped_stream(smoke: Smoke, stack: RunningStack, model: ServedModel) -> str:
    """Leave a long chat stream after its first text; the model must count the generation cancelled, and answer
    the next request long before the dropped one could have ended."""
    before = cancelled_generations(stack, model)
    long = LONG_STREAM if model.engine == "transformers" else {"max_tokens": LONG_STREAM["max_tokens"]}
    body = {"model": model.name, "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True, **long}
    started = time.monotonic()
    with stack.http(smoke.deadline) as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise AssertionError(f"{r.status_code}: {r.read()[:500]!r}")
        for line in r.iter_lines():
            choices = json.loads(line[6:]).get("choices") if line.startswith("data: {") else None
            if choices and choices[0]["delta"].get("content"):
                break  # the first text arrived: leave mid-stream
            if time.monotonic() - started > smoke.deadline:
                raise DeadlineMissed("no text in the stream")
        else:
            raise AssertionError("the stream ended before the client could leave it")
    left = time.monotonic()
    while cancelled_generations(stack, model) <= before:
        if time.monotonic() - left > smoke.deadline:
            raise DeadlineMissed("the model never counted the dropped stream as cancelled")
        time.sleep(0.1)
    seen = time.monotonic() - left
    reply = stack.sdk_client(smoke.deadline).chat.completions.create(
        model=model.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    if not reply.choices[0].message.content:
        raise AssertionError("no answer after the dropped stream")
    return f"the model counted the cancellation {seen:.2f} s after the client left; the next request was answered"


def text_checks(smoke: Smoke, stack: RunningStack, model: ServedModel) -> None:
    client = stack.sdk_client(smoke.deadline)
    messages = [{"role": "user", "content": "Hello! How are you?"}]
    knobs = {"extra_body": {"block_length": 4}} if model.engine == "transformers" else {}

    def chat() -> str:
        reply = client.chat.completions.create(model=model.name, messages=messages, max_tokens=16, **knobs)
        text, usage = reply.choices[0].message.content, reply.usage
        if not text or not usage or not 0 < usage.completion_tokens <= 16:
            raise AssertionError(f"reply {text!r}, usage {usage}")
        return f"{usage.completion_tokens} tokens, finish_reason {reply.choices[0].finish_reason}"

    def chat_stream() -> str:
        chunks = list(
            client.chat.completions.create(
                model=model.name,
                messages=messages,
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
                **knobs,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage if chunks else None
        if not text or usage is None:
            raise AssertionError(f"streamed text {text!r}, final usage {usage}")
        return f"{len(chunks)} chunks, {usage.completion_tokens} tokens"

    def completion() -> str:
        reply = client.completions.create(model=model.name, prompt="Once upon a time", max_tokens=8, **knobs)
        if not reply.choices[0].text:
            raise AssertionError("empty completion")
        return f"{reply.usage.completion_tokens if reply.usage else '?'} tokens"

    for name, body in (
        ("chat completion", chat),
        ("chat completion streamed", chat_stream),
        ("completion", completion),
        ("chat stream dropped mid-way: the model sees the cancellation", lambda: dropped_stream(smoke, stack, model)),
    ):
        smoke.run(name, model.engine, model.shape, body, model)


def health_checks(smoke: Smoke, stack: RunningStack, engine: str) -> None:
    """After everything: the frontend ready, every Triton model ready, every stub the one that loaded it."""

    def ready() -> str:
        response = httpx.get(f"{stack.url}/health/ready", timeout=smoke.deadline)
        if response.status_code != 200:
            raise AssertionError(f"{response.status_code}: {response.text[:500]}")
        return json.dumps(response.json())[:300]

    def stubs_alive() -> str:
        problems, total = [], 0
        for model in stack.models:
            name = model.triton_name
            status = httpx.get(f"{stack.triton_http_url}/v2/models/{name}/ready", timeout=smoke.deadline).status_code
            now, loaded = stub_pids(stack.triton, name), stack.stub_pids.get(name, [])
            total += len(now)
            if status != 200:
                problems.append(f"{name}: Triton says not ready ({status})")
            if len(loaded) != stack.instances:
                problems.append(f"{name}: {len(loaded)} stubs after loading, expected {stack.instances}")
            if now != loaded:
                problems.append(f"{name}: stubs {now}, after loading {loaded}")
        if problems:
            raise AssertionError("; ".join(problems))
        return f"{len(stack.models)} models ready, {total} stubs alive since loading"

    smoke.run("frontend /health/ready", engine, "all", ready)
    smoke.run("every Triton model ready, every stub alive", engine, "all", stubs_alive)


def run_stack(
    smoke: Smoke,
    label: str,
    models: list[ServedModel],
    thresholds: list[SizeThreshold],
    gpus: Sequence[int],
    workdir: Path,
    load_timeout: float,
) -> None:
    engine = "+".join(dict.fromkeys(m.engine for m in models))
    with running_stack(smoke, label, models, gpus, workdir, load_timeout) as stack:
        if stack is None:
            for model in models:
                smoke.record(
                    Check(
                        f"{model.kind} checks",
                        model.engine,
                        model.shape,
                        "fail",
                        0.0,
                        "not run: the stack did not start",
                        model.name,
                    )
                )
            return
        smoke.server_log = stack.triton.log_file if stack.triton is not None else None
        order = {"t2v": 0, "i2v": 1, "image": 2, "text": 3}
        for model in sorted(models, key=lambda m: order[m.kind]):
            if model.kind == "image":
                image_checks(smoke, stack, model, thresholds)
            elif model.kind == "text":
                text_checks(smoke, stack, model)
            else:
                video_checks(smoke, stack, model)
        health_checks(smoke, stack, engine)


def threshold_coverage(smoke: Smoke, thresholds: list[SizeThreshold]) -> None:
    """Every size threshold found was passed on both sides by some image request that succeeded."""

    def covered() -> str:
        if not thresholds:  # one answer path at every size: nothing to cross
            return f"none in {[shown(p) for p in THRESHOLD_SOURCES]}: the image path answers every size one way"
        seen = smoke.results.data.get("threshold_sides", [])
        missing = [t.name for t in thresholds if not {"at_or_below", "above"} <= {s.get(t.name) for s in seen}]
        if missing:
            raise AssertionError(f"not crossed by a successful request: {missing}")
        return "; ".join(f"{t.name} = {t.limit} {t.unit} ({t.where}): both sides" for t in thresholds)

    if any(c.name.startswith("image ") and c.outcome == "pass" for c in smoke.checks):
        smoke.run("size thresholds crossed both ways", "all", "all", covered)


# --- main ------------------------------------------------------------------------------------------------------


def build_mini_models(smoke: Smoke, options: Options, root: Path, workdir: Path) -> dict[str, Path]:
    """The mini FLUX and Wan folders (built once per machine, on the CPU: they are toy-sized)."""
    if "mini" not in options.shapes:
        return {}
    built: dict[str, Path] = {}
    for kind, maker_kind in MINI_MODEL.items():
        if all(engine_unavailable_reason(kind, e, options) for e in ("diffusers", "sglang")):
            continue

        def build(kind: str = kind, maker_kind: str = maker_kind) -> str:
            folder, info = ensure_built(
                maker_kind, root, mini=True, device="cpu", log_file=workdir / f"make_{maker_kind}.log"
            )
            built[kind] = folder
            return f"built in {info['wall_s']} s: {folder}" if info else f"already built: {folder}"

        smoke.run(f"build mini {maker_kind}", "make_models", "mini", build)
    return built


def parse_list(text: str | None, allowed: Sequence[str], what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    unknown = set(items) - set(allowed)
    if unknown or not items:
        raise SystemExit(f"--{what}: choose from {', '.join(allowed)} (got {text!r})")
    return items


def summary_table(checks: Sequence[Check], seconds: float, out: Path) -> str:
    lines = [f"{'outcome':<8} {'seconds':>8}  {'engine':<22} {'shape':<5}  check"]
    for check in checks:
        lines.append(f"{check.outcome:<8} {check.seconds:>8.2f}  {check.engine:<22} {check.shape:<5}  {check.name}")
    counts = {o: sum(c.outcome == o for c in checks) for o in ("pass", "fail", "skipped")}
    lines.append(
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped in {seconds:.1f} s; "
        f"results in {out}"
    )
    for check in checks:  # every failure whole, last, where it is seen; a skip's reason in a line
        if check.outcome != "pass":
            detail = check.detail.strip() if check.outcome == "fail" else first_line(check.detail)
            lines.append(f"  {check.outcome}: [{check.engine} {check.shape}] {check.name}: {detail}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.gpu.smoke", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds each request may take (default 120)")
    parser.add_argument(
        "--engines", default=None, help=f"comma list of {', '.join(ENGINES)} (default: every one this host can run)"
    )
    parser.add_argument("--shapes", default="tiny,mini", help="comma list of tiny, mini (default both)")
    parser.add_argument("--gpus", default=None, help="GPU indices to serve on, e.g. 0,1 (default: every visible GPU)")
    parser.add_argument("--load-timeout", type=float, default=600.0, help="seconds a stack may take to load")
    parser.add_argument("--work", type=Path, default=None, help="rendered repositories and logs (default: a temp dir)")
    parser.add_argument(
        "--model-root", type=Path, default=default_cache_dir().parent / "gpu-models", help="where mini models are built"
    )
    parser.add_argument("--sglang-attention-backend", default=DEFAULT_SGLANG_ATTENTION_BACKEND)
    parser.add_argument("--dllm-sglang-model", default=None, help="a LLaDA2/SDAR checkpoint for SGLang's dLLM engine")
    parser.add_argument(
        "--dllm-sglang-args",
        default="",
        help="JSON object of further sglang.Engine kwargs for it, e.g. an attention backend that needs no compiled "
        'extension on a host without SGLang\'s kernels: {"attention_backend": "triton", "disable_cuda_graph": true}',
    )
    parser.add_argument(
        "--sglang-video-backend",
        choices=("sglang", "diffusers"),
        default=None,
        help="sglang_backend of the Wan models on the sglang engine (default: SGLang's native Wan on a GPU); "
        "'diffusers' where SGLang's native Wan cannot import (its CUDA kernels need nvidia-cutlass-dsl)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gpus = detect_gpus() if args.gpus is None else [int(g) for g in args.gpus.split(",") if g.strip()]
    options = Options(
        engines=parse_list(args.engines, ENGINES, "engines"),
        shapes=parse_list(args.shapes, SHAPES, "shapes") or SHAPES,
        on_gpu=bool(gpus),
        sglang_attention_backend=args.sglang_attention_backend,
        dllm_sglang_model=args.dllm_sglang_model,
        dllm_sglang_args=args.dllm_sglang_args,
        sglang_video_backend=args.sglang_video_backend,
    )
    workdir = args.work or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started, wall = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    thresholds = find_size_thresholds()
    results = ResultsFile(
        args.out,
        {
            "commit": git_commit(),
            "device": describe_device(),
            "versions": library_versions(),
            "started": started,
            "command": command_line("scripts.gpu.smoke", sys.argv[1:] if argv is None else argv),
            "settings": {
                "deadline_s": args.deadline,
                "engines": list(options.engines or ["every engine this host can run"]),
                "shapes": list(options.shapes),
                "gpus": gpus,
                "instances_per_model": max(1, len(gpus)),
                "workdir": str(workdir),
            },
            "size_thresholds": [vars(t) for t in thresholds],
            "checks": [],
        },
    )
    smoke = Smoke(results, args.deadline)
    print(f"[smoke] {results.data['device']['name']}, GPUs {gpus or 'none'}; logs in {workdir}", flush=True)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    interrupted = None
    try:
        mini_models = build_mini_models(smoke, options, args.model_root, workdir)
        sglang = dict.fromkeys(KINDS, "sglang")
        for label, engines in (("portable", PORTABLE_ENGINE), ("sglang", sglang)):
            models, skipped = plan_stack(engines, options, mini_models)
            for skip in skipped:
                smoke.skip(f"{skip.kind} checks", skip.engine, skip.shape, skip.reason)
            if models:
                run_stack(smoke, label, models, thresholds, gpus, workdir / label, args.load_timeout)
        threshold_coverage(smoke, thresholds)
    except KeyboardInterrupt as exc:
        interrupted = f"interrupted: {exc}"
        smoke.record(Check("run", "all", "all", "fail", 0.0, interrupted))
    seconds = time.perf_counter() - wall
    failed = any(c.outcome == "fail" for c in smoke.checks)
    results.put(["finished"], time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    results.put(["seconds"], round(seconds, 1))
    results.put(["counts"], {o: sum(c.outcome == o for c in smoke.checks) for o in ("pass", "fail", "skipped")})
    results.put(["outcome"], "fail" if failed else "pass")
    print(summary_table(smoke.checks, seconds, args.out), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
