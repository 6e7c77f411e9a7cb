"""The serve command: which models it can start, its command line, and starting and stopping the stack.

``scripts/serve.sh``, the ``triton-diffusion-serve`` console script and ``python -m diffusion_runtime.launcher``
all run ``main``. When tritonserver cannot load a model, ``main`` says which model, Triton's reason (from
Triton's log), and what to do about it, and exits with code 1, rather than showing a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffusion_runtime.launcher.processes import ExitedBeforeReady, Frontend, TritonServer
from diffusion_runtime.launcher.repository import REPOSITORY, ModelSpec, detect_gpus, render_repository
from diffusion_runtime.launcher.triton_log import error_lines, read_log


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


CONSOLE_SCRIPT = "triton-diffusion-serve"  # pyproject.toml's name for ``main``


def build_parser() -> argparse.ArgumentParser:
    """The serve command's options; its usage line names the console script when that is what ran, else
    ``scripts/serve.sh`` (which runs ``python -m diffusion_runtime.launcher``)."""
    parser = argparse.ArgumentParser(
        prog=CONSOLE_SCRIPT if Path(sys.argv[0]).name == CONSOLE_SCRIPT else "scripts/serve.sh",
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
        "--job-store", default=None, help="video job records in PostgreSQL (postgresql://...) instead of SQLite"
    )
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
    """Serve until Ctrl-C or SIGTERM (exit code 0); 1 when the stack could not start or a process of it died."""
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
    specs = model_specs(args)
    repository = render_repository(specs, run_dir / "model_repository", gpus)
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
    if args.job_store:
        extra += ["--job-store", args.job_store]
    for key in args.api_key:
        extra += ["--api-key", key]
    if args.no_auth:
        extra.append("--no-auth")
    if not args.access_log:
        extra.append("--no-access-log")
    frontend = Frontend(
        triton, host=args.host, port=args.port, fs_url=args.fs_url, http_url=args.http_url, extra_args=extra
    )

    def on_signal(signum: int, _frame: object) -> None:
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
        print(f"[serve] playground: open {frontend.url}/ in a browser", flush=True)
        while True:
            for name, process in (("tritonserver", triton.process), ("frontend", frontend.process)):
                if process is not None and process.poll() is not None:
                    print(f"[serve] {name} exited with code {process.returncode}; stopping", flush=True)
                    return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("[serve] stopping", flush=True)
        return 0
    except (ExitedBeforeReady, TimeoutError) as error:
        print(startup_failure(error, triton, specs), file=sys.stderr, flush=True)
        return 1
    finally:
        frontend.stop()
        triton.stop()


def startup_failure(error: ExitedBeforeReady | TimeoutError, triton: TritonServer, specs: Sequence[ModelSpec]) -> str:
    """What went wrong while the stack was starting, in words: each model tritonserver could not load with
    Triton's reason and what to do, else which process ended or timed out and where its log is."""
    failures = triton.load_failures()
    if failures:
        by_name = {spec.triton_name: spec for spec in specs}
        lines = ["[serve] tritonserver could not load every model, so it stopped and nothing is served:"]
        for failure in failures:
            spec = by_name.get(failure.model)
            model = spec.parameters.get("model_path", "") if spec else ""
            lines.append(f"[serve] {failure.model}{f' ({model})' if model else ''}: {failure.reason}")
            if model:
                lines.append(f"[serve]   what to do: {_what_to_do(failure.model, model)}")
        lines.append(f"[serve] tritonserver's whole log, with the stack traces: {triton.log_file}")
        return "\n".join(lines)
    if isinstance(error, ExitedBeforeReady):
        log = f"; its log: {error.log_file}" if error.log_file else " (its output is above)"
        said = [f"[serve]   {line}" for line in error_lines(read_log(error.log_file))]
        return "\n".join([f"[serve] {error.what} exited with code {error.returncode} before it was ready{log}", *said])
    return f"[serve] {error}; tritonserver's log: {triton.log_file}"


def _what_to_do(triton_name: str, model: str) -> str:
    """Advice for a model that did not load, by where the model was looked for."""
    flag = next((f"--{slot.flag}-model" for slot in SLOTS if slot.triton_name == triton_name), "the model option")
    if Path(model).is_dir():
        return (
            f"{model} is a folder on this host: check that it holds the whole model (model_index.json or "
            "config.json and every weight file it names)."
        )
    if model.startswith(("/", ".", "~")):
        return f"there is no folder {model} on this host: name a folder that holds the model, or a Hugging Face id."
    return (
        f"{model} is not a folder on this host, so it was looked up on the Hugging Face Hub. Name a local "
        f"folder that holds the model ({flag} /path/to/model), or download it into the Hugging Face cache first "
        f"(`hf download {model}`; gated models also need HF_TOKEN). With HF_HUB_OFFLINE=1 only models "
        "already in the cache load."
    )
