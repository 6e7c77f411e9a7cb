"""The CPU benchmark's result files: the JSON (everything measured), the markdown section, and the
latency/throughput plot. Tables, numbers and goals are written as every benchmark writes them
(``benchmarks.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import report as shared
from benchmarks.report import VERDICT_RULE, judge, markdown_table, number, targets_table
from benchmarks.stats import median

SCHEMA = "triton-diffusion-bench/1"
REQUIRED_KEYS = ("schema", "date", "mode", "machine", "config", "targets")


def write_json(results: dict[str, Any], path: Path) -> None:
    """The result JSON, indented by two as the committed CPU results are (a rebuilt file diffs cleanly)."""
    shared.write_json(results, path, indent=2)


def check_shape(results: dict[str, Any]) -> list[str]:
    """Problems with a result document's shape (empty when it is well formed)."""
    problems = [f"missing key {key!r}" for key in REQUIRED_KEYS if key not in results]
    if results.get("schema") != SCHEMA:
        problems.append(f"schema is {results.get('schema')!r}, expected {SCHEMA!r}")
    for target in results.get("targets", []):
        for key in ("name", "goal", "measured", "met"):
            if key not in target:
                problems.append(f"target {target.get('name', '?')} lacks {key!r}")
    for row in results.get("load", {}).get("sweep", []):
        for key in ("path", "concurrency", "images_per_s", "p50_ms", "p95_ms", "errors"):
            if key not in row:
                problems.append(f"load row lacks {key!r}: {row}")
    return problems


# --- targets -------------------------------------------------------------------------------------------------


def _target(
    name: str, goal: float, measured: float, ci95: list[float] | None, unit: str, *, higher_is_better: bool, detail: Any
) -> dict[str, Any]:
    return {
        "name": name,
        **judge(goal, measured, ci95, higher_is_better=higher_is_better),
        "unit": unit,
        "detail": detail,
    }


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    image = results.get("overhead", {}).get("image_64")
    if image:
        diff = image["differences_ms"]["served_minus_bare"]
        other = diff["other"]
        detail = {
            "non_denoise_paired_median_ms": other["median_of_differences"],
            "non_denoise_ci95_ms": other["ci95"],
            "end_to_end_p50_difference_ms": diff["wall"]["difference_of_medians"],
            "end_to_end_paired_median_ms": diff["wall"]["median_of_differences"],
            "end_to_end_ci95_ms": diff["wall"]["ci95"],
            "served_denoise_time_ratio_vs_bare": image["gen_ratio_vs_bare"]["served"]["median"],
            "triton_share_ms": image["differences_ms"]["triton_minus_bare"]["other"]["median_of_differences"],
            "frontend_share_ms": image["differences_ms"]["served_minus_triton"]["other"]["median_of_differences"],
        }
        targets.append(
            _target(
                "images: served adds <= 5 ms p50 over bare at 64²",
                5.0,
                other["median_of_differences"],
                other["ci95"],
                "ms",
                higher_is_better=False,
                detail=detail,
            )
        )
    target = results.get("load", {}).get("target")
    if target and target.get("ratio", {}).get("n"):
        ratio = target["ratio"]
        name = "images: one instance at concurrency 4, served images/s >= 0.95 x bare loop"
        targets.append(
            _target(name, 0.95, ratio["median"], ratio.get("ci95"), "x", higher_is_better=True, detail=ratio)
        )
    dllm = results.get("dllm")
    if dllm and "tokens_per_s_ratio_vs_bare" in dllm:
        for path in ("served", "served_stream"):
            ratio = dllm["tokens_per_s_ratio_vs_bare"][path]
            how = "streaming" if path.endswith("stream") else "not streaming"
            name = f"dLLM: served tokens/s >= 0.97 x bare ({dllm['job']['max_tokens']} tokens, {how})"
            targets.append(
                _target(name, 0.97, ratio["median"], ratio.get("ci95"), "x", higher_is_better=True, detail=ratio)
            )
    return targets


# --- markdown ------------------------------------------------------------------------------------------------


def _ci(d: dict[str, Any]) -> str:
    low, high = d["ci95"]
    return f"{d['median_of_differences']:+.1f} [{low:+.1f}, {high:+.1f}]"


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    out = [
        "## Performance (CPU)",
        "",
        f"Measured {results['date']} with `{results['command']}` ({results['mode']} run) on the project's CPU "
        f"machine: {machine['cpus']} cores, {machine['platform']}, Python {machine['python']}, torch "
        f"{machine.get('torch', '?')}, diffusers {machine.get('diffusers', '?')}. **The machine was shared** with "
        f"other work during the run (load average {machine['load_start']} at the start, {machine['load_end']} at "
        f"the end, for {machine['cpus']} cores), so absolute times are noisy and inflated; every comparison below "
        "comes from runs interleaved side by side, and ratios and paired differences are what to read. Tiny, randomly "
        "initialised models (diffusers engine, float32); the raw numbers are in "
        f"`{Path(results['files']['json']).name}`.",
        "",
    ]
    phases = results.get("phases", {})
    if phases:
        rows = [
            [
                name,
                meta.get("started_at", "?"),
                number(meta.get("elapsed_s"), 0),
                meta.get("load_start"),
                meta.get("load_end"),
            ]
            for name, meta in phases.items()
        ]
        out += [
            "When each phase ran, and the machine's load average (1, 5, 15 min) before and after it:",
            "",
            markdown_table(rows, ["phase", "started", "seconds", "load before", "load after"]),
            "",
        ]
    if results.get("targets"):
        out += ["### Targets", "", targets_table(results["targets"]), "", VERDICT_RULE, ""]
        image = next((t for t in results["targets"] if t["name"].startswith("images: served adds")), None)
        if image:
            d = image["detail"]
            out += [
                f"The 64² figure is the serving overhead measured without the denoising's own noise: per call, wall "
                f'time minus the denoising time (the model\'s `diffusion_seconds_total{{phase="denoise"}}` moves by '
                f"exactly that call's), served minus bare, median of paired rounds "
                f"(95% CI {number(d['non_denoise_ci95_ms'][0])} to {number(d['non_denoise_ci95_ms'][1])} ms): "
                f"Triton's share "
                f"{number(d['triton_share_ms'])} ms, the frontend's {number(d['frontend_share_ms'])} ms. The plain "
                f"end-to-end p50 difference was {number(d['end_to_end_p50_difference_ms'])} ms (paired median "
                f"{number(d['end_to_end_paired_median_ms'])} ms, CI {number(d['end_to_end_ci95_ms'][0])} to "
                f"{number(d['end_to_end_ci95_ms'][1])} ms), and the denoising itself ran "
                f"{number(d['served_denoise_time_ratio_vs_bare'], 3)}x as long inside the Triton stub as in-process.",
                "",
            ]
        load = results.get("load", {})
        control = load.get("control_one_thread", {}).get("ratio", {})
        target = load.get("target", {}).get("ratio", {})
        if control.get("n") and target.get("n"):

            def denoise_ms(path: str) -> str:
                rows = [b["raw"]["triton"] for b in load["blocks"] if b["path"] == path and b["concurrency"] == 4]
                per = [t["denoise_s"] / t["success"] * 1000 for t in rows if t.get("success")]
                return number(median(per)) if per else "–"

            images_per_request = load.get("images_per_request", 1)

            def bare_ms(rates: list[float]) -> str:
                return number(1000 * images_per_request / median(rates)) if rates else "–"

            out += [
                "The concurrency-4 figure is served images/s over the bare loop's, blocks alternating: median of "
                f"{target['n']} per-pair ratios {number(target['median'], 3)} (range {number(target['min'], 2)} to "
                f"{number(target['max'], 2)}; ratio of the medians {number(target['ratio_of_medians'], 3)}). "
                "The control "
                "runs the same comparison with the engine on one torch thread, bare and served, which leaves the "
                f"serving path a core: served/bare {number(control['median'], 3)} (median of {control['n']} pairs). "
                "The model's own denoising per request at concurrency 4 was "
                f"{denoise_ms('frontend, 1 instance')} ms (two threads) and "
                f"{denoise_ms('frontend, 1 instance x 1 thread')} ms (one thread), against "
                f"{bare_ms(load['target']['bare_images_per_s'])} and "
                f"{bare_ms(load['control_one_thread']['bare_images_per_s'])} ms for a whole request "
                "(denoising and encoding) in the bare loops.",
                "",
            ]
    overhead = results.get("overhead", {})
    if overhead:
        out += [
            "### Overhead: bare engine vs Triton alone vs served",
            "",
            "Bare: the engine in-process plus the encoder (`create_image_engine`/`create_video_engine` + "
            "`encode_image`/`encode_mp4`). Triton: `tritonclient.grpc` with the frontend's own tensors. Served: "
            "HTTP to the OpenAI frontend (`b64_json`; videos through the blocking `POST /v1/videos`). Same model, "
            "size, steps, seed and format on every path, and the same bytes out (checked on every call). "
            "Milliseconds; differences are `paired median [95% CI]`.",
            "",
        ]
        rows = []
        for key, item in overhead.items():
            d = item["differences_ms"]
            rows.append(
                [
                    item.get("label", key),
                    item["rounds"],
                    f"{number(item['bare']['wall']['p50'])} / {number(item['bare']['wall']['p95'])}",
                    f"{number(item['triton']['wall']['p50'])} / {number(item['triton']['wall']['p95'])}",
                    f"{number(item['served']['wall']['p50'])} / {number(item['served']['wall']['p95'])}",
                    number(d["served_minus_bare"]["wall"]["difference_of_medians"]),
                    _ci(d["served_minus_bare"]["other"]),
                    _ci(d["triton_minus_bare"]["other"]),
                    _ci(d["served_minus_triton"]["other"]),
                    number(item["gen_ratio_vs_bare"]["served"]["median"], 3),
                ]
            )
        out += [
            markdown_table(
                rows,
                [
                    "workload",
                    "rounds",
                    "bare p50 / p95",
                    "Triton p50 / p95",
                    "served p50 / p95",
                    "served − bare, p50",
                    "served − bare, non-denoise",
                    "Triton's share",
                    "frontend's share",
                    "denoise time served/bare",
                ],
            ),
            "",
        ]
        rows = []
        for key, item in overhead.items():
            for path in ("triton", "served"):
                p = item[path]
                rows.append(
                    [
                        item.get("label", key),
                        path,
                        number(p["gen"]["p50"]),
                        number(p["in_model_not_denoise"]["p50"]),
                        number(p["outside_model"]["p50"]),
                        number(p["queue"]["p50"], 2),
                    ]
                )
            if "encode" in item["bare"]:
                rows.append(
                    [
                        item.get("label", key),
                        "bare",
                        number(item["bare"]["gen"]["p50"]),
                        number(item["bare"]["encode"]["p50"]),
                        "–",
                        "–",
                    ]
                )
        out += [
            "Where the time goes (p50, ms): denoising; the rest of the model's `execute` (encoding and tensors; for "
            "the decoupled video model `execute` ends before the MP4 is encoded on its worker thread, so encoding "
            "counts as outside); everything outside the model (gRPC, Triton's core, the frontend, HTTP); Triton "
            "queue time.",
            "",
            markdown_table(
                rows, ["workload", "path", "denoise", "in model, not denoise", "outside the model", "queue"]
            ),
            "",
        ]
    load = results.get("load", {})
    if load.get("sweep"):
        out += [
            "### Load: throughput and latency against concurrency",
            "",
            f"Request mix: the entries of `benchmarks/perf_inputs/image_diffusion_64.json` in turn "
            f"({load.get('mix', '')}), through the frontend (the benchmark's own async client, aiohttp, closed loop, "
            "`b64_json`) and through Triton alone (`perf_analyzer`, gRPC, the same input file), against the model "
            "with one instance and with two (`instances_per_gpu=2`: two CPU instances), each two either with "
            "torch's default threads (one per core, so the two oversubscribe the cores) or with `cpu_threads` "
            "splitting the cores between them. Bare loop: the engine and encoder back to back in-process, "
            f"{number(load['bare_loop']['images_per_s'], 2)} images/s (median of {load['bare_loop']['n']} blocks). "
            "Throughput counts from the first completion to the last (the start-up of a short block left out); "
            "latency is per request, as the client saw it. Queue: Triton's queue time per request (mean). "
            "req/execute: requests the dynamic batcher handed one `execute` call. Errors: failed requests "
            "(client statuses, Triton's failure counter) plus any answer Triton did not count.",
            "",
        ]
        rows = [
            [
                r["path"],
                r["concurrency"],
                number(r["images_per_s"], 2),
                number(r["p50_ms"], 0),
                number(r["p95_ms"], 0),
                number(r.get("queue_ms"), 0),
                number(r.get("requests_per_execution"), 2),
                r["errors"],
                r.get("n", 1),
            ]
            for r in load["sweep"]
        ]
        out += [
            markdown_table(
                rows,
                ["path", "concurrency", "images/s", "p50 ms", "p95 ms", "queue ms", "req/execute", "errors", "runs"],
            ),
            "",
        ]
        cpu = serving_cpu_summary(load)
        if cpu:
            out += [
                "CPU the serving path spent per request beside the model (frontend, one instance, concurrency 4, "
                f"median of {cpu['n']} blocks): frontend {number(cpu['frontend'])} ms, tritonserver "
                f"{number(cpu['tritonserver'])} ms, the benchmark's own HTTP client {number(cpu['client'])} ms, "
                f"against {number(load['bare_loop'].get('latency_ms', {}).get('p50'), 0)} ms of engine time per "
                "request (bare) on "
                f"{results['machine']['cpus']} cores that the engine otherwise has to itself.",
                "",
            ]
        out += [
            f"![latency and throughput against concurrency]({Path(results['files']['png']).name})",
            "",
        ]
    encoding = results.get("encoding", {})
    if encoding:
        out += [
            "### Encoding, as a fraction of the generation it follows",
            "",
            "This machine's CPU, `diffusion_runtime.media` encoders; generation times are measured on an H100 "
            "(FLUX.1-dev 1024² 28 steps 5.28 s; 512² scaled by tokens, an estimate; Wan2.1-1.3B "
            "832×480×81 50 steps ≈ 65 s; 33 frames scaled by latent frames, an estimate). Photo: a photograph "
            "(frames pan across it); noise: uniform noise, the worst case and what random-weight models produce.",
            "",
        ]
        rows = []
        for r in encoding.get("images", []):
            rows.append(
                [
                    f"{r['size']}²",
                    r["content"],
                    r["format"],
                    number(r["encode_ms"]["p50"]),
                    number(r["encode_ms"]["p95"]),
                    f"{r['bytes'] / 1024:.0f}",
                    f"{100 * r['fraction_of_generation']:.1f}%",
                ]
            )
        for r in encoding.get("videos", []):
            rows.append(
                [
                    f"{r['size']}×{r['frames']}",
                    r["content"],
                    "mp4",
                    number(r["encode_ms"]["p50"], 0),
                    number(r["encode_ms"]["p95"], 0),
                    f"{r['bytes'] / 1024:.0f}",
                    f"{100 * r['fraction_of_generation']:.1f}%",
                ]
            )
        out += [
            markdown_table(rows, ["size", "content", "format", "p50 ms", "p95 ms", "KiB", "of H100 generation"]),
            "",
        ]
    runs = [results[key] for key in ("dllm", "dllm_short") if results.get(key)]
    if runs:
        out += [
            "### dLLM: tokens/s and time to the first block",
            "",
            "tiny-llada (transformers engine, the project's block decoder), temperature 0; the served defaults "
            "(the target's request) and a short request; same text on every path. Ratios are per round against "
            "the bare decoder run beside it.",
            "",
        ]
        rows = []
        for dllm in runs:
            request = f"{dllm['job']['max_tokens']} tokens, blocks of {dllm['job']['block_length']}"
            for path in ("bare", "triton", "served", "served_stream"):
                p = dllm[path]
                ratio = dllm["tokens_per_s_ratio_vs_bare"].get(path, {}) if path != "bare" else {}
                rows.append(
                    [
                        request,
                        path.replace("_", " "),
                        number(p["tokens_per_s"]["p50"], 1),
                        number(ratio.get("median"), 3) if ratio else "1",
                        number(p.get("first_block", {}).get("p50")),
                        number(p["wall"]["p50"]),
                        number(p["wall"]["p95"]),
                    ]
                )
        out += [
            markdown_table(
                rows, ["request", "path", "tokens/s p50", "vs bare", "first block p50 ms", "p50 ms", "p95 ms"]
            ),
            "",
        ]
    if results.get("notes"):
        out += ["### Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if results.get("analysis"):
        # Written by a person after looking at this run's numbers (kept in the JSON so --rebuild keeps it).
        out += ["### What the numbers say", ""] + [f"{paragraph}\n" for paragraph in results["analysis"]]
    return "\n".join(out)


def serving_cpu_summary(load: dict[str, Any]) -> dict[str, float] | None:
    """Median serving CPU per request over the one-instance, concurrency-4 frontend blocks."""
    blocks = [
        b["raw"]["cpu_ms_per_request"]
        for b in load.get("blocks", [])
        if b.get("path") == "frontend, 1 instance"
        and b.get("concurrency") == 4
        and "cpu_ms_per_request" in b.get("raw", {})
    ]
    if not blocks:
        return None
    return {"n": len(blocks), **{k: median([b[k] for b in blocks]) for k in ("frontend", "tritonserver", "client")}}


# --- plot ----------------------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results.get("load", {}).get("sweep", [])
    fig, (ax_lat, ax_tput) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r["path"] for r in sweep):
        rows = sorted((r for r in sweep if r["path"] == name), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        (line,) = ax_lat.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=f"{name} p50")
        ax_lat.plot(xs, [r["p95_ms"] for r in rows], linestyle="--", color=line.get_color(), alpha=0.6)
        ax_tput.plot(xs, [r["images_per_s"] for r in rows], marker="o", color=line.get_color(), label=name)
    bare = results.get("load", {}).get("bare_loop")
    if bare:
        ax_tput.axhline(bare["images_per_s"], color="black", linestyle=":", label="bare loop (1 engine)")
    for ax in (ax_lat, ax_tput):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8])
        ax.set_xticklabels(["1", "2", "4", "8"])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.grid(True, alpha=0.3)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency, ms, log scale (solid p50, dashed p95)")
    ax_lat.set_title("Latency")
    ax_tput.set_ylabel("images/s")
    ax_tput.set_title("Throughput")
    ax_tput.set_ylim(bottom=0)
    ax_tput.legend(fontsize=8)
    ax_lat.legend(fontsize=8)
    fig.suptitle(f"tiny FLUX 64² mix, CPU ({results['machine']['cpus']} cores, shared), {results['date']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_rows(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Repeated load blocks (one per path, concurrency and repetition) → one row per path and concurrency,
    medians over repetitions, errors summed."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for block in blocks:
        grouped.setdefault((block["path"], block["concurrency"]), []).append(block)
    rows = []
    for (path, concurrency), items in grouped.items():

        def med(key: str, items=items) -> float | None:
            values = [i[key] for i in items if i.get(key) is not None]
            return median(values) if values else None

        rows.append(
            {
                "path": path,
                "concurrency": concurrency,
                "n": len(items),
                "images_per_s": med("images_per_s"),
                "p50_ms": med("p50_ms"),
                "p95_ms": med("p95_ms"),
                "queue_ms": med("queue_ms"),
                "requests_per_execution": med("requests_per_execution"),
                "errors": sum(int(i.get("errors", 0)) for i in items),
            }
        )
    rows.sort(key=lambda r: (r["path"], r["concurrency"]))
    return rows
