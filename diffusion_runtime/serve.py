"""Starting the stack: a tritonserver over a model repository rendered for this host, and the frontend.

``scripts/serve.sh`` runs ``main``; the tests drive the same ``TritonServer`` and ``Frontend`` classes, so the
way a user starts the product is the way it is tested.

Rendering: the committed ``model_repository/`` is the GPU deployment a Triton user expects. ``render_repository``
copies it into a run folder and rewrites each ``config.pbtxt`` (parsed with Triton's own protobuf schema) for
this host: ``KIND_CPU`` where there is no GPU, one instance per selected GPU, and the chosen model, engine and
served name as parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = PROJECT_ROOT / "model_repository"


@dataclass(frozen=True)
class ServedSlot:
    """One model the serve command can start: its command-line name, repository folder and tiny default."""

    flag: str  # --<flag>-model, --<flag>-engine, --<flag>-served-name
    kind: str  # image | video | text (what --kinds selects)
    triton_name: str
    source: str  # folder under model_repository/
    tiny_model: str
    engines: tuple[str, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    tiny_parameters: Mapping[str, str] = field(default_factory=dict)  # also: the engine ``auto`` means for it


SLOTS = tuple(
    slot
    for slot in (
        ServedSlot(
            "image",
            "image",
            "image_diffusion",
            "image_diffusion",
            "tiny-flux",
            ("auto", "sglang", "diffusers"),
            tiny_parameters={"sglang_model_id": "FLUX.1-dev"},
        ),
        ServedSlot(
            "video",
            "video",
            "video_generation",
            "video_generation",
            "tiny-wan-t2v",
            ("auto", "sglang", "diffusers"),
            parameters={"video_mode": "t2v"},
        ),
        ServedSlot(
            "i2v",
            "video",
            "video_generation_i2v",
            "video_generation",
            "tiny-wan-i2v",
            ("auto", "sglang", "diffusers"),
            parameters={"video_mode": "i2v"},
        ),
        # SGLang's dLLM path loads only LLaDA2/SDAR architectures, not the tiny masked LM.
        ServedSlot(
            "dllm",
            "text",
            "dllm",
            "dllm",
            "tiny-llada",
            ("auto", "sglang", "transformers"),
            tiny_parameters={"engine": "transformers"},
        ),
    )
    if (REPOSITORY / slot.source / "config.pbtxt").exists()  # a kind is offered once its model exists
)
KINDS = tuple(dict.fromkeys(slot.kind for slot in SLOTS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detect_gpus() -> list[int]:
    """GPU indices visible to this host (``nvidia-smi``); empty on CPU machines."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return list(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


# --- model repository rendering ------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """One model to serve: which repository folder, and the parameters that differ from its config.pbtxt."""

    triton_name: str
    parameters: dict[str, str] = field(default_factory=dict)
    instances_per_gpu: int = 1
    source: Path | None = None  # a model folder outside model_repository/ (tests' helper models)
    gpus_per_instance: int = 1  # >1: each instance spans that many GPUs (SGLang sequence/tensor parallel)
    max_queue_size: int | None = None  # requests waiting per model beyond those running; more are refused


def gpu_set_group_name(gpus: Sequence[int]) -> str:
    """Instance-group name that carries a multi-GPU instance's devices (``triton_io`` reads it back)."""
    return "gpus-" + "-".join(str(g) for g in gpus)


def _place_instances(config, spec: ModelSpec, gpus: Sequence[int], mc) -> None:
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


# --- processes -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_directory: Path | None  # None: the server's own default (a regular Triton install)
    lib_dirs: list[str]  # prepended to LD_LIBRARY_PATH


def find_tritonserver() -> TritonInstall:
    """The ``tritonserver`` on PATH if there is one, else the one embedded in the ``nvidia-pytriton`` wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), None, [])
    import pytriton

    base = Path(pytriton.__file__).parent / "tritonserver"
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    # The stub links libpython: make it load this interpreter's own (pyenv builds ship a shared one), else
    # stdlib C extensions inside models break against a different patch release (FACTS §1). A system Python's
    # LIBDIR (/usr/lib/x86_64-linux-gnu) is searched anyway and must not go on LD_LIBRARY_PATH: that would put
    # every system library ahead of the RUNPATHs of pip-installed CUDA libraries in the models' processes.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if _is_system_library_dir(libdir):
        libdir = ""
    return TritonInstall(base / "bin" / "tritonserver", base / "backends", [p for p in (libdir, str(libs)) if p])


def _is_system_library_dir(path: str) -> bool:
    """A directory the dynamic loader searches by default (``/usr/lib``, ``/lib64``, ``/usr/lib/<multiarch>``...)."""
    if not path:
        return False
    resolved = Path(path).resolve()
    roots = {Path(p).resolve() for p in ("/lib", "/lib64", "/usr/lib", "/usr/lib64")}
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    multiarch_dir = resolved.name == multiarch or resolved.name.endswith(("-linux-gnu", "-linux-gnueabihf"))
    return resolved in roots or (resolved.parent in roots and multiarch_dir)


def stack_environment(extra: Mapping[str, str] | None = None, lib_dirs: Sequence[str] = ()) -> dict[str, str]:
    """Environment for tritonserver and the frontend: this venv first on PATH (the stub embeds the Python
    it finds there), the project importable, and quiet, offline-friendly library defaults."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    if lib_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*lib_dirs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def _wait_until(url: str, process: subprocess.Popen, timeout: float, what: str, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {process.returncode} before it was ready\n{tail}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    raise TimeoutError(f"{what} was not ready at {url} within {timeout:.0f} s")


def _stop(process: subprocess.Popen | None, grace: float = 20.0) -> None:
    """SIGINT, then SIGKILL after ``grace``; then what is left of the process's group (each is started with
    ``start_new_session``) is killed: Triton 2.51 leaves behind the stub processes of a model version it
    could not unload (one whose stub died), and a frozen stub never notices that its server exited."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class TritonServer:
    """A tritonserver subprocess on loopback ports (free ones unless given).

    It runs with ``--model-control-mode=explicit --load-model=*``: every model in the repository loads at
    startup, as in the default mode, and the repository API (``POST /v2/repository/models/<name>/load``) is
    open, which is how a model is brought back without restarting the server. Triton 2.51's Python backend
    does not restart a model's stub process that died (or froze: its health heartbeat stops); the model keeps
    answering "Stub process ... is not healthy" until it is reloaded. The frontend reloads it on the server
    where it failed (``openai_frontend.triton``), so one dead model costs that model a reload, not every model
    on the server a restart. Polling mode would not help: like a load request, it reloads only models whose
    files or config changed, which is why the frontend's reload changes one config parameter.

    Observed in 2.51: the replaced copy of the model is never fully unloaded once a request has failed on its
    dead stub, so its other instances' stub processes (and their memory) stay until tritonserver exits, and
    shutdown then waits out ``--exit-timeout-secs``. With one instance per model and server nothing but the
    dead stub's bookkeeping is left; with several instances of a model too large to fit twice, restart
    tritonserver instead.
    """

    def __init__(
        self,
        repository: Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        address: str = "127.0.0.1",
        log_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.repository = repository
        self.address = address
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_file = log_file
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.metrics_port}/metrics"

    def start(self) -> TritonServer:
        install = find_tritonserver()
        command = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--model-control-mode=explicit",  # the load API, so a model whose stub died can be reloaded
            "--load-model=*",
            "--exit-timeout-secs=10",
        ]
        if install.backend_directory is not None:
            command.append(f"--backend-directory={install.backend_directory}")
        output = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            command,
            env=stack_environment(self.extra_env, install.lib_dirs),
            # The Python stub does not pass PYTHONPATH on to models; started here, they import the project.
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 900.0) -> TritonServer:
        assert self.process is not None
        _wait_until(f"{self.http_url}/v2/health/ready", self.process, timeout, "tritonserver", self.log_file)
        return self

    def stop(self) -> None:
        _stop(self.process)


class Frontend:
    """The OpenAI-compatible frontend as a subprocess, in front of one or several tritonservers."""

    def __init__(
        self,
        triton: TritonServer | str | Sequence[TritonServer | str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        fs_url: str | None = None,
        http_url: str | None = None,
        extra_args: Sequence[str] = (),
        log_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.triton = triton
        self.extra_env = dict(env or {})
        self.host = host
        self.port = port or free_port()
        self.fs_url = fs_url
        self.http_url = http_url
        self.extra_args = list(extra_args)
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Frontend:
        command = [sys.executable, "-m", "openai_frontend.main", "--host", self.host, "--port", str(self.port)]
        servers = [self.triton] if isinstance(self.triton, (TritonServer, str)) else list(self.triton)
        for server in servers:
            if isinstance(server, TritonServer):
                command += ["--triton-url", server.grpc_url, "--triton-metrics-url", server.metrics_url]
            else:
                command += ["--triton-url", server]
        if self.fs_url:
            command += ["--fs-url", self.fs_url]
        if self.http_url:
            command += ["--http-url", self.http_url]
        output = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            command + self.extra_args,
            env=stack_environment(self.extra_env),
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> Frontend:
        assert self.process is not None
        _wait_until(f"{self.url}/health", self.process, timeout, "the frontend", self.log_file)
        return self

    def stop(self) -> None:
        _stop(self.process, grace=10.0)


# --- the serve command ---------------------------------------------------------------------------------------


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """Which models to serve. With no model named, every selected kind's tiny models; otherwise exactly the
    models named (so a GPU deployment never loads a tiny model it did not ask for)."""
    from diffusion_runtime.tiny_models import ensure_tiny_model

    selected = [slot for slot in SLOTS if slot.kind in args.kinds]
    named = [slot for slot in selected if getattr(args, f"{slot.flag}_model")]
    specs = []
    for slot in named or selected:
        model = getattr(args, f"{slot.flag}_model")
        parameters = {**slot.parameters, "engine": getattr(args, f"{slot.flag}_engine")}
        if model is None:
            tiny = dict(slot.tiny_parameters)
            if parameters["engine"] != "auto":  # an engine asked for by name wins over the tiny model's choice
                tiny.pop("engine", None)
            parameters.update(tiny)
            parameters.update(model_path=str(ensure_tiny_model(slot.tiny_model)), served_model_name=slot.tiny_model)
        else:
            parameters.update(model_path=model, served_model_name=getattr(args, f"{slot.flag}_served_name") or model)
        parameters.update(_slot_overrides(args.param, slot.flag))
        specs.append(
            ModelSpec(
                slot.triton_name,
                parameters,
                args.instances,
                REPOSITORY / slot.source,
                args.gpus_per_instance,
                args.max_queue_size,
            )
        )
    return specs


def _slot_overrides(assignments: Sequence[str], flag: str) -> dict[str, str]:
    """``--param video.sglang_args={"tp_size":2}`` → the parameters for one slot."""
    overrides = {}
    for assignment in assignments:
        target, sep, value = assignment.partition("=")
        slot, dot, key = target.partition(".")
        if not sep or not dot or not key:
            raise SystemExit(f"--param wants SLOT.KEY=VALUE, got {assignment!r}")
        if slot == flag:
            overrides[key] = value
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/serve.sh",
        description="Start tritonserver and the OpenAI-compatible frontend. With no model named, tiny random "
        "models are built locally and served, so the whole API works offline on a CPU.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="frontend bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="frontend port (default 8000)")
    parser.add_argument("--fs-url", default=None, help="media storage: file:///path (default under ~/.local/share)")
    parser.add_argument("--http-url", default=None, help="public base URL serving the stored media")
    parser.add_argument("--api-key", action="append", default=[], help="API key clients must send (repeatable)")
    parser.add_argument("--no-auth", action="store_true", help="allow a non-loopback --host without API keys")
    parser.add_argument("--presign-expiry", type=int, default=3600, help="seconds presigned S3 URLs stay valid")
    parser.add_argument("--state-dir", default=None, help="video job records (default under ~/.local/share)")
    parser.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True, help="frontend: a line per request"
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"kinds to serve, comma separated ({','.join(KINDS)})")
    for slot in SLOTS:
        parser.add_argument(f"--{slot.flag}-model", default=None, help=f"{slot.triton_name}: HF id or local folder")
        parser.add_argument(f"--{slot.flag}-engine", default="auto", choices=slot.engines)
        parser.add_argument(f"--{slot.flag}-served-name", default=None, help="OpenAI model id (default: the model)")
    parser.add_argument("--gpus", default=None, help="GPU indices to use, e.g. 0,1 (default: all; none on CPU hosts)")
    parser.add_argument("--instances", type=int, default=1, help="model instances per GPU (or on the CPU)")
    parser.add_argument(
        "--gpus-per-instance", type=int, default=1, help="GPUs one instance spans (SGLang parallelism, e.g. Wan 14B: 2)"
    )
    parser.add_argument(
        "--max-queue-size", type=int, default=None, help="requests each model queues before refusing (HTTP 429)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="SLOT.KEY=VALUE",
        help=f"set a config.pbtxt parameter of one model (slots: {', '.join(s.flag for s in SLOTS)})",
    )
    parser.add_argument("--triton-http-port", type=int, default=None)
    parser.add_argument("--triton-grpc-port", type=int, default=None)
    parser.add_argument("--triton-metrics-port", type=int, default=None)
    parser.add_argument("--run-dir", default=None, help="where the rendered repository and logs go")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    flags = {slot.flag for slot in SLOTS}
    for assignment in args.param:
        if assignment.partition(".")[0] not in flags:
            raise SystemExit(f"--param {assignment!r}: the slot must be one of {', '.join(sorted(flags))}")
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown kind(s): {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    gpus = detect_gpus() if args.gpus is None else [int(g) for g in args.gpus.split(",") if g.strip()]
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="triton-diffusion-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    repository = render_repository(model_specs(args), run_dir / "model_repository", gpus)
    print(f"[serve] repository {repository} ({'GPUs ' + ','.join(map(str, gpus)) if gpus else 'CPU'})", flush=True)

    triton = TritonServer(
        repository,
        log_file=run_dir / "tritonserver.log",
        http_port=args.triton_http_port,
        grpc_port=args.triton_grpc_port,
        metrics_port=args.triton_metrics_port,
    )
    extra = ["--request-timeout", str(args.request_timeout), "--presign-expiry", str(args.presign_expiry)]
    if args.state_dir:
        extra += ["--state-dir", args.state_dir]
    for key in args.api_key:
        extra += ["--api-key", key]
    if args.no_auth:
        extra.append("--no-auth")
    if not args.access_log:
        extra.append("--no-access-log")
    frontend = Frontend(
        triton, host=args.host, port=args.port, fs_url=args.fs_url, http_url=args.http_url, extra_args=extra
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        triton.start()
        print(
            f"[serve] tritonserver: HTTP {triton.http_url}, gRPC {triton.grpc_url}, log {triton.log_file}; "
            "loading models...",
            flush=True,
        )
        triton.wait_ready()
        frontend.start().wait_ready()
        print(f"[serve] OpenAI API ready at {frontend.url}/v1 (Ctrl-C stops everything)", flush=True)
        while True:
            for name, process in (("tritonserver", triton.process), ("frontend", frontend.process)):
                if process is not None and process.poll() is not None:
                    print(f"[serve] {name} exited with code {process.returncode}; stopping", flush=True)
                    return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("[serve] stopping", flush=True)
        return 0
    finally:
        frontend.stop()
        triton.stop()


if __name__ == "__main__":
    sys.exit(main())
