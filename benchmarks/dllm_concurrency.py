"""dLLM tokens/s at concurrency 8 against concurrency 1, through the served stack (tritonserver + OpenAI frontend).

``python -m benchmarks.dllm_concurrency`` serves a dLLM (the tiny masked LM built locally unless ``--model`` names a
checkpoint folder), then, in interleaved rounds, sends ``--requests`` non-streamed ``/v1/completions`` at each
concurrency (1, then 8, then 1 again, ...) and counts the completion tokens that came back per second of wall time.
The dllm model is served with ``max_running_requests`` set to the highest concurrency, so it decodes the requests in
flight together (one batched forward per refinement step) and tokens/s should grow with concurrency; the goal on a
GPU is at least 4x at concurrency 8 (``--max-running-requests 1`` measures the one-at-a-time default instead).
With ``--bare``, each level is also run against the bare engine: the project's text engine class (for ``sglang``,
the thin adapter over ``sglang.Engine``) loaded in this process with the same parameters and driven by the same
requests from the same number of threads; served and bare levels alternate, and the table adds served/bare
tokens/s per concurrency (the goal: at least 0.97). Each level is warmed up first with one wave of requests (what
compiles kernels for its batch size). Prints a table and writes ``benchmarks/results/dllm-concurrency-<cpu|gpu>-
<date>.json``, rewritten after every round (``rounds_done``), so a run stopped at a time limit keeps its finished
rounds; with ``--deadline SECONDS`` a round that would end later (judged by the last one) is not started
(``stopped_early`` says why).

On a GPU host (every visible GPU unless ``--gpus``; one instance per GPU)::

    python -m benchmarks.dllm_concurrency --gpus 0 --model /models/LLaDA-8B-Instruct --mask-token-id 126336 \\
        --engine transformers --max-tokens 128 --block-length 32 --rounds 5
    python -m benchmarks.dllm_concurrency --gpus 0 --model /models/LLaDA2.0-mini --engine sglang --bare \\
        --sglang-args '{"attention_backend": "triton", "mem_fraction_static": 0.4}'
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from benchmarks.prometheus import metric_sum, parse_prometheus
from benchmarks.report import markdown_table, write_json
from benchmarks.stats import paired_ratios, summarize
from diffusion_runtime.launcher.processes import Frontend
from diffusion_runtime.launcher.repository import ModelSpec, served_parameters
from scripts.gpu.host import describe_device, git_commit, library_versions
from scripts.gpu.served_stack import start_frontend, start_triton

ROOT = Path(__file__).resolve().parents[1]
SERVED_NAME = "dllm-bench"
PROMPTS = (
    "Tell me a story about a lighthouse keeper.",
    "Explain how a masked diffusion language model writes an answer.",
    "List three reasons to learn a second language.",
    "Describe the water cycle to a child.",
)


@dataclass(frozen=True)
class Level:
    """One measurement: ``requests`` completions sent by ``concurrency`` clients."""

    concurrency: int
    wall_s: float
    tokens: int
    latencies_s: list[float]
    engine_s: float | None = None  # served: seconds the model spent in its engine call over these requests

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def completion_body(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """The request for one completion: fixed length (no stop), prompts and seeds varied so answers differ."""
    return {
        "model": SERVED_NAME,
        "prompt": PROMPTS[index % len(PROMPTS)],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": index,
        "block_length": args.block_length,
        "steps": args.steps or args.max_tokens,
    }


Complete = Callable[[int], int]
"""Send completion ``index`` and return its completion tokens (one client's call, served or bare)."""
Connect = Callable[[], AbstractContextManager[Complete]]
"""Open one client (a thread's connection) for the duration of a level."""


class Side(NamedTuple):
    """What the rounds measure: the served stack or the bare engine."""

    name: str
    connect: Connect
    rounds: dict[int, list[Level]]
    engine_seconds: Callable[[], float] | None = None  # the model's cumulative seconds in its engine call


def served_engine_seconds(metrics_url: str) -> Callable[[], float]:
    """The served model's ``diffusion_seconds_total{phase="denoise"}`` (its engine call, from the request reaching
    the model to its last token), read from Triton's /metrics: a level's growth over its requests, against their
    latency, splits what the engine took from what the frontend and Triton add."""

    def read() -> float:
        text = httpx.get(metrics_url, timeout=30).text
        return metric_sum(parse_prometheus(text), "diffusion_seconds_total", phase="denoise")

    return read


def served_completion(url: str, args: argparse.Namespace) -> Connect:
    """A client of the served stack: one HTTP connection per client thread."""

    @contextmanager
    def client() -> Iterator[Complete]:
        with httpx.Client(timeout=args.request_timeout) as http:

            def complete(index: int) -> int:
                response = http.post(f"{url}/v1/completions", json=completion_body(args, index))
                response.raise_for_status()
                return response.json()["usage"]["completion_tokens"]

            yield complete

    return client


def bare_completion(engine: Any, limits: Any, args: argparse.Namespace) -> Connect:
    """A client of the bare engine: the same request, validated as the model validates it, decoded in this process."""
    from diffusion_runtime.params.text import validate_text_params

    @contextmanager
    def client() -> Iterator[Complete]:
        def complete(index: int) -> int:
            body = {k: v for k, v in completion_body(args, index).items() if k != "model"}
            deltas = list(engine.generate(validate_text_params(limits, **body), lambda done, total: None))
            return deltas[-1].completion_tokens

        yield complete

    return client


def run_level(connect: Connect, args: argparse.Namespace, concurrency: int, count: int | None = None) -> Level:
    """``count`` completions (default ``args.requests``, at least two per client) from ``concurrency`` client
    threads."""
    count = count or max(args.requests, 2 * concurrency)
    next_index = iter(range(count))
    lock = threading.Lock()
    latencies: list[float] = []
    tokens = 0

    def client() -> None:
        nonlocal tokens
        with connect() as complete:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                start = time.perf_counter()
                used = complete(index)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    tokens += used

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return Level(concurrency, time.perf_counter() - start, tokens, latencies)


def model_parameters(args: argparse.Namespace) -> dict[str, str]:
    """The dllm model's parameters, for the served model and the bare engine alike."""
    parameters = {
        "model_path": str(args.model),
        "served_model_name": SERVED_NAME,
        "engine": args.engine,
        "max_running_requests": str(args.max_running_requests or max(args.concurrency)),
        "max_tokens": str(max(4096, args.max_tokens)),
    }
    if args.cpu_threads:
        parameters["cpu_threads"] = str(args.cpu_threads)
    if args.mask_token_id is not None:
        parameters["mask_token_id"] = str(args.mask_token_id)
    if args.sglang_args:
        parameters["sglang_args"] = args.sglang_args
    return parameters


@contextmanager
def bare_dllm(args: argparse.Namespace) -> Iterator[Connect | None]:
    """The bare engine with the served model's parameters (None without ``--bare``), on the first GPU given."""
    if not args.bare:
        yield None
        return
    from diffusion_runtime.dllm import TextEngineConfig, create_text_engine
    from diffusion_runtime.params.text import TextLimits

    parameters = served_parameters("dllm", model_parameters(args))
    device = f"cuda:{args.gpu_list[0]}" if args.gpu_list else "cpu"
    engine = create_text_engine(TextEngineConfig.from_parameters(parameters, device))
    try:
        yield bare_completion(engine, TextLimits.from_parameters(parameters), args)
    finally:
        engine.close()


@contextmanager
def served_dllm(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[Frontend, str]]:
    """tritonserver with the dllm model alone, and the frontend over it (with Triton's metrics URL)."""
    parameters = model_parameters(args)
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(workdir / "hf")}
    triton = start_triton([ModelSpec("dllm", parameters)], args.gpu_list, workdir, env)
    frontend = None
    try:
        frontend = start_frontend(triton, workdir, env, load_timeout=args.load_timeout)
        yield frontend, triton.metrics_url
    finally:
        if frontend is not None:
            frontend.stop()
        triton.stop()


def measure_rounds(
    args: argparse.Namespace,
    sides: list[Side],
    checkpoint: Callable[[int, str | None], None],
    seconds_left: Callable[[], float],
) -> None:
    """Interleaved rounds: concurrency levels in alternating order, and the sides alternating first. After each
    round, ``checkpoint(rounds_done, None)`` (a run stopped later keeps it); a round that would not end within
    ``seconds_left()`` (judged by the last one) is not started: ``checkpoint(rounds_done, why)``."""
    last_round_s = 0.0
    for round_index in range(args.rounds):
        left = seconds_left() if round_index else float("inf")
        if last_round_s > left:
            checkpoint(round_index, f"out of time: a round takes {last_round_s:.0f} s, {left:.0f} s left")
            return
        started = time.perf_counter()
        order = args.concurrency if round_index % 2 == 0 else args.concurrency[::-1]
        for concurrency in order:
            for side in sides if round_index % 2 == 0 else sides[::-1]:
                engine_clock = side.engine_seconds
                engine_before = engine_clock() if engine_clock else 0.0
                level = run_level(side.connect, args, concurrency)
                if engine_clock:
                    level = replace(level, engine_s=engine_clock() - engine_before)
                side.rounds[concurrency].append(level)
                print(
                    f"[dllm-concurrency] round {round_index + 1}/{args.rounds} {side.name} concurrency {concurrency}: "
                    f"{level.tokens_per_s:.1f} tokens/s",
                    flush=True,
                )
        last_round_s = time.perf_counter() - started
        checkpoint(round_index + 1, None)


def summary(args: argparse.Namespace, rounds: dict[int, list[Level]], bare_rounds: dict[int, list[Level]]) -> dict:
    """Tokens/s and latencies per concurrency over the rounds done, their ratios to concurrency 1 and to bare."""
    base = args.concurrency[0]
    done = [c for c, runs in rounds.items() if runs]
    levels = {
        str(c): {
            "tokens_per_s": summarize([level.tokens_per_s for level in rounds[c]]),
            "latency_ms": summarize([s for level in rounds[c] for s in level.latencies_s], 1000),
            "requests_per_round": len(rounds[c][0].latencies_s),
            "tokens_per_round": [level.tokens for level in rounds[c]],
        }
        for c in done
    }
    for c in done:
        engine = [level.engine_s / len(level.latencies_s) for level in rounds[c] if level.engine_s is not None]
        if engine:  # what the model's engine call took per request, beside the latency the client saw
            levels[str(c)]["engine_ms_per_request"] = summarize(engine, 1000)
    ratios = {
        str(c): paired_ratios([r.tokens_per_s for r in rounds[c]], [r.tokens_per_s for r in rounds[base]])
        for c in args.concurrency[1:]
        if c in done
    }
    results: dict[str, Any] = {"levels": levels, "tokens_per_s_ratio_vs_concurrency_1": ratios}
    if args.bare:
        results["bare_tokens_per_s"] = {
            str(c): summarize([level.tokens_per_s for level in bare_rounds[c]]) for c in done
        }
        results["bare_latency_ms"] = {
            str(c): summarize([s for level in bare_rounds[c] for s in level.latencies_s], 1000) for c in done
        }
        results["served_over_bare"] = {
            str(c): paired_ratios([r.tokens_per_s for r in rounds[c]], [r.tokens_per_s for r in bare_rounds[c]])
            for c in done
        }
    return results


def measure(args: argparse.Namespace, record: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Serve (and with ``--bare`` load bare), warm each level up with one wave of requests, then the rounds; the
    results so far go to ``record`` after each round."""
    workdir = Path(args.work or tempfile.mkdtemp(prefix="dllm-concurrency-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rounds: dict[int, list[Level]] = {c: [] for c in args.concurrency}
    bare_rounds: dict[int, list[Level]] = {c: [] for c in args.concurrency}
    started = time.perf_counter()
    progress_state: dict[str, Any] = {"rounds_done": 0, "stopped_early": None}

    def progress(what: str) -> None:  # a run stopped at a time limit still shows how far it got
        print(f"[dllm-concurrency] {what} after {time.perf_counter() - started:.0f} s", flush=True)

    def seconds_left() -> float:
        return args.deadline - (time.perf_counter() - started) if args.deadline else float("inf")

    def results() -> dict[str, Any]:
        return {**summary(args, rounds, bare_rounds), **progress_state, "workdir": str(workdir)}

    def checkpoint(rounds_done: int, stopped_early: str | None) -> None:
        progress_state.update(rounds_done=rounds_done, stopped_early=stopped_early)
        if stopped_early:
            progress(stopped_early)
        record(results())

    with served_dllm(args, workdir) as (frontend, metrics_url):
        progress("served stack ready")
        with bare_dllm(args) as bare:
            sides = [Side("served", served_completion(frontend.url, args), rounds, served_engine_seconds(metrics_url))]
            if bare is not None:
                progress("bare engine loaded")
                sides.append(Side("bare", bare, bare_rounds))
            for concurrency in args.concurrency:  # warm-up, not recorded: one wave compiles what the level runs
                for side in sides:
                    run_level(side.connect, args, concurrency, count=concurrency)
                    progress(f"warm-up {side.name} concurrency {concurrency}")
            measure_rounds(args, sides, checkpoint, seconds_left)
    return results()


def table(results: dict[str, Any]) -> str:
    def interval(ratio: dict[str, Any]) -> str:
        return f"{ratio['median']:.2f}x [{ratio['ci95'][0]:.2f}, {ratio['ci95'][1]:.2f}]"

    bare = results.get("served_over_bare")
    rows = []
    for c, level in results["levels"].items():
        ratio = results["tokens_per_s_ratio_vs_concurrency_1"].get(c)
        row = [
            c,
            f"{level['tokens_per_s']['median']:.1f}",
            f"{level['latency_ms']['p50']:.0f}",
            f"{level['latency_ms']['p95']:.0f}",
            interval(ratio) if ratio else "1x",
        ]
        if bare:
            row += [f"{results['bare_tokens_per_s'][c]['median']:.1f}", interval(bare[c])]
        rows.append(row)
    header = ["concurrency", "tokens/s (median)", "latency p50 ms", "latency p95 ms", "tokens/s vs concurrency 1"]
    if bare:
        header += ["bare tokens/s", "served/bare"]
    return markdown_table(rows, header)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dllm_concurrency", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a dLLM folder (default: the tiny model)")
    parser.add_argument("--engine", default="transformers", help="transformers, sglang or auto")
    parser.add_argument("--mask-token-id", type=int, default=None, help="when the tokenizer has no mask token")
    parser.add_argument("--gpus", default="", help="GPU indices, comma separated (default: none, the CPU)")
    parser.add_argument("--concurrency", default="1,8", help="levels, the first is the baseline")
    parser.add_argument("--requests", type=int, default=16, help="completions per level and round")
    parser.add_argument(
        "--max-running-requests",
        type=int,
        default=0,
        help="the model's max_running_requests (default: the highest concurrency; 1: one request at a time)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--deadline", type=float, default=0, help="seconds the run may take: no round is started that would end later"
    )
    parser.add_argument("--bare", action="store_true", help="also run the engine bare in this process, interleaved")
    parser.add_argument("--sglang-args", default="", help="JSON object of further sglang.Engine kwargs (sglang_args)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=0, help="refinement steps per answer (0: one per token)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads on a CPU (0: one per core)")
    parser.add_argument("--load-timeout", type=float, default=1800)
    parser.add_argument("--request-timeout", type=float, default=600)
    parser.add_argument("--work", default=None, help="rendered repository and logs (default: a temp folder)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--date", default=dt.date.today().isoformat())
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.gpu_list = [int(g) for g in args.gpus.split(",") if g.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.model is None:
        from diffusion_runtime.tiny_models import ensure_tiny_models

        args.model = ensure_tiny_models()["tiny-llada"]
    started = dt.datetime.now().isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    device = "gpu" if args.gpu_list else "cpu"
    path = args.out_dir / f"dllm-concurrency-{device}-{args.date}.json"

    header = {
        "benchmark": "dllm_concurrency",
        "date": args.date,
        "started_at": started,
        "command": "python -m benchmarks.dllm_concurrency " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out_dir", "work")
        },
    }
    machine = {"cpus": os.cpu_count(), "device": describe_device() if args.gpu_list else "cpu", **library_versions()}

    def record(results: dict[str, Any]) -> None:
        """The whole record, rewritten after each round: a run stopped at a time limit keeps its finished rounds."""
        finished = dt.datetime.now().isoformat(timespec="seconds")
        load = {"load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()]}
        write_json({**header, "finished_at": finished, "machine": {**machine, **load}, **results}, path)

    results = measure(args, record)
    record(results)
    print(table(results))
    print(f"[dllm-concurrency] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
