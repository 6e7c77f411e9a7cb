"""The benchmarks' own logic (``benchmarks/``): statistics, request building, result shapes.

Not a timed test: nothing here measures speed or starts servers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.cpu import report
from benchmarks.cpu.load import parse_perf_csv, steady_throughput
from benchmarks.prometheus import metric_sum, parse_prometheus
from benchmarks.report import markdown_table
from benchmarks.stats import (
    bootstrap_median_ci,
    interleaved_order,
    paired_difference,
    paired_ratios,
    percentile,
    summarize,
    throughput,
    verdict,
)
from benchmarks.workloads import ImageJob, TextJob, VideoJob, image_load_jobs, video_job


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 95) == pytest.approx(4.8)
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_scales_and_reports_spread() -> None:
    s = summarize([0.001, 0.002, 0.003, 0.004], scale=1000)
    assert s["n"] == 4
    assert s["p50"] == pytest.approx(2.5)
    assert s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(4.0)
    assert s["mean"] == pytest.approx(2.5)
    assert s["iqr"] == pytest.approx(1.5)
    assert summarize([]) == {"n": 0}


def test_paired_difference_cancels_shared_drift() -> None:
    # The machine's load drifts a lot between rounds; the served path is always 2 ms slower than bare.
    drift = [10.0, 50.0, 20.0, 80.0, 30.0, 60.0, 40.0, 70.0]
    bare = [d / 1000 for d in drift]
    served = [(d + 2.0) / 1000 for d in drift]
    d = paired_difference(served, bare, scale=1000)
    assert d["n"] == len(drift)
    assert d["median_of_differences"] == pytest.approx(2.0)
    assert d["ci95"][0] == pytest.approx(2.0) and d["ci95"][1] == pytest.approx(2.0)
    assert d["difference_of_medians"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_bootstrap_interval_contains_the_median_and_is_deterministic() -> None:
    values = [float(v) for v in range(1, 41)]
    low, high = bootstrap_median_ci(values)
    assert low <= 20.5 <= high
    assert (low, high) == bootstrap_median_ci(values)


def test_paired_ratios_and_throughput() -> None:
    r = paired_ratios([0.9, 1.0, 1.1], [1.0, 1.0, 1.0])
    assert r["median"] == pytest.approx(1.0)
    assert r["min"] == pytest.approx(0.9) and r["max"] == pytest.approx(1.1)
    assert r["ci95"][0] <= r["median"] <= r["ci95"][1]
    assert paired_ratios([], []) == {"n": 0}
    assert throughput(10, 2.0, 4.0) == 5.0
    with pytest.raises(ValueError):
        throughput(1, 3.0, 3.0)


def test_verdict_separates_a_miss_from_noise() -> None:
    # Throughput ratios: higher is better.
    assert verdict(0.96, [0.90, 1.0], 0.95, higher_is_better=True) == "met"
    assert verdict(0.93, [0.88, 0.99], 0.95, higher_is_better=True) == "inconclusive"
    assert verdict(0.90, [0.86, 0.93], 0.95, higher_is_better=True) == "missed"
    assert verdict(0.90, None, 0.95, higher_is_better=True) == "missed"
    # Overhead in ms: lower is better.
    assert verdict(4.8, [4.5, 5.4], 5.0, higher_is_better=False) == "met"
    assert verdict(5.3, [4.9, 5.6], 5.0, higher_is_better=False) == "inconclusive"
    assert verdict(5.3, [5.1, 5.6], 5.0, higher_is_better=False) == "missed"


def test_steady_throughput_leaves_the_start_up_out() -> None:
    # The first answer arrives after a whole service time; then one every 0.5 s, 2 images each.
    completions = [(3.0, 2), (1.0, 2), (1.5, 2), (2.0, 2), (2.5, 2)]
    assert steady_throughput(completions) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        steady_throughput([(1.0, 1)])


def test_interleaved_order_runs_every_path_once_per_round_and_rotates() -> None:
    paths = ("bare", "triton", "served")
    order = interleaved_order(paths, 9)
    assert len(order) == 9
    assert all(sorted(r) == sorted(paths) for r in order)
    assert {r[0] for r in order} == set(paths)  # no path is always first
    assert order == interleaved_order(paths, 9)  # deterministic


PROMETHEUS = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="image_diffusion",version="1"} 12
nv_inference_request_success{model="image_diffusion_x2",version="1"} 3
nv_inference_request_failure{model="image_diffusion",reason="REJECTED",version="1"} 1
nv_inference_request_failure{model="image_diffusion",reason="BACKEND",version="1"} 2
diffusion_seconds_total{model="image_diffusion",phase="denoise"} 1.25
diffusion_seconds_total{model="image_diffusion",phase="encode"} 0.5
nv_gpu_utilization 0
"""


def test_prometheus_parsing_and_label_sums() -> None:
    samples = parse_prometheus(PROMETHEUS)
    assert metric_sum(samples, "nv_inference_request_success", model="image_diffusion") == 12
    assert metric_sum(samples, "nv_inference_request_failure", model="image_diffusion") == 3
    assert metric_sum(samples, "diffusion_seconds_total", model="image_diffusion", phase="denoise") == 1.25
    assert metric_sum(samples, "nv_inference_request_success") == 15
    assert metric_sum(samples, "nv_gpu_utilization") == 0
    assert metric_sum(samples, "absent", model="x") == 0


def test_perf_analyzer_csv_rows() -> None:
    text = (
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
        "Avg latency,request/response,response wait\n"
        "4,12.5,30,400,150000,20,80000,10,5,310000,330000,340000,350000,320000,0,0\n"
    )
    (row,) = parse_perf_csv(text)
    assert row["concurrency"] == 4
    assert row["requests_per_s"] == 12.5
    assert row["server_queue_us"] == 150000
    assert row["p95_us"] == 340000


def test_jobs_give_the_same_request_to_every_path() -> None:
    from diffusion_runtime.params import ImageLimits, VideoLimits

    jobs = image_load_jobs()  # benchmarks/perf_inputs/image_diffusion_64.json
    assert len(jobs) >= 1 and all(j.prompt for j in jobs)
    job = ImageJob("a fox", width=96, height=64, n=2, steps=3, seed=7, output_format="jpeg")
    params = job.params(ImageLimits())
    body = job.openai_body("tiny-flux")
    assert (params.width, params.height, params.n, params.seed) == (96, 64, 2, 7)
    assert body["size"] == "96x64" and body["n"] == 2 and body["seed"] == 7 and body["num_inference_steps"] == 3
    assert body["response_format"] == "b64_json" and body["output_format"] == "jpeg"

    video = video_job()  # benchmarks/perf_inputs/video_generation_t2v.json
    vparams = video.params(VideoLimits(default_width=64, default_height=64))
    vbody = video.openai_body("tiny-wan-t2v")
    assert vparams.num_frames == video.num_frames == vbody["num_frames"]
    assert vbody["response_format"] == "b64_json" and vbody["size"] == f"{video.width}x{video.height}"
    assert isinstance(VideoJob("x"), VideoJob)

    text = TextJob("hello", max_tokens=8, block_length=4)
    assert text.openai_body("tiny-llada", stream=True)["stream"] is True


def _fake_results(tmp_path: Path) -> dict:
    stats = {"n": 3, "p50": 10.0, "p95": 12.0, "mean": 10.5, "min": 9.0, "max": 12.0, "iqr": 1.0}
    diff = {"n": 3, "median_of_differences": 1.0, "ci95": [0.5, 1.5], "difference_of_medians": 1.0, "p95_difference": 1}
    path_stats = {
        "wall": stats,
        "gen": stats,
        "other": stats,
        "model_execute": stats,
        "in_model_not_denoise": stats,
        "outside_model": stats,
        "queue": stats,
    }
    overhead = {
        "rounds": 3,
        "warmup": 1,
        "label": "tiny FLUX 64²",
        "bare": {"wall": stats, "gen": stats, "other": stats, "encode": stats},
        "triton": path_stats,
        "served": path_stats,
        "differences_ms": {
            k: {"wall": diff, "other": diff} for k in ("served_minus_bare", "triton_minus_bare", "served_minus_triton")
        },
        "gen_ratio_vs_bare": {"triton": {"median": 1.0}, "served": {"median": 1.01}},
    }
    blocks = [
        {
            "path": "frontend, 1 instance",
            "concurrency": c,
            "images_per_s": 10.0 / c,
            "p50_ms": 100.0 * c,
            "p95_ms": 120.0 * c,
            "queue_ms": 50.0 * (c - 1),
            "requests_per_execution": 1.0,
            "errors": 0,
        }
        for c in (1, 2, 4, 8)
        for _ in range(2)
    ]
    return {
        "schema": report.SCHEMA,
        "date": "2026-01-01",
        "mode": "quick",
        "command": "benchmarks/cpu/run.sh --quick",
        "machine": {"cpus": 2, "platform": "Linux", "python": "3.11", "load_start": [1, 1, 1], "load_end": [2, 2, 2]},
        "config": {},
        "files": {k: str(tmp_path / f"cpu-2026-01-01.{k}") for k in ("json", "md", "png")},
        "overhead": {"image_64": overhead},
        "load": {
            "mix": "64x64",
            "blocks": blocks,
            "sweep": report.sweep_rows(blocks),
            "bare_loop": {"images_per_s": 10.0, "n": 2},
            "target": {"ratio": paired_ratios([9.8, 9.7], [10.0, 10.0])},
        },
        "encoding": {
            "images": [
                {
                    "size": 512,
                    "content": "photo",
                    "format": "png-1",
                    "encode_ms": stats,
                    "bytes": 2048,
                    "fraction_of_generation": 0.01,
                }
            ],
            "videos": [],
        },
        "notes": ["a note"],
    }


def test_result_files_have_the_documented_shape(tmp_path: Path) -> None:
    results = _fake_results(tmp_path)
    sweep = results["load"]["sweep"]
    assert [r["concurrency"] for r in sweep] == [1, 2, 4, 8]
    assert all(r["n"] == 2 and r["errors"] == 0 for r in sweep)
    results["targets"] = report.evaluate_targets(results)
    names = [t["name"] for t in results["targets"]]
    assert any(n.startswith("images: served adds") for n in names)
    assert any("concurrency 4" in n for n in names)
    image = next(t for t in results["targets"] if t["name"].startswith("images: served adds"))
    assert image["met"] is True and image["measured"] == 1.0 and image["verdict"] == "met"
    assert report.check_shape(results) == []

    report.write_json(results, Path(results["files"]["json"]))
    loaded = json.loads(Path(results["files"]["json"]).read_text())
    assert report.check_shape(loaded) == []
    text = report.markdown(loaded)
    assert text.startswith("## Performance (CPU)")
    assert "shared" in text and "| target |" in text and "images/s" in text
    report.plot(loaded, Path(results["files"]["png"]))
    assert Path(results["files"]["png"]).read_bytes().startswith(b"\x89PNG")

    broken = dict(loaded)
    del broken["targets"]
    assert "missing key 'targets'" in report.check_shape(broken)


def test_markdown_table() -> None:
    table = markdown_table([[1, "a"], [2, "b"]], ["n", "x"])
    assert table.splitlines() == ["| n | x |", "|---|---|", "| 1 | a |", "| 2 | b |"]
    assert math.isfinite(percentile([1.0, 2.0, 3.0], 50))


def test_command_line_plans(tmp_path: Path) -> None:
    from benchmarks.cpu.__main__ import PLANS, Bench, parse_args

    args = parse_args(["--full", "--only", "overhead,load", "--out-dir", str(tmp_path), "--date", "2026-01-02"])
    assert args.mode == "full" and args.phases == ["overhead", "load"]
    bench = Bench(args)
    assert bench.plan == PLANS["full"]
    assert bench.files["json"] == tmp_path / "cpu-2026-01-02.json"
    assert (
        bench.results["command"]
        == "benchmarks/cpu/run.sh --full --only overhead,load --out-dir " + str(tmp_path) + " --date 2026-01-02"
    )
    quick = Bench(parse_args(["--rounds", "5", "--out-dir", str(tmp_path)]))
    assert quick.plan.image_64_rounds == 5 and quick.plan.dllm_rounds == 5
    assert quick.plan.sweep_reps == PLANS["quick"].sweep_reps
    with pytest.raises(SystemExit):
        parse_args(["--only", "nonsense"])


def test_rebuild_rewrites_the_report_from_the_json(tmp_path: Path) -> None:
    from benchmarks.cpu.__main__ import main

    results = _fake_results(tmp_path)
    for block in results["load"]["blocks"]:
        block["raw"] = {"cpu_ms_per_request": {"frontend": 3.0, "tritonserver": 1.0, "client": 0.5}}
    path = Path(results["files"]["json"])
    report.write_json(results, path)
    assert main(["--rebuild", str(path)]) == 0
    text = path.with_suffix(".md").read_text()
    assert text.startswith("## Performance (CPU)") and "frontend 3.0 ms" in text
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert report.check_shape(json.loads(path.read_text())) == []


def test_closed_loop_counts_every_request() -> None:
    """The load client's accounting against a stub server: answers, failures and images all add up."""
    import asyncio

    aiohttp_web = pytest.importorskip("aiohttp.web")
    from benchmarks.cpu.load import _closed_loop
    from diffusion_runtime.net import free_port

    calls = {"n": 0}

    async def handler(request):
        body = await request.json()
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            return aiohttp_web.json_response({"error": {"message": "no"}}, status=500)
        await asyncio.sleep(0.01)  # the simulated service time the load client measures (behaviour under test)
        return aiohttp_web.json_response({"data": [{"b64_json": "eA=="}] * body["n"]})

    async def run() -> dict:
        app = aiohttp_web.Application()
        app.router.add_post("/v1/images/generations", handler)
        runner = aiohttp_web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await aiohttp_web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await _closed_loop(f"http://127.0.0.1:{port}", [{"n": 1}, {"n": 2}], concurrency=2, total=9)
        finally:
            await runner.cleanup()

    result = asyncio.run(run())
    assert result["requests"] == 9 and calls["n"] == 9
    assert result["ok"] == 6 and result["errors"] == 3 and result["statuses"] == {"200": 6, "500": 3}
    assert 6 <= result["images"] <= 12 and result["images_per_s"] > 0
    assert result["latency_ms"]["n"] == 9


def test_merge_keeps_the_phases_not_rerun(tmp_path: Path) -> None:
    from benchmarks.cpu.__main__ import Bench, parse_args

    results = _fake_results(tmp_path)
    results["phases"] = {"overhead": {"load_start": [1, 1, 1]}, "encoding": {"load_start": [2, 2, 2]}}
    report.write_json(results, tmp_path / "cpu-2026-01-01.json")
    args = parse_args(["--only", "encoding", "--merge", "--out-dir", str(tmp_path), "--date", "2026-01-01"])
    bench = Bench(args)
    assert bench.results["overhead"] == results["overhead"] and bench.results["load"] == results["load"]
    assert "encoding" not in bench.results  # about to be measured again
    assert set(bench.results["phases"]) == {"overhead"}
    assert bench.results["command"].startswith("benchmarks/cpu/run.sh --quick; then benchmarks/cpu/run.sh --only")
    with bench.phase("encoding"):
        pass
    assert set(bench.results["phases"]) == {"overhead", "encoding"}
