"""The launcher: what it reads from tritonserver's log, what the serve command says when a model cannot load,
and the boundary that keeps it out of the models' processes."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_runtime.launcher.cli import startup_failure
from diffusion_runtime.launcher.processes import ExitedBeforeReady, TritonServer
from diffusion_runtime.launcher.repository import PROJECT_ROOT, ModelSpec
from diffusion_runtime.launcher.triton_log import LoadFailure, error_lines, load_failures
from diffusion_runtime.net import free_port

# As tritonserver 2.51 writes them (paths shortened): the reason quoted and escaped, a traceback after it.
TRITON_2_51_LOG = "\n".join(
    [
        'I1202 00:19:40.100000 12237 model_lifecycle.cc:473] "loading: image_diffusion:1"',
        "E1202 00:19:53.064759 12237 model_lifecycle.cc:642] \"failed to load 'image_diffusion' version 1: Internal: "
        "OSError: Cannot load model black-forest-labs/FLUX.1-dev: model is not cached locally and an error occurred "
        'while trying to fetch metadata from the Hub.\\n\\nAt:\\n  /venv/pipeline_utils.py(1823): download\\n"',
        "I1202 00:19:53.064816 12237 model_lifecycle.cc:777] \"failed to load 'image_diffusion'\"",
        "E1202 00:19:53.070000 12237 model_lifecycle.cc:642] \"failed to load 'dllm' version 1: Internal: "
        'ValueError: The provided path \\"/models/llada\\" is not a folder\\n\\nAt:\\n  /venv/x.py(1): f\\n"',
        "| image_diffusion | 1       | UNAVAILABLE: Internal: OSError: Cannot load model black-forest-labs/FLUX.1 |",
        "error: creating server: Internal - failed to load all models",
    ]
)


def test_load_failures_are_the_model_and_the_python_message() -> None:
    assert load_failures(TRITON_2_51_LOG) == [
        LoadFailure(
            "image_diffusion",
            "OSError: Cannot load model black-forest-labs/FLUX.1-dev: model is not cached locally and an error "
            "occurred while trying to fetch metadata from the Hub.",
        ),
        LoadFailure("dllm", 'ValueError: The provided path "/models/llada" is not a folder'),
    ]


def test_load_failures_in_a_log_that_does_not_quote_its_messages() -> None:
    line = "E0101 00:00:00.000000 1 model_lifecycle.cc:600] failed to load 'video_generation' version 2: Not found: no"
    assert load_failures(line) == [LoadFailure("video_generation", "no")]
    assert load_failures("I0101 nothing failed here\n") == []


def test_error_lines_say_why_tritonserver_stopped() -> None:
    lines = error_lines(TRITON_2_51_LOG)
    assert lines[-1] == "error: creating server: Internal - failed to load all models"
    assert all(line.startswith(("E1202 ", "error: ")) for line in lines)


def _failed_triton(tmp_path: Path) -> tuple[ExitedBeforeReady, TritonServer]:
    log = tmp_path / "tritonserver.log"
    log.write_text(TRITON_2_51_LOG)
    return ExitedBeforeReady("tritonserver", 1, log), TritonServer(tmp_path / "repository", log_file=log)


def test_a_model_that_did_not_load_is_named_with_the_reason_and_what_to_do(tmp_path: Path) -> None:
    error, triton = _failed_triton(tmp_path)
    folder = tmp_path / "llada"
    folder.mkdir()
    specs = [
        ModelSpec("image_diffusion", {"model_path": "black-forest-labs/FLUX.1-dev"}),
        ModelSpec("dllm", {"model_path": str(folder)}),
    ]
    message = startup_failure(error, triton, specs)
    lines = message.splitlines()
    assert lines[0] == "[serve] tritonserver could not load every model, so it stopped and nothing is served:"
    assert lines[1].startswith("[serve] image_diffusion (black-forest-labs/FLUX.1-dev): OSError: Cannot load model")
    assert "--image-model /path/to/model" in lines[2] and "hf download black-forest-labs/FLUX.1-dev" in lines[2]
    assert "HF_HUB_OFFLINE=1" in lines[2]
    assert lines[3] == f'[serve] dllm ({folder}): ValueError: The provided path "/models/llada" is not a folder'
    assert f"{folder} is a folder on this host: check that it holds the whole model" in lines[4]
    assert lines[-1].endswith(str(triton.log_file))
    assert "Traceback" not in message and "At:" not in message


def test_a_caller_of_wait_ready_reads_which_model_failed_first(tmp_path: Path) -> None:
    """Benchmarks and the smoke test meet ``ExitedBeforeReady`` directly: its first lines name the model and the
    reason, not tritonserver's option table."""
    error, _ = _failed_triton(tmp_path)
    lines = str(error).splitlines()
    assert lines[0] == "tritonserver exited with code 1 before it was ready"
    assert lines[1].startswith("image_diffusion failed to load: OSError: Cannot load model black-forest-labs/")
    assert lines[2] == 'dllm failed to load: ValueError: The provided path "/models/llada" is not a folder'
    assert lines[-1] == f"its whole log: {tmp_path / 'tritonserver.log'}"


def test_a_path_that_does_not_exist_is_called_that(tmp_path: Path) -> None:
    error, triton = _failed_triton(tmp_path)
    message = startup_failure(error, triton, [ModelSpec("image_diffusion", {"model_path": "/no/such/model"})])
    assert "what to do: there is no folder /no/such/model on this host" in message


def test_without_a_model_to_blame_the_process_and_its_errors_are_named(tmp_path: Path) -> None:
    log = tmp_path / "tritonserver.log"
    log.write_text("I0101 starting\nerror: creating http server: Address already in use\n")
    triton = TritonServer(tmp_path / "repository", log_file=log)
    assert startup_failure(ExitedBeforeReady("tritonserver", 1, log), triton, []).splitlines() == [
        f"[serve] tritonserver exited with code 1 before it was ready; its log: {log}",
        "[serve]   error: creating http server: Address already in use",
    ]
    frontend = startup_failure(ExitedBeforeReady("the frontend", 2, None), triton, [])
    assert frontend == "[serve] the frontend exited with code 2 before it was ready (its output is above)"


def test_nothing_the_models_import_imports_the_launcher() -> None:
    """Engines and models run inside every model's stub process; the launcher's process and repository code
    has no business there (the engines take ``free_port`` from ``diffusion_runtime.net``)."""
    launcher = PROJECT_ROOT / "diffusion_runtime" / "launcher"
    sources = [
        path
        for folder in (PROJECT_ROOT / "diffusion_runtime", PROJECT_ROOT / "model_repository")
        for path in folder.rglob("*.py")
        if launcher not in path.parents
    ]
    offenders = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "diffusion_runtime.launcher" or n.startswith("diffusion_runtime.launcher.") for n in names):
                offenders.append(str(path.relative_to(PROJECT_ROOT)))
    assert sources and offenders == []


@pytest.mark.e2e  # runs the serve command, which starts tritonserver
def test_serve_command_says_which_model_failed_to_load_and_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusion_runtime.launcher",
            "--kinds",
            "image",
            "--image-model",
            str(missing),
            "--image-engine",
            "diffusers",
            "--port",
            str(free_port()),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "Traceback" not in said, said
    assert "[serve] tritonserver could not load every model, so it stopped and nothing is served:" in done.stderr
    reason = next(line for line in done.stderr.splitlines() if line.startswith(f"[serve] image_diffusion ({missing})"))
    assert reason.split("): ", 1)[1].strip(), said  # Triton's reason, whatever the engine's words
    assert f"what to do: there is no folder {missing} on this host" in done.stderr
    assert f"log, with the stack traces: {tmp_path / 'run' / 'tritonserver.log'}" in done.stderr


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    """Outgoing connections take their local ports from the kernel's ephemeral range; a server port chosen there
    could be taken by one before the server binds it."""
    from diffusion_runtime.net import _ephemeral_start, free_port

    start = _ephemeral_start()
    ports = {free_port() for _ in range(20)}
    if start is not None:
        assert all(port < start for port in ports)
    assert len(ports) > 1  # random, not one port handed to every server started together
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free, as promised
