"""``benchmarks/cpu/run.sh [--quick|--full] [--only PHASES]``: the benchmark suite on this machine.

Starts one tritonserver with the tiny models (image with one instance and with two, text-to-video, dLLM) and
the OpenAI frontend, loads the same engines in this process, and runs, in order:

- overhead: one generation bare, through Triton alone and served, interleaved (images 64² and 512², video);
- dllm: tokens/s and time to the first block, bare decoder against Triton and served (streamed and not);
- load: throughput and latency at concurrency 1, 2, 4, 8 through the frontend and through perf_analyzer, one
  instance against two, and the bare loop against one instance at concurrency 4;
- encoding: PNG levels, JPEG, WebP at 512² and 1024², MP4 at 832x480 for 33 and 81 frames.

Writes ``benchmarks/results/cpu-<date>.json``, ``.md`` (the "Performance (CPU)" section) and ``.png``; the
JSON is rewritten after every phase, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # the bare video path forks ffmpeg beside live gRPC clients


from benchmarks.cpu import report  # noqa: E402
from benchmarks.stats import median, paired_ratios, summarize  # noqa: E402
from scripts.gpu.host import library_versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("overhead", "dllm", "load", "encoding")
LEVELS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many repetitions each phase makes."""

    warmup: int
    image_64_rounds: int
    image_512_rounds: int
    video_rounds: int
    dllm_rounds: int
    sweep_reps: int
    sweep_requests: int  # per block at concurrency c: max(sweep_requests, 2c)
    perf_window: int  # perf_analyzer requests per measurement window (three windows)
    target_rounds: int
    target_requests: int
    encode_image_reps: int
    encode_video_reps: int
    video_contents: tuple[str, ...]


PLANS = {
    "quick": Plan(2, 10, 3, 4, 6, 1, 8, 6, 3, 12, 3, 1, ("pan",)),
    "full": Plan(3, 40, 10, 12, 40, 3, 16, 12, 16, 60, 10, 3, ("pan", "noise")),
}


def machine_info() -> dict[str, Any]:
    """The machine and the library versions (``scripts.gpu.host``'s list, which the GPU results record too)."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "shared": True,
        **library_versions(),
    }


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/cpu/run.sh", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="few repetitions (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="many repetitions")
    parser.set_defaults(mode="quick")
    parser.add_argument("--only", default=",".join(PHASES), help=f"phases to run, comma separated ({','.join(PHASES)})")
    parser.add_argument("--rounds", type=int, default=None, help="override every overhead/dLLM round count")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--date", default=dt.date.today().isoformat(), help="the date in the file names")
    parser.add_argument("--workdir", default=None, help="rendered repository and logs (default: a temp folder)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other phases of an existing result file of the same date (rerun a phase that a busy "
        "machine disturbed)",
    )
    parser.add_argument(
        "--rebuild", metavar="JSON", default=None, help="only rewrite the .md and .png beside an existing result JSON"
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}; choose from {PHASES}")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = PLANS[args.mode]
        if args.rounds:
            self.plan = dataclasses.replace(
                self.plan,
                image_64_rounds=args.rounds,
                image_512_rounds=args.rounds,
                video_rounds=args.rounds,
                dllm_rounds=args.rounds,
            )
        out = Path(args.out_dir)
        stem = f"cpu-{args.date}"
        self.files = {kind: out / f"{stem}.{kind}" for kind in ("json", "md", "png")}
        self.results: dict[str, Any] = {
            "schema": report.SCHEMA,
            "date": args.date,
            "mode": args.mode,
            "command": " ".join(["benchmarks/cpu/run.sh", *args.argv]),
            "started_at": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {**machine_info(), "load_start": load_avg()},
            "config": {**dataclasses.asdict(self.plan), "phases": args.phases},
            "files": {k: v.name for k, v in self.files.items()},
            "targets": [],
            "notes": [],
            "phases": {},
        }
        if args.merge and self.files["json"].exists():
            import json

            previous = json.loads(self.files["json"].read_text())
            kept = {k: v for k, v in previous.items() if k in PHASES and k not in args.phases}
            kept_meta = {k: v for k, v in previous.get("phases", {}).items() if k not in args.phases}
            self.results.update(kept)
            self.results["phases"] = kept_meta
            self.results["command"] = f"{previous.get('command', '?')}; then {self.results['command']}"
            self.results["mode"] = previous.get("mode", args.mode)
            self.results["machine"]["load_start"] = previous.get("machine", {}).get("load_start", load_avg())
            self.results["notes"] = [n for n in previous.get("notes", []) if n not in self.results["notes"]]
            # A person's reading of the old numbers no longer holds once a phase is measured again.

    @contextlib.contextmanager
    def phase(self, name: str):
        """Records when a phase ran and the machine's load around it (the machine is shared)."""
        meta = {
            "started_at": dt.datetime.now().isoformat(timespec="seconds"),
            "load_start": load_avg(),
            "command": " ".join(["benchmarks/cpu/run.sh", *self.args.argv]),
        }
        started = time.perf_counter()
        yield
        meta.update(elapsed_s=round(time.perf_counter() - started, 1), load_end=load_avg())
        self.results.setdefault("phases", {})[name] = meta

    def save(self) -> None:
        self.results["notes"] = list(dict.fromkeys(self.results.get("notes", [])))  # a merged run adds them again
        self.results["machine"]["load_end"] = load_avg()
        self.results["finished_at"] = dt.datetime.now().isoformat(timespec="seconds")
        self.results["targets"] = report.evaluate_targets(self.results)
        report.write_json(self.results, self.files["json"])
        if self.results.get("load", {}).get("sweep"):
            report.plot(self.results, self.files["png"])
        self.files["md"].write_text(report.markdown(self.results) + "\n")

    # --- phases ----------------------------------------------------------------------------------------------

    def run(self) -> int:
        from benchmarks.cpu.stack import bench_specs, dllm_available, running_stack, video_available
        from diffusion_runtime.tiny_models import ensure_tiny_models

        phases = self.args.phases
        needs_stack = any(p in phases for p in ("overhead", "dllm", "load"))
        if "encoding" in phases and not needs_stack:
            with self.phase("encoding"):
                self.encoding()
            self.save()
            return 0
        models = ensure_tiny_models()
        video = video_available()
        dllm = dllm_available() and "dllm" in phases
        if not video:
            self.results["notes"].append("No video_generation model in model_repository/: video overhead skipped.")
        if "dllm" in phases and not dllm:
            self.results["notes"].append("No dllm model in model_repository/: the dLLM phase was skipped.")
        workdir = Path(self.args.workdir or tempfile.mkdtemp(prefix="triton-diffusion-bench-"))
        with running_stack(bench_specs(models, video=video, dllm=dllm), workdir) as stack:
            self.results["workdir"] = str(workdir)
            if "overhead" in phases:
                with self.phase("overhead"):
                    self.overhead(stack, video)
                self.save()
            if dllm:
                with self.phase("dllm"):
                    self.dllm(stack)
                self.save()
            if "load" in phases:
                with self.phase("load"):
                    self.load(stack)
                self.save()
        if "encoding" in phases:
            with self.phase("encoding"):
                self.encoding()
        self.save()
        for target in self.results["targets"]:
            print(
                f"[bench] target {target['verdict'].upper()}: {target['name']}: {target['measured']:.3f} "
                f"(95% interval {target['ci95']})"
            )
        print(f"[bench] wrote {', '.join(str(f) for f in self.files.values())}")
        return 0

    def _bare_image(self, stack):
        from benchmarks.cpu.stack import IMAGE
        from benchmarks.paths import BareImage
        from diffusion_runtime.launcher.repository import config_parameters

        if not hasattr(self, "_image_engine"):
            self._image_engine = BareImage(config_parameters(stack.repository / IMAGE))
        return self._image_engine

    def overhead(self, stack, video: bool) -> None:
        from benchmarks.cpu.overhead import compare_paths
        from benchmarks.cpu.stack import IMAGE, SERVED_NAMES, VIDEO
        from benchmarks.paths import BareVideo, Served, TritonImage, TritonVideo
        from benchmarks.workloads import ImageJob, video_job
        from diffusion_runtime.launcher.repository import config_parameters

        plan = self.plan
        bare = self._bare_image(stack)
        triton = TritonImage(stack.triton.grpc_url, bare.limits)
        served = Served(stack.url)
        overhead: dict[str, Any] = {}
        self.results["overhead"] = overhead
        for size, rounds in ((64, plan.image_64_rounds), (512, plan.image_512_rounds)):
            job = ImageJob("A sunset over the ocean", width=size, height=size, steps=4, seed=42, output_format="png")
            calls = {
                "bare": lambda job=job: bare(job),
                "triton": lambda job=job: triton(job, IMAGE),
                "served": lambda job=job: served.image(job, SERVED_NAMES[IMAGE]),
            }
            summary, _ = compare_paths(f"image {size}²", stack, IMAGE, calls, rounds, plan.warmup)
            summary["label"] = f"tiny FLUX {job.label}"
            overhead[f"image_{size}"] = summary
            self.save()
        triton.close()
        if video:
            bare_video = BareVideo(config_parameters(stack.repository / VIDEO))
            triton_video = TritonVideo(stack.triton.grpc_url, bare_video.limits)
            vjob = video_job()
            calls = {
                "bare": lambda: bare_video(vjob),
                "triton": lambda: triton_video(vjob, VIDEO),
                "served": lambda: served.video(vjob, SERVED_NAMES[VIDEO]),
            }
            summary, _ = compare_paths("video", stack, VIDEO, calls, plan.video_rounds, plan.warmup)
            summary["label"] = f"tiny Wan T2V {vjob.label}"
            overhead["video"] = summary
            triton_video.close()
            bare_video.close()
        served.close()

    def dllm(self, stack) -> None:
        from benchmarks.cpu.dllm import text_benchmark
        from benchmarks.cpu.stack import DLLM
        from benchmarks.paths import BareText, Served, TritonText
        from benchmarks.workloads import TextJob
        from diffusion_runtime.launcher.repository import config_parameters

        bare = BareText(config_parameters(stack.repository / DLLM))
        triton = TritonText(stack.triton.grpc_url, bare.limits)
        served = Served(stack.url)
        prompt = "Write a short story about a robot who learns to paint."
        # The request a client gets without settings (256 tokens in blocks of 32, the served defaults) is the
        # target's; a short one (64 in blocks of 16) shows what a request's fixed serving costs weigh.
        jobs = {
            "dllm": TextJob(
                prompt, max_tokens=bare.limits.default_max_tokens, block_length=bare.limits.default_block_length
            ),
            "dllm_short": TextJob(prompt, max_tokens=64, block_length=16),
        }
        try:
            for key, job in jobs.items():
                self.results[key] = text_benchmark(
                    stack, bare, triton, served, job, self.plan.dllm_rounds, self.plan.warmup
                )
                self.save()
        finally:
            triton.close()
            served.close()
            bare.close()

    def load(self, stack) -> None:
        import torch

        from benchmarks.cpu.load import bare_loop, frontend_run, perf_analyzer_run, perf_input_file
        from benchmarks.cpu.stack import (
            IMAGE,
            IMAGE_1T,
            IMAGE_X2,
            IMAGE_X2_T,
            SERVED_NAMES,
            cpu_count,
        )
        from benchmarks.paths import BareImage
        from benchmarks.workloads import image_load_jobs
        from diffusion_runtime.launcher.repository import config_parameters

        plan = self.plan
        jobs = image_load_jobs()
        images_per_request = sum(j.n for j in jobs) / len(jobs)
        bare = self._bare_image(stack)
        load: dict[str, Any] = {
            "mix": "; ".join(j.label for j in jobs),
            "images_per_request": images_per_request,
            "blocks": [],
        }
        self.results["load"] = load
        # Warm every model's instances (the second instances have not run yet).
        for model in (IMAGE, IMAGE_X2, IMAGE_X2_T, IMAGE_1T):
            frontend_run(stack, model, SERVED_NAMES[model], jobs, 2, 4)

        def block(path: str, model: str, kind: str, concurrency: int, total: int | None = None) -> dict[str, Any]:
            if kind == "frontend":
                total = total or max(plan.sweep_requests, 2 * concurrency)
                raw = frontend_run(stack, model, SERVED_NAMES[model], jobs, concurrency, total)
                row = {
                    "images_per_s": raw["images_per_s"],
                    "p50_ms": raw["latency_ms"]["p50"],
                    "p95_ms": raw["latency_ms"]["p95"],
                    "errors": raw["errors"] + int(raw["triton"]["failure"]) + (0 if raw["accounted"] else 1),
                }
            else:
                window = max(plan.perf_window, 2 * concurrency)
                raw = perf_analyzer_run(stack, model, perf_input_file(), concurrency, window, images_per_request)
                row = {
                    "images_per_s": raw.get("images_per_s"),
                    "p50_ms": raw["p50_us"] / 1000 if "p50_us" in raw else None,
                    "p95_ms": raw["p95_us"] / 1000 if "p95_us" in raw else None,
                    "errors": raw.get("errors", 0) + (1 if "error" in raw else 0),
                }
            row.update(
                path=path,
                concurrency=concurrency,
                queue_ms=raw["triton"]["queue_ms_per_request"],
                requests_per_execution=raw["triton"]["requests_per_execution"],
                raw=raw,
            )
            print(
                f"[bench] load {path} c={concurrency}: {_num(row['images_per_s'])} images/s, p50 "
                f"{_num(row['p50_ms'])} ms, queue {row['queue_ms']:.0f} ms, errors {row['errors']}",
                flush=True,
            )
            load["blocks"].append(row)
            return row

        threads = max(1, cpu_count() // 2)
        targets = [
            ("frontend, 1 instance", IMAGE, "frontend"),
            ("frontend, 2 instances", IMAGE_X2, "frontend"),
            (f"frontend, 2 instances x {threads} thread", IMAGE_X2_T, "frontend"),
            ("perf_analyzer, 1 instance", IMAGE, "perf"),
            ("perf_analyzer, 2 instances", IMAGE_X2, "perf"),
            (f"perf_analyzer, 2 instances x {threads} thread", IMAGE_X2_T, "perf"),
        ]
        rng = random.Random(1)

        def side_by_side(label: str, bare_run, path: str, model: str) -> tuple[list[dict], dict[str, Any]]:
            """Bare loop blocks and served blocks at concurrency 4, alternating: the blocks and their ratio."""
            bare_blocks, served_blocks = [], []
            for r in range(plan.target_rounds):
                for which in ("bare", "served") if r % 2 == 0 else ("served", "bare"):
                    if which == "bare":
                        bare_blocks.append(bare_run())
                        print(f"[bench] {label}: {bare_blocks[-1]['images_per_s']:.2f} images/s", flush=True)
                    else:
                        served_blocks.append(block(path, model, "frontend", 4, plan.target_requests))
            bare_rates = [b["images_per_s"] for b in bare_blocks]
            served_rates = [b["images_per_s"] for b in served_blocks]
            comparison = {
                "concurrency": 4,
                "ratio": paired_ratios(served_rates, bare_rates),
                "served_images_per_s": served_rates,
                "bare_images_per_s": bare_rates,
            }
            return bare_blocks, comparison

        # The target first: bare loop and one instance at concurrency 4, alternating, side by side.
        bare_blocks, load["target"] = side_by_side(
            "load bare loop", lambda: bare_loop(bare, jobs, plan.target_requests), "frontend, 1 instance", IMAGE
        )
        load["bare_loop"] = {
            "images_per_s": median([b["images_per_s"] for b in bare_blocks]),
            "n": len(bare_blocks),
            "blocks": bare_blocks,
            "latency_ms": summarize([b["latency_ms"]["p50"] / 1000 for b in bare_blocks], 1000),
        }
        self.save()
        # The control: the same comparison with the engine on one torch thread (bare and served), so that the
        # serving path (frontend, Triton, client) has a core of its own instead of taking CPU from the engine.
        threads_before = torch.get_num_threads()
        bare_one = BareImage(config_parameters(stack.repository / IMAGE_1T))  # sets this process to 1 thread

        def bare_one_thread() -> dict[str, Any]:
            torch.set_num_threads(1)
            try:
                return bare_loop(bare_one, jobs, plan.target_requests)
            finally:
                torch.set_num_threads(threads_before)

        try:
            _, load["control_one_thread"] = side_by_side(
                "load bare loop, 1 thread", bare_one_thread, "frontend, 1 instance x 1 thread", IMAGE_1T
            )
        finally:
            torch.set_num_threads(threads_before)
            bare_one.close()
        self.save()
        for _ in range(plan.sweep_reps):
            for concurrency in LEVELS:
                for path, model, kind in rng.sample(targets, len(targets)):
                    block(path, model, kind, concurrency)
            load["sweep"] = report.sweep_rows([b for b in load["blocks"]])
            self.save()
        load["sweep"] = report.sweep_rows(load["blocks"])
        self.results["notes"].append(
            f"perf_analyzer counts requests; its images/s is requests/s x {images_per_request:g}, the mix's mean "
            "images per request. Its p50/p95 are its own (client-side, gRPC)."
        )

    def encoding(self) -> None:
        from benchmarks.cpu.encoding import image_encoding, video_encoding

        self.results["encoding"] = {"images": image_encoding(self.plan.encode_image_reps)}
        self.save()
        self.results["encoding"]["videos"] = video_encoding(
            self.plan.encode_video_reps, contents=self.plan.video_contents
        )


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def rebuild(path: Path) -> None:
    """Regenerate the markdown and the plot from a result JSON (after the report code changed)."""
    import json

    results = json.loads(path.read_text())
    results["files"] = {k: path.with_suffix(f".{k}").name for k in ("json", "md", "png")}
    results["targets"] = report.evaluate_targets(results)
    results["notes"] = list(dict.fromkeys(results.get("notes", [])))
    report.write_json(results, path)
    if results.get("load", {}).get("sweep"):
        report.plot(results, path.with_suffix(".png"))
    path.with_suffix(".md").write_text(report.markdown(results) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rebuild:
        rebuild(Path(args.rebuild))
        return 0
    bench = Bench(args)
    started = time.perf_counter()
    try:
        return bench.run()
    finally:
        bench.results["elapsed_s"] = round(time.perf_counter() - started, 1)
        bench.save()


if __name__ == "__main__":
    sys.exit(main())
