"""Load: throughput and latency against concurrency, through the frontend (the project's own async HTTP
client, closed loop) and through Triton alone (``perf_analyzer``), for one model instance and for two; and
the bare engine's loop, which is what one instance could do with nothing around it.

Every request is accounted for: HTTP statuses and exceptions on the client, and Triton's own success and
failure counters for the model, so a lost or failed request shows. Queueing shows as Triton's queue time per
request, and as latency growing with concurrency at flat throughput.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cpu.overhead import counters_after
from benchmarks.cpu.stack import Stack
from benchmarks.paths import BareImage
from benchmarks.stats import summarize, throughput
from benchmarks.workloads import PERF_INPUTS, ImageJob


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process has used, all its threads (``/proc/<pid>/task/*/schedstat``; 0 where unreadable)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def serving_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the frontend, the tritonserver process (gRPC, scheduling; not its model stubs) and
    this client process."""
    return {
        "frontend": process_cpu_s(stack.frontend.process.pid) if stack.frontend.process else 0.0,
        "tritonserver": process_cpu_s(stack.triton.process.pid) if stack.triton.process else 0.0,
        "client": process_cpu_s(os.getpid()),
    }


def _triton_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    done = after["success"] - before["success"]
    executions = after["executions"] - before["executions"]
    return {
        "success": done,
        "failure": after["failure"] - before["failure"],
        "executions": executions,
        "requests_per_execution": done / executions if executions else 0.0,
        "queue_ms_per_request": (after["queue_us"] - before["queue_us"]) / 1000 / done if done else 0.0,
        "compute_ms_per_request": (after["compute_infer_us"] - before["compute_infer_us"]) / 1000 / done
        if done
        else 0.0,
        "denoise_s": after["denoise_s"] - before["denoise_s"],
    }


def steady_throughput(completions: list[tuple[float, int]]) -> float:
    """Items per second from the first completion to the last, counting those after the first: the start-up
    (the first request's whole latency, before anything can complete) stays out of a short block's figure.
    ``completions`` are ``(time, items)`` pairs."""
    ordered = sorted(completions)
    if len(ordered) < 2:
        raise ValueError("steady throughput needs at least two completions")
    return throughput(sum(items for _, items in ordered[1:]), ordered[0][0], ordered[-1][0])


async def _closed_loop(base_url: str, bodies: list[dict[str, Any]], concurrency: int, total: int) -> dict[str, Any]:
    """``concurrency`` workers, each sending its next request as soon as its last one is answered. The client is
    aiohttp where it is installed (SGLang brings it): on a 2-core machine the load generator's own CPU competes
    with the engine, and aiohttp spends ~0.1 ms of CPU per request where httpx spends ~0.7 ms."""
    issued = 0
    latencies: list[float] = []
    completions: list[tuple[float, int]] = []
    statuses: Counter[str] = Counter()
    post, close, client_name = await _http_client(base_url, concurrency)

    async def worker() -> None:
        nonlocal issued
        while issued < total:
            body = bodies[issued % len(bodies)]
            issued += 1
            start = time.perf_counter()
            images = 0
            try:
                status, content = await post("/v1/images/generations", body)
                if status == 200:
                    images = content.count(b'"b64_json"')
                status = str(status)
            except Exception as exc:  # a transport failure is counted, never fatal to the run
                status = type(exc).__name__
            end = time.perf_counter()
            latencies.append(end - start)
            statuses[status] += 1
            if images:
                completions.append((end, images))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await close()
    end = time.perf_counter()
    ok = statuses.get("200", 0)
    images = sum(n for _, n in completions)
    return {
        "concurrency": concurrency,
        "client": client_name,
        "requests": total,
        "ok": ok,
        "errors": total - ok,
        "statuses": dict(statuses),
        "images": images,
        "images_per_s": steady_throughput(completions) if len(completions) > 1 else 0.0,
        "images_per_s_whole_block": throughput(images, start, end),
        "latency_ms": summarize(latencies, 1000),
        "wall_s": end - start,
    }


async def _http_client(base_url: str, connections: int):
    """``(post(path, json) -> (status, body bytes), close(), name)`` over aiohttp, else httpx."""
    try:
        import aiohttp
    except ImportError:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        client = httpx.AsyncClient(base_url=base_url, timeout=900, limits=limits)

        async def post_httpx(path: str, body: dict[str, Any]) -> tuple[int, bytes]:
            response = await client.post(path, json=body)
            return response.status_code, response.content

        return post_httpx, client.aclose, "httpx"
    session = aiohttp.ClientSession(
        base_url,
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=900),
    )

    async def post_aiohttp(path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        async with session.post(path, json=body) as response:
            return response.status, await response.read()

    return post_aiohttp, session.close, "aiohttp"


def frontend_run(stack: Stack, model: str, served_name: str, jobs: list[ImageJob], concurrency: int, total: int):
    bodies = [job.openai_body(served_name) for job in jobs]
    stack.wait_idle(model)
    before = stack.model_counters(model)
    cpu_before = serving_cpu(stack)
    result = asyncio.run(_closed_loop(stack.url, bodies, concurrency, total))
    cpu_after = serving_cpu(stack)
    after = counters_after(stack, model, before, result["requests"])
    result["triton"] = _triton_side(before, after)
    # CPU the serving path spent per request, besides the model itself: on a CPU host it competes with denoising.
    result["cpu_ms_per_request"] = {k: 1000 * (cpu_after[k] - cpu_before[k]) / total for k in cpu_after}
    # Every answer the client got is one Triton counted, and every request sent was answered one way or another.
    result["accounted"] = result["ok"] == result["triton"]["success"] and result["ok"] + result["errors"] == total
    return result


def bare_loop(bare: BareImage, jobs: list[ImageJob], total: int) -> dict[str, Any]:
    """The engine and encoder back to back in this process: one instance's ceiling."""
    latencies = []
    completions = []
    start = time.perf_counter()
    for i in range(total):
        call = bare(jobs[i % len(jobs)])
        completions.append((time.perf_counter(), len(call.files)))
        latencies.append(call.wall_s)
    end = time.perf_counter()
    images = sum(n for _, n in completions)
    return {
        "requests": total,
        "images": images,
        "images_per_s": steady_throughput(completions),
        "images_per_s_whole_block": throughput(images, start, end),
        "latency_ms": summarize(latencies, 1000),
    }


# --- perf_analyzer -------------------------------------------------------------------------------------------

PERF_COLUMNS = {
    "Inferences/Second": "requests_per_s",
    "Server Queue": "server_queue_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_server_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
    "Avg latency": "avg_us",
}


def parse_perf_csv(text: str) -> list[dict[str, float]]:
    """perf_analyzer's ``-f`` CSV → one row per concurrency (times in microseconds, as it writes them)."""
    rows = []
    for raw in csv.DictReader(text.splitlines()):
        if not raw.get("Concurrency"):
            continue
        row = {"concurrency": float(raw["Concurrency"])}
        for column, key in PERF_COLUMNS.items():
            if raw.get(column) not in (None, ""):
                row[key] = float(raw[column])
        rows.append(row)
    return rows


def perf_analyzer_run(
    stack: Stack, model: str, input_file: Path, concurrency: int, window: int, images_per_request: float
) -> dict[str, Any]:
    binary = shutil.which("perf_analyzer")
    if binary is None:
        raise RuntimeError("perf_analyzer is not on PATH (source scripts/env.sh; scripts/setup.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="perf-") as folder:
        report = Path(folder) / "perf.csv"
        command = [
            binary,
            "-m",
            model,
            "-u",
            stack.triton.grpc_url,
            "-i",
            "grpc",
            "--input-data",
            str(input_file),
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            str(window),
            "--stability-percentage",
            "999",  # accept the first three windows: a shared machine is never 'stable'
            "--max-trials",
            "3",
            "-f",
            str(report),
        ]
        stack.wait_idle(model)
        before = stack.model_counters(model)
        completed = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        after = counters_after(stack, model, before, 1)
        if completed.returncode != 0:
            return {
                "concurrency": concurrency,
                "error": f"perf_analyzer exited {completed.returncode}: "
                + completed.stdout[-1500:]
                + completed.stderr[-1500:],
                "triton": _triton_side(before, after),
            }
        rows = parse_perf_csv(report.read_text())
    row = rows[0] if rows else {}
    result: dict[str, Any] = {"concurrency": concurrency, **row}
    if "requests_per_s" in row:
        result["images_per_s"] = row["requests_per_s"] * images_per_request
    result["triton"] = _triton_side(before, after)
    result["errors"] = int(result["triton"]["failure"])
    return result


def perf_input_file() -> Path:
    return PERF_INPUTS / "image_diffusion_64.json"
