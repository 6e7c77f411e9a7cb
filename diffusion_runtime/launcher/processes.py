"""Running the stack's processes: tritonserver and the OpenAI-compatible frontend, each a subprocess.

The serve command (``diffusion_runtime.launcher.cli``) and the tests drive the same ``TritonServer`` and
``Frontend`` classes, so the way a user starts the product is the way it is tested. Each process runs in a
session of its own, so that stopping it also stops whatever it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from diffusion_runtime.launcher.repository import PROJECT_ROOT
from diffusion_runtime.launcher.triton_log import LoadFailure, load_failures, read_log
from diffusion_runtime.net import free_port


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver is, and what it needs from its environment to run."""

    binary: Path
    backend_directory: Path | None  # None: the server's own default (a regular Triton install)
    lib_dirs: list[str]  # prepended to LD_LIBRARY_PATH


def find_tritonserver() -> TritonInstall:
    """The ``tritonserver`` on PATH if there is one, else the one embedded in the ``nvidia-pytriton`` wheel (with
    this interpreter's Python-backend stub put in place)."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), None, [])
    import pytriton

    base = Path(pytriton.__file__).parent / "tritonserver"
    _put_python_stub_in_place(base)
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    # The stub links libpython: make it load this interpreter's own (pyenv builds ship a shared one), else
    # stdlib C extensions inside models break against a different patch release. A system Python's
    # LIBDIR (/usr/lib/x86_64-linux-gnu) is searched anyway and must not go on LD_LIBRARY_PATH: that would put
    # every system library ahead of the RUNPATHs of pip-installed CUDA libraries in the models' processes.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if _is_system_library_dir(libdir):
        libdir = ""
    return TritonInstall(base / "bin" / "tritonserver", base / "backends", [p for p in (libdir, str(libs)) if p])


def _put_python_stub_in_place(base: Path) -> None:
    """``nvidia-pytriton`` ships a Python-backend stub per Python version and none where its tritonserver looks
    (pytriton copies one into a workspace of its own at each start). Every model runs in that stub, built for
    the Python that runs the models, so this interpreter's goes into ``backends/python`` once per install,
    through a temporary file, so that a server starting at the same time never sees half a stub."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = base / "python_backend_stubs" / version / "triton_python_backend_stub"
    target = base / "backends" / "python" / "triton_python_backend_stub"
    if not stub.exists() or (target.exists() and target.stat().st_size == stub.stat().st_size):
        return  # in place already, or a build of tritonserver that brings its own
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copy2(stub, partial)
    partial.chmod(0o755)
    os.replace(partial, target)


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


class ExitedBeforeReady(RuntimeError):
    """A server process ended while it was being waited on. The message leads with each model the log says
    failed to load and why (what a caller of ``wait_ready`` needs; tritonserver's last lines are its option
    table), then the end of the log and where the whole of it is."""

    def __init__(self, what: str, returncode: int, log_file: Path | None) -> None:
        text = read_log(log_file)
        failed = [f"{failure.model} failed to load: {failure.reason[:2000]}" for failure in load_failures(text)]
        where = f"\nits whole log: {log_file}" if log_file is not None else ""
        super().__init__(
            "\n".join([f"{what} exited with code {returncode} before it was ready", *failed, text[-2000:]]) + where
        )
        self.what = what
        self.returncode = returncode
        self.log_file = log_file


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float, what: str, log: Path | None) -> None:
    """Poll ``url`` until it answers 200, failing at once if the process ends first (backing off to 1 s)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ExitedBeforeReady(what, process.returncode, log)
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    raise TimeoutError(f"{what} was not ready at {url} within {timeout:.0f} s")


def stop_process(process: subprocess.Popen | None, grace: float = 20.0) -> None:
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
        wait_until_ready(f"{self.http_url}/v2/health/ready", self.process, timeout, "tritonserver", self.log_file)
        return self

    def load_failures(self) -> list[LoadFailure]:
        """The models this server's log says it could not load, with Triton's reasons (needs ``log_file``)."""
        return load_failures(read_log(self.log_file))

    def stop(self) -> None:
        stop_process(self.process)


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
        wait_until_ready(f"{self.url}/health", self.process, timeout, "the frontend", self.log_file)
        return self

    def stop(self) -> None:
        stop_process(self.process, grace=10.0)
