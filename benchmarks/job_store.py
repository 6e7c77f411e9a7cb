"""The video job store's numbers: operations per second for what every job does (create, poll, complete) on
SQLite and on PostgreSQL, and the time from a frontend's death to its job running again on another frontend.

    python -m benchmarks.job_store                # writes benchmarks/results/job-store-<date>.{json,md}
    python -m benchmarks.job_store --quick        # fewer operations and one takeover per lease

Store operations go through ``VideoJobStore``'s async API as the frontend calls it (a worker thread per call),
sequentially and from 8 concurrent callers, against a SQLite file and a local PostgreSQL server with its
default, durable settings (both on this machine's disk). The takeover is measured end to end: PostgreSQL, one
tritonserver with the tiny video model and two frontends as processes; a job is started on frontend A, A is
killed with SIGKILL once the job reports progress, and the clock stops when the job's row shows it running
on frontend B. The goal is the lease plus 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from benchmarks.report import judge, markdown_table, number, targets_table
from benchmarks.stats import bootstrap_median_ci, summarize
from diffusion_runtime.launcher.postgres import LocalPostgres
from diffusion_runtime.launcher.processes import Frontend, TritonServer
from diffusion_runtime.launcher.repository import REPOSITORY, ModelSpec, render_repository
from diffusion_runtime.tiny_models import ensure_tiny_models
from openai_frontend.job_store import VideoJob, VideoJobStore, video_jobs

RESULTS = Path(__file__).resolve().parent / "results"
TAKEOVER_MARGIN_S = 5.0
SLOW_JOB = {
    "model": "tiny-wan-t2v",
    "prompt": "takeover",
    "size": "64x64",
    "num_frames": 5,
    "fps": 8,
    "num_inference_steps": 60,
}


def new_job() -> VideoJob:
    """A queued job record as the API makes one (the tests use it too)."""
    return VideoJob(
        id=f"video_{uuid.uuid4().hex}",
        model="tiny-wan-t2v",
        status="queued",
        progress=0,
        created_at=int(time.time()),
        seconds="1",
        size="64x64",
        prompt="benchmark",
        params={"seed": 1},
    )


async def rate(operation: Callable[[int], Awaitable[Any]], count: int, concurrency: int) -> float:
    """Operations per second of ``count`` calls of ``operation(i)``, ``concurrency`` at a time."""
    pending = iter(range(count))

    async def worker() -> None:
        for i in pending:
            await operation(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


async def store_rates(store: VideoJobStore, count: int, concurrency: int) -> dict[str, float]:
    """create → poll (3 per job, as a client polls) → complete, each phase timed on its own."""
    jobs = [new_job() for _ in range(count)]
    owner = "benchmark"
    request = {"prompt": "benchmark"}
    created = await rate(lambda i: store.insert(jobs[i], request, None, owner), count, concurrency)
    polled = await rate(lambda i: store.get(jobs[i % count].id), 3 * count, concurrency)
    completed = await rate(
        lambda i: store.finish(jobs[i].id, owner, status="completed", progress=100, media_key="k"), count, concurrency
    )
    return {"create_per_s": created, "poll_per_s": polled, "complete_per_s": completed}


def measure_store(postgres: LocalPostgres, workdir: Path, count: int, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend in ("sqlite", "postgresql"):
        for concurrency in (1, 8):
            samples: dict[str, list[float]] = {}
            for round_ in range(rounds):
                url = (
                    str(workdir / f"jobs-{concurrency}-{round_}.sqlite3")
                    if backend == "sqlite"
                    else postgres.create_database(f"bench_{concurrency}_{round_}_{uuid.uuid4().hex[:6]}")
                )
                store = VideoJobStore(url)
                for name, value in asyncio.run(store_rates(store, count, concurrency)).items():
                    samples.setdefault(name, []).append(value)
                store.close()
            results[f"{backend}/concurrency-{concurrency}"] = {
                name: {**summarize(values), "ci95": bootstrap_median_ci(values)} for name, values in samples.items()
            }
            print(
                f"{backend} x{concurrency}: "
                + ", ".join(
                    f"{k} {v['median']:.0f}" for k, v in results[f"{backend}/concurrency-{concurrency}"].items()
                ),
                flush=True,
            )
    return results


def measure_takeover(postgres: LocalPostgres, workdir: Path, leases: list[float], runs: int) -> dict[str, Any]:
    """Seconds from SIGKILL of the frontend running a job to the job's row naming another frontend running it."""
    tiny = ensure_tiny_models(names=["tiny-wan-t2v"])
    spec = ModelSpec(
        "video_generation",
        {
            "engine": "diffusers",
            "default_width": "64",
            "default_height": "64",
            "model_path": str(tiny["tiny-wan-t2v"]),
            "served_model_name": "tiny-wan-t2v",
            "video_mode": "t2v",
        },
        source=REPOSITORY / "video_generation",
    )
    repository = render_repository([spec], workdir / "repo", gpus=[])
    triton = TritonServer(repository, log_file=workdir / "triton.log", env={"HF_HUB_OFFLINE": "1"})
    results: dict[str, Any] = {}
    try:
        triton.start().wait_ready()
        for lease in leases:
            url = postgres.create_database(f"takeover_{int(lease)}_{uuid.uuid4().hex[:6]}")
            engine = sa.create_engine("postgresql+psycopg://" + url.split("://", 1)[1])

            def frontend(name: str, lease: float = lease, url: str = url) -> Frontend:
                return Frontend(
                    triton,
                    fs_url=f"file://{workdir}/media",
                    log_file=workdir / f"frontend-{name}.log",
                    extra_args=("--job-store", url, "--job-lease-s", str(lease), "--state-dir", str(workdir / name)),
                ).start()

            samples = []
            survivor = frontend("b").wait_ready()
            try:
                for run in range(runs):
                    victim = frontend(f"a{run}").wait_ready()
                    samples.append(takeover_once(victim, survivor, engine))
                    victim.stop()
                    print(f"lease {lease:g} s: running again after {samples[-1]:.2f} s", flush=True)
            finally:
                survivor.stop()
                engine.dispose()
            median = summarize(samples)["median"]
            ci95 = bootstrap_median_ci(samples)
            results[f"lease-{lease:g}s"] = {
                "lease_s": lease,
                **summarize(samples),
                "ci95": ci95,
                "target": judge(lease + TAKEOVER_MARGIN_S, median, ci95, higher_is_better=False),
            }
    finally:
        triton.stop()
    return results


def takeover_once(victim: Frontend, survivor: Frontend, engine: sa.Engine) -> float:
    job = httpx.post(f"{victim.url}/v1/videos", json=SLOW_JOB, timeout=60).json()

    def row() -> sa.Row:
        with engine.connect() as conn:
            return conn.execute(sa.select(video_jobs).where(video_jobs.c.id == job["id"])).one()

    deadline = time.monotonic() + 120
    while row().progress == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the job never started")
        time.sleep(0.05)
    first_owner = row().lease_owner
    os.killpg(victim.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    while True:
        current = row()
        if current.lease_owner != first_owner and current.status == "in_progress":
            elapsed = time.monotonic() - killed
            break
        if time.monotonic() - killed > 120:
            raise TimeoutError("the job was not taken over")
        time.sleep(0.02)
    httpx.delete(f"{survivor.url}/v1/videos/{job['id']}", timeout=60)  # the run itself is not what is measured
    return elapsed


def write_report(results: dict[str, Any], destination: Path) -> None:
    destination.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    rows = []
    for key, phases in results["store"].items():
        backend, concurrency = key.split("/")
        rows.append(
            [backend, concurrency.split("-")[1]]
            + [number(phases[name]["median"], 0) for name in ("create_per_s", "poll_per_s", "complete_per_s")]
        )
    targets = [
        {"name": f"takeover, lease {v['lease_s']:g} s", "unit": "s", **v["target"]}
        for v in results["takeover"].values()
    ]
    text = "\n\n".join(
        [
            f"# Job store ({results['date']}, {results['machine']})",
            "Operations per second (median of rounds), through `VideoJobStore` as the frontend calls it:",
            markdown_table(rows, ["store", "callers", "create/s", "poll/s", "complete/s"]),
            "Time from SIGKILL of a frontend running a job to the job running on another frontend "
            f"(goal: lease + {TAKEOVER_MARGIN_S:g} s):",
            targets_table(targets),
        ]
    )
    destination.with_suffix(".md").write_text(text + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer operations and one takeover per lease")
    parser.add_argument("--leases", default="5,20", help="leases to measure the takeover with, in seconds")
    args = parser.parse_args(argv)
    count, rounds, runs = (200, 3, 1) if args.quick else (1000, 5, 3)
    with tempfile.TemporaryDirectory(prefix="td-bench-jobs-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o711)  # PostgreSQL's own user (as root: postgres) must reach its folder
        postgres = LocalPostgres(workdir / "postgres").start()
        try:
            results = {
                "date": datetime.date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "operations_per_round": count,
                "store": measure_store(postgres, workdir, count, rounds),
                "takeover": measure_takeover(postgres, workdir, [float(v) for v in args.leases.split(",")], runs),
            }
        finally:
            postgres.stop()
    destination = RESULTS / f"job-store-{results['date']}"
    write_report(results, destination)
    print(destination.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
