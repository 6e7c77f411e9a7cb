"""Turn the ``results.json`` files of GPU benchmark runs into ``benchmarks/results/gpu-<date>.{json,md}``.

usage: python -m scripts.gpu.report --date 2026-11-26 [--before-fix LABEL ...] [--note TEXT ...] RUN [RUN...]
  RUN = LABEL=PATH_TO_results.json[@CARD DESCRIPTION, e.g. 'NVIDIA H100 80GB HBM3 (1x H100)']
Runs named by ``--before-fix`` are kept (rows marked ``before_fix``) but take no part in the goals or the pooled
figures: they were measured before a fix to the served stack.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GOALS = {"served_over_bare_latency": 1.02, "served_over_bare_throughput": 0.98, "two_gpu_speedup": 1.9}
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
        ratios = [a / b for a, b in zip(served, bare, strict=True)]
        out.append(
            {
                "engine": engine,
                "workload": workload,
                "runs": [row["run"] for row in members],
                "pairs": len(ratios),
                "served_median_s": statistics.median(served),
                "bare_median_s": statistics.median(bare),
                "served_over_bare_latency": statistics.median(served) / statistics.median(bare),
                "paired_ratio_median": statistics.median(ratios),
                "paired_ratio_min": min(ratios),
                "paired_ratio_max": max(ratios),
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
    out = []
    for row in table:
        if row["before_fix"]:
            continue
        for key, goal in GOALS.items():
            value = row.get(key)
            if value is None:
                continue
            met = value <= goal if key == "served_over_bare_latency" else value >= goal
            out.append(
                {
                    # The issue states its latency goal for images; a video row is held to it for reference only.
                    "reference_only": not row["workload"].startswith("FLUX"),
                    "run": row["run"],
                    "engine": row["engine"],
                    "workload": row["workload"],
                    "metric": key,
                    "value": value,
                    "goal": goal,
                    "met": met,
                    "device": row["device"],
                }
            )
    return out


def _latency_table(rows_: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| run | workload | engine | card | bare s (median) | served s (median) | served/bare latency "
        "(paired median) | bare img/s | served img/s (conc. 4) | served/bare throughput | same file |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows_:
        throughput = row.get("throughput") or {}
        lat = row["latency_s"]
        tail = (
            f"{throughput['bare_images_per_s']:.4f} | {throughput['served_images_per_s']:.4f} | "
            f"**{throughput['served_over_bare']:.3f}** |"
            if throughput
            else "– | – | – |"
        )
        lines.append(
            f"| {row['run']} | {row['workload']} | {row['engine']} | {row['device']} | {lat['bare']['median']:.3f} | "
            f"{lat['served']['median']:.3f} | **{row['served_over_bare_latency']:.3f}** "
            f"({row['served_over_bare_latency_paired']['median']:.3f}) | {tail} "
            f"{sum(row['identical_files'])}/{len(row['identical_files'])} |"
        )
    return lines


def markdown(table, pool, speed, goals, notes: list[str]) -> str:
    after = [row for row in table if "latency_s" in row and not row["before_fix"]]
    before = [row for row in table if "latency_s" in row and row["before_fix"]]
    lines = _latency_table(after)
    if pool:
        lines += [
            "",
            "Pooled over the runs above (every interleaved pair):",
            "",
            "| workload | engine | pairs | bare s | served s | served/bare | paired ratio median (min–max) |",
            "|---|---|---|---|---|---|---|",
        ]
        for item in pool:
            lines.append(
                f"| {item['workload']} | {item['engine']} | {item['pairs']} | {item['bare_median_s']:.3f} | "
                f"{item['served_median_s']:.3f} | **{item['served_over_bare_latency']:.3f}** | "
                f"{item['paired_ratio_median']:.3f} ({item['paired_ratio_min']:.3f}–{item['paired_ratio_max']:.3f}) |"
            )
    if speed:
        lines += [
            "",
            "| run | workload | card | SGLang engine s/image | diffusers engine s/image | SGLang speedup (bare) | "
            "(served) |",
            "|---|---|---|---|---|---|---|",
        ]
        for item in speed:
            lines.append(
                f"| {item['run']}{' (before fix)' if item['before_fix'] else ''} | {item['workload']} | "
                f"{item['device']} | {item['sglang_engine_s']:.3f} | {item['diffusers_engine_s']:.3f} | "
                f"**{item['sglang_over_diffusers_speedup']:.2f}×** | "
                f"{item['served_sglang_over_diffusers_speedup']:.2f}× |"
            )
    multi = [row for row in table if "layouts" in row]
    if multi:
        lines += [
            "",
            "| run | workload | engine | card | 1 GPU img/s | 2 GPUs img/s | speedup |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in multi:
            one, two = row["layouts"].get("1_gpu"), row["layouts"].get("2_gpu")
            speedup = f"**{row['two_gpu_speedup']:.3f}×**" if row.get("two_gpu_speedup") else "–"
            two_rate = f"{two['images_per_s']:.4f} ({two['images']} images)" if two else "–"
            lines.append(
                f"| {row['run']} | {row['workload']} | {row['engine']} | {row['device']} | "
                f"{one['images_per_s']:.4f} ({one['images']} images) | {two_rate} | {speedup} |"
            )
    if before:
        lines += ["", "Before the `LD_LIBRARY_PATH` fix (kept for the record; see the notes):", ""]
        lines += _latency_table(before)
    lines += ["", "Goals:", ""]
    for goal in goals:
        sign = "≤" if "latency" in goal["metric"] else "≥"
        verdict = "met" if goal["met"] else "**missed**"
        if goal["reference_only"]:
            verdict += " (the goal is stated for images; shown for reference)"
        lines.append(
            f"- {goal['run']}, {goal['engine']}, {goal['workload']}: {goal['metric']} {goal['value']:.3f} "
            f"(goal {sign} {goal['goal']}): {verdict}"
        )
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
        if "argv" in results:  # files of runs before "command" was recorded named the script by its full path
            results["command"] = "python -m scripts.gpu.bench_gpu " + " ".join(results.pop("argv")[1:])
        runs.append({"label": label, "device": device, "before_fix": label in args.before_fix, "results": results})
    table = rows(runs)
    pool = pooled(table)
    speed = speedups(table)
    goals = verdicts(table)
    document: dict[str, Any] = {
        "date": args.date,
        **({"issue": args.issue} if args.issue else {}),
        "device": sorted({row["device"] for row in table}),
        "engine": sorted({row["engine"] for row in table}),
        "workload": sorted({row["workload"] for row in table}),
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
    text = markdown(table, pool, speed, goals, args.note)
    (args.out_dir / f"gpu-{args.date}.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (args.out_dir / f"gpu-{args.date}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
