"""dLLM: tokens/s and time to the first decoded block — the bare decoder in this process, Triton alone (gRPC
stream), and served by ``/v1/completions`` streamed and not — in interleaved rounds, same text on every path."""

from __future__ import annotations

from typing import Any

from benchmarks.cpu.overhead import compare_paths
from benchmarks.cpu.stack import DLLM, SERVED_NAMES, Stack
from benchmarks.paths import BareText, Call, Served, TritonText
from benchmarks.stats import paired_ratios, summarize
from benchmarks.workloads import TextJob

PATHS = ("bare", "triton", "served", "served_stream")


def text_benchmark(
    stack: Stack, bare: BareText, triton: TritonText, served: Served, job: TextJob, rounds: int, warmup: int
) -> dict[str, Any]:
    name = SERVED_NAMES[DLLM]
    calls = {
        "bare": lambda: bare(job),
        "triton": lambda: triton(job, DLLM),
        "served": lambda: served.text(job, name),
        "served_stream": lambda: served.text_stream(job, name),
    }
    pairs = tuple((f"{p}_minus_bare", p, "bare") for p in PATHS[1:]) + (
        ("served_minus_triton", "served", "triton"),
        ("served_stream_minus_triton", "served_stream", "triton"),
    )
    summary, records = compare_paths("dllm", stack, DLLM, calls, rounds, warmup, pairs)

    def tokens_per_s(calls_: list[Call]) -> list[float]:
        return [(c.tokens or 0) / c.wall_s for c in calls_]

    summary["job"] = {"max_tokens": job.max_tokens, "block_length": job.block_length, "temperature": job.temperature}
    summary["tokens"] = records["bare"][0].tokens
    for path in PATHS:
        summary[path]["tokens_per_s"] = summarize(tokens_per_s(records[path]))
        firsts = [c.first_s for c in records[path] if c.first_s is not None]
        if firsts:
            summary[path]["first_block"] = summarize(firsts, 1000)
    summary["tokens_per_s_ratio_vs_bare"] = {
        path: paired_ratios(tokens_per_s(records[path]), tokens_per_s(records["bare"])) for path in PATHS[1:]
    }
    return summary
