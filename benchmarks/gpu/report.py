"""Turn the ``results.json`` files of GPU benchmark runs into ``benchmarks/results/gpu-<date>.{json,md}``.

usage: python -m benchmarks.gpu.report --date 2026-11-26 [--before-fix LABEL ...] [--note TEXT ...] RUN [RUN...]
  RUN = LABEL=PATH_TO_results.json[@CARD DESCRIPTION, e.g. 'NVIDIA H100 80GB HBM3 (1x H100)']
Runs named by ``--before-fix`` are kept (rows marked ``before_fix``) but take no part in the goals or the pooled
figures: they were measured before a fix to the served stack.

Goals are judged as the CPU benchmark judges its targets (``benchmarks.report.judge``). The latency goal is held to
the ratio of the medians (served over bare); its 95% interval is that of the median of the per-pair ratios, so a
ratio whose pairs scatter across the goal is *inconclusive* rather than *missed*. Throughput and GPU scaling are
single measurements per run, with no interval: *met* or *missed*.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.gpu import step_floor, variants
from benchmarks.report import VERDICT_RULE, judge, markdown_table, targets_table, write_json
from benchmarks.stats import median, paired_ratios

ROOT = Path(__file__).resolve().parents[2]
GOALS = {"served_over_bare_latency": 1.02, "served_over_bare_throughput": 0.98, "two_gpu_speedup": 1.9}
GOAL_NAMES = {
    "served_over_bare_latency": "served/bare latency",
    "served_over_bare_throughput": "served/bare throughput",
    "two_gpu_speedup": "two-GPU speedup",
}
_RAW = ("served_s", "bare_s", "bare_engine_s", "bare_encode_s")


def _card(run: dict[str, Any]) -> str:
    gpus = run["results"].get("device", {}).get("gpus") or []
    name = gpus[0] if gpus else "CPU"
    return f"{len(gpus)}× {name}" if len(gpus) > 1 else name


def image_workload(settings: dict[str, Any]) -> str:
    width, height = settings["image_size"]
    return f"FLUX.1-dev shape, {width}x{height}, {settings['image_steps']} steps"


def video_workload(settings: dict[str, Any]) -> str:
    width, height = settings["video_size"]
    return (
        f"Wan2.1-T2V-1.3B shape, {width}x{height}, {settings['video_frames']} frames, {settings['video_steps']} steps"
    )


def _latency_row(run, engine, entry, workload) -> dict[str, Any] | None:
    latency = entry.get("latency")
    if not latency:
        return None
    throughput = entry.get("throughput")
    return {
        "run": run["label"],
        "before_fix": run["before_fix"],
        "device": run["device"] or _card(run),
        "engine": engine,
        "workload": workload,
        "served_over_bare_latency": latency["served_over_bare"],
        "served_over_bare_latency_paired": latency["served_over_bare_paired"],
        "served_over_bare_throughput": throughput["served_over_bare"] if throughput else None,
        "latency_s": {k: latency[k] for k in ("served", "bare", "bare_engine", "bare_encode")},
        "served_model_per_request_s": _per_request(latency.get("served_model_metrics_delta", {}), latency["pairs"]),
        "throughput": throughput,
        "identical_files": latency["identical_files"],
        "file_bytes": latency["file_bytes"],
        "warmup_s": entry.get("warmup_s"),
        "load_s": entry.get("load_s"),
        "parameters": entry.get("parameters"),
        "raw_s": {k: latency[k] for k in _RAW},
    }


def _per_request(metrics: dict[str, float], requests: int) -> dict[str, float]:
    """The served model's own seconds per request by phase (Triton custom metrics, cumulative over the pairs)."""
    out = {}
    for key, value in metrics.items():
        if key.startswith("diffusion_seconds_total") and 'phase="' in key:
            out[key.split('phase="')[1].split('"')[0]] = value / requests
    return out


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        data, settings = run["results"], run["results"]["settings"]
        for engine, entry in data.get("image", {}).items():
            row = _latency_row(run, engine, entry, image_workload(settings))
            out += [row] if row else []
        for engine, entry in data.get("video", {}).items():
            row = _latency_row(run, engine, entry, video_workload(settings))
            out += [row] if row else []
        for engine, entry in data.get("multi_gpu", {}).items():
            layouts = {k: v for k, v in entry.items() if k.endswith("_gpu")}
            if layouts:
                out.append(
                    {
                        "run": run["label"],
                        "before_fix": run["before_fix"],
                        "device": run["device"] or _card(run),
                        "engine": engine,
                        "workload": image_workload(settings) + ", one instance per GPU",
                        "two_gpu_speedup": entry.get("speedup"),
                        "layouts": layouts,
                        "parameters": entry.get("parameters"),
                    }
                )
    return out


def variant_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The image engine under each set of speed settings (the ``image-variants`` plan), one row per variant."""
    out = []
    for run in runs:
        data = run["results"]
        for engine, entry in data.get("image_variants", {}).items():
            for name, variant in entry.items():
                if name.startswith("_"):
                    continue
                row = {
                    "run": run["label"],
                    "device": run["device"] or _card(run),
                    "engine": engine,
                    "workload": image_workload(data["settings"]),
                    "variant": name,
                    "parameters": variant.get("parameters", {}),
                }
                why = variants.not_measured(variant)
                if why is None:
                    row |= {
                        key: variant.get(key)
                        for key in ("load_s", "warmup_s", "first_request_s", "seconds", "speedup_vs_reference")
                    }
                    row["median_s"] = variant["latency"]["median"]
                    row["error_vs_reference"] = variant.get("error_vs_reference")
                    row["phases"] = variant.get("phases")
                else:
                    row["not_measured"] = why
                out.append(row)
    return out


def step_floors(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each run's kernel floor of one transformer step (``step_floor``), by run label, for the runs that timed one."""
    return {
        run["label"]: entry["_step_floor"]
        for run in runs
        for entry in run["results"].get("image_variants", {}).values()
        if "_step_floor" in entry
    }


def _floor_lines(floors: dict[str, dict[str, Any]], measured: Sequence[dict[str, Any]]) -> list[str]:
    """Per run with a kernel floor: the floor against the fastest step any variant of the run measured."""
    lines = []
    for run, floor in floors.items():
        steps = [row["phases"] for row in measured if row["run"] == run and row.get("phases")]
        fastest = min(steps, key=lambda phases: phases["step_s"]) if steps else {}
        text = step_floor.floor_text(floor, fastest.get("step_s"), fastest.get("steps"))
        lines += ["", f"Run {run}, one transformer step: {text}."]
    return lines


def _variants_table(measured: Sequence[dict[str, Any]]) -> str:
    rows = []
    for row in measured:
        if "not_measured" in row:
            why = "not measured: " + row["not_measured"][:120]
            rows.append([row["run"], row["engine"], row["variant"], why, *[""] * 6])
            continue
        error, warmup, phases = row.get("error_vs_reference"), row.get("warmup_s"), row.get("phases")
        exactness = variants.error_text(error) if error else "reference"
        split = variants.phase_text(phases) if phases else "–"
        rows.append(
            [
                row["run"],
                row["engine"],
                row["variant"],
                f"{row['median_s']:.3f} ({len(row['seconds'])})",
                f"**{row['speedup_vs_reference']:.3f}×**" if row.get("speedup_vs_reference") else "–",
                f"{row['first_request_s']:.2f}",
                f"{row['load_s']:.1f}",
                f"{warmup:.1f}" if warmup is not None else "–",
                split,
                exactness,
            ]
        )
    header = [
        "run",
        "engine",
        "settings",
        "s/image (n)",
        "speedup",
        "first request s",
        "load s",
        "warm-up s",
        "steps + before + after",
        "pixels vs reference (8-bit levels)",
    ]
    return markdown_table(rows, header)


def pooled(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every interleaved pair of the runs after the fix, per engine and workload."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in table:
        if "raw_s" in row and not row["before_fix"]:
            groups.setdefault((row["engine"], row["workload"]), []).append(row)
    out = []
    for (engine, workload), members in groups.items():
        served = [v for row in members for v in row["raw_s"]["served_s"]]
        bare = [v for row in members for v in row["raw_s"]["bare_s"]]
        ratios = paired_ratios(served, bare)
        out.append(
            {
                "engine": engine,
                "workload": workload,
                "runs": [row["run"] for row in members],
                "pairs": ratios["n"],
                "served_median_s": median(served),
                "bare_median_s": median(bare),
                "served_over_bare_latency": ratios["ratio_of_medians"],
                "paired_ratio_median": ratios["median"],
                "paired_ratio_ci95": ratios["ci95"],
                "paired_ratio_min": ratios["min"],
                "paired_ratio_max": ratios["max"],
            }
        )
    return out


def speedups(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SGLang engine against diffusers engine within one run (same card, same machine): bare engine s/image."""
    out = []
    by_run: dict[str, dict[str, dict[str, Any]]] = {}
    for row in table:
        if "latency_s" in row and row["workload"].startswith("FLUX"):
            by_run.setdefault(row["run"], {})[row["engine"]] = row
    for run, engines in by_run.items():
        if {"sglang", "diffusers"} <= set(engines):
            sglang, diffusers = engines["sglang"], engines["diffusers"]
            out.append(
                {
                    "run": run,
                    "before_fix": sglang["before_fix"],
                    "device": sglang["device"],
                    "workload": sglang["workload"],
                    "sglang_engine_s": sglang["latency_s"]["bare_engine"]["median"],
                    "diffusers_engine_s": diffusers["latency_s"]["bare_engine"]["median"],
                    "sglang_over_diffusers_speedup": diffusers["latency_s"]["bare_engine"]["median"]
                    / sglang["latency_s"]["bare_engine"]["median"],
                    "served_sglang_over_diffusers_speedup": diffusers["latency_s"]["served"]["median"]
                    / sglang["latency_s"]["served"]["median"],
                }
            )
    return out


def verdicts(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of ``GOALS`` for each row after the fix that measured it."""
    out = []
    for row in table:
        if row["before_fix"]:
            continue
        for key, goal in GOALS.items():
            value = row.get(key)
            if value is None:
                continue
            latency = key == "served_over_bare_latency"
            ci95 = (row.get("served_over_bare_latency_paired") or {}).get("ci95") if latency else None
            # The latency goal is stated for images; a video row is held to it for reference only.
            reference_only = not row["workload"].startswith("FLUX")
            name = (
                f"{row['run']}, {row['engine']}, {row['workload']}: {GOAL_NAMES[key]} {'≤' if latency else '≥'} {goal}"
            )
            out.append(
                {
                    "name": name + (" (the goal is stated for images; shown for reference)" if reference_only else ""),
                    "reference_only": reference_only,
                    "run": row["run"],
                    "engine": row["engine"],
                    "workload": row["workload"],
                    "metric": key,
                    **judge(goal, value, ci95, higher_is_better=not latency),
                    "unit": "x",
                    "device": row["device"],
                }
            )
    return out


def _latency_table(rows_: list[dict[str, Any]]) -> str:
    header = [
        "run",
        "workload",
        "engine",
        "card",
        "bare s (median)",
        "served s (median)",
        "served/bare latency (paired median)",
        "bare img/s",
        "served img/s (conc. 4)",
        "served/bare throughput",
        "same file",
    ]
    rows = []
    for row in rows_:
        throughput = row.get("throughput") or {}
        lat = row["latency_s"]
        rates = (
            [
                f"{throughput['bare_images_per_s']:.4f}",
                f"{throughput['served_images_per_s']:.4f}",
                f"**{throughput['served_over_bare']:.3f}**",
            ]
            if throughput
            else ["–", "–", "–"]
        )
        rows.append(
            [
                row["run"],
                row["workload"],
                row["engine"],
                row["device"],
                f"{lat['bare']['median']:.3f}",
                f"{lat['served']['median']:.3f}",
                f"**{row['served_over_bare_latency']:.3f}** ({row['served_over_bare_latency_paired']['median']:.3f})",
                *rates,
                f"{sum(row['identical_files'])}/{len(row['identical_files'])}",
            ]
        )
    return markdown_table(rows, header)


def _pooled_table(pool: list[dict[str, Any]]) -> str:
    rows = [
        [
            item["workload"],
            item["engine"],
            item["pairs"],
            f"{item['bare_median_s']:.3f}",
            f"{item['served_median_s']:.3f}",
            f"**{item['served_over_bare_latency']:.3f}**",
            f"{item['paired_ratio_median']:.3f} ({item['paired_ratio_min']:.3f}–{item['paired_ratio_max']:.3f})",
        ]
        for item in pool
    ]
    header = ["workload", "engine", "pairs", "bare s", "served s", "served/bare", "paired ratio median (min–max)"]
    return markdown_table(rows, header)


def _speedup_table(speed: list[dict[str, Any]]) -> str:
    rows = [
        [
            f"{item['run']}{' (before fix)' if item['before_fix'] else ''}",
            item["workload"],
            item["device"],
            f"{item['sglang_engine_s']:.3f}",
            f"{item['diffusers_engine_s']:.3f}",
            f"**{item['sglang_over_diffusers_speedup']:.2f}×**",
            f"{item['served_sglang_over_diffusers_speedup']:.2f}×",
        ]
        for item in speed
    ]
    header = [
        "run",
        "workload",
        "card",
        "SGLang engine s/image",
        "diffusers engine s/image",
        "SGLang speedup (bare)",
        "(served)",
    ]
    return markdown_table(rows, header)


def _multi_gpu_table(multi: list[dict[str, Any]]) -> str:
    rows = []
    for row in multi:
        one, two = row["layouts"].get("1_gpu"), row["layouts"].get("2_gpu")
        rows.append(
            [
                row["run"],
                row["workload"],
                row["engine"],
                row["device"],
                f"{one['images_per_s']:.4f} ({one['images']} images)",
                f"{two['images_per_s']:.4f} ({two['images']} images)" if two else "–",
                f"**{row['two_gpu_speedup']:.3f}×**" if row.get("two_gpu_speedup") else "–",
            ]
        )
    header = ["run", "workload", "engine", "card", "1 GPU img/s", "2 GPUs img/s", "speedup"]
    return markdown_table(rows, header)


def markdown(
    table: list[dict[str, Any]],
    pool: list[dict[str, Any]],
    speed: list[dict[str, Any]],
    goals: list[dict[str, Any]],
    notes: list[str],
    variant_table: Sequence[dict[str, Any]] = (),
    floors: dict[str, dict[str, Any]] | None = None,
) -> str:
    after = [row for row in table if "latency_s" in row and not row["before_fix"]]
    before = [row for row in table if "latency_s" in row and row["before_fix"]]
    lines = [_latency_table(after)] if after or not variant_table else []
    if variant_table:
        workloads = ", ".join(sorted({row["workload"] for row in variant_table}))
        lines += [""] if lines else []
        lines += [f"Image engine speed settings ({workloads}), the engine alone, one setting after another:", ""]
        lines += [_variants_table(variant_table)]
        lines += _floor_lines(floors or {}, variant_table)
    if pool:
        lines += ["", "Pooled over the runs above (every interleaved pair):", "", _pooled_table(pool)]
    if speed:
        lines += ["", _speedup_table(speed)]
    multi = [row for row in table if "layouts" in row]
    if multi:
        lines += ["", _multi_gpu_table(multi)]
    if before:
        lines += ["", "Before the `LD_LIBRARY_PATH` fix (kept for the record; see the notes):", ""]
        lines += [_latency_table(before)]
    if goals:
        lines += ["", "Goals:", "", targets_table(goals, digits=3), "", VERDICT_RULE]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--date", required=True)
    parser.add_argument("--issue", type=int, default=None, help="the issue these runs answer, recorded if given")
    parser.add_argument("--before-fix", action="append", default=[])
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.runs:
        label, _, rest = spec.partition("=")
        path, _, device = rest.partition("@")
        results = json.loads(Path(path).read_text())
        if "argv" in results:  # runs from before "command" was recorded, when the benchmark was scripts/gpu/
            results["command"] = "python -m scripts.gpu.bench_gpu " + " ".join(results.pop("argv")[1:])
        runs.append({"label": label, "device": device, "before_fix": label in args.before_fix, "results": results})
    table = rows(runs)
    variant_table = variant_rows(runs)
    floors = step_floors(runs)
    pool = pooled(table)
    speed = speedups(table)
    goals = verdicts(table)
    document: dict[str, Any] = {
        "date": args.date,
        **({"issue": args.issue} if args.issue else {}),
        "device": sorted({row["device"] for row in [*table, *variant_table]}),
        "engine": sorted({row["engine"] for row in [*table, *variant_table]}),
        "workload": sorted({row["workload"] for row in [*table, *variant_table]}),
        "served_over_bare_latency": {},
        "served_over_bare_throughput": {},
        "sglang_over_diffusers_speedup": next(
            (s["sglang_over_diffusers_speedup"] for s in speed if not s["before_fix"]), None
        ),
        "two_gpu_speedup": next((r["two_gpu_speedup"] for r in table if r.get("two_gpu_speedup")), None),
        "goals": goals,
        "pooled": pool,
        "sglang_vs_diffusers": speed,
        "results": table,
        "image_variants": variant_table,
        "step_floors": floors,
        "notes": args.note,
        "raw": {run["label"]: {"device": run["device"], "results": run["results"]} for run in runs},
    }
    for row in table:  # headline numbers keyed "run / engine / workload", runs after the fix only
        if row["before_fix"]:
            continue
        key = f"{row['run']} / {row['engine']} / {row['workload']}"
        for field in ("served_over_bare_latency", "served_over_bare_throughput"):
            if row.get(field) is not None:
                document[field][key] = row[field]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(table, pool, speed, goals, args.note, variant_table, floors)
    write_json(document, args.out_dir / f"gpu-{args.date}.json")
    (args.out_dir / f"gpu-{args.date}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
