"""A cluster on one machine: PostgreSQL, moto's S3 server, two tritonservers and two frontends as processes,
the frontends sharing the job store and the media bucket. Each test is a thing a user of several frontends relies
on: any frontend answers for any job, a dead frontend's job is finished by another, a database restart loses no
finished job, and a burst is refused with 429s beyond what the cluster queues, never dropped."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from diffusion_runtime.launcher.postgres import LocalPostgres
from diffusion_runtime.launcher.processes import Frontend, TritonServer, wait_until_ready
from diffusion_runtime.launcher.repository import PROJECT_ROOT, render_repository
from diffusion_runtime.media import probe_mp4
from diffusion_runtime.net import free_port
from tests.conftest import S3Server, metric_value, tiny_image_spec, tiny_video_specs, wait_for

pytestmark = pytest.mark.e2e  # starts PostgreSQL, moto's S3 server, two tritonservers and two frontends

T2V = "tiny-wan-t2v"
LEASE_S = 3.0  # short, so a takeover happens within seconds; production's default is 20
MAX_PENDING = 3  # per frontend and model: the burst test's excess is refused beyond 2 x 3
QUICK = {"model": T2V, "prompt": "x", "size": "64x64", "num_frames": 5, "fps": 8, "num_inference_steps": 2}
# Long enough to kill its frontend mid-run and short enough to run again in well under a minute.
SLOW = {**QUICK, "prompt": "slow", "num_inference_steps": 60}
LONG = {**QUICK, "prompt": "long", "size": "256x256", "num_frames": 33, "num_inference_steps": 200}


@dataclass
class Cluster:
    postgres: LocalPostgres
    s3: S3Server
    bucket: str
    tritons: list[TritonServer]
    frontends: list[Frontend]
    job_store: str
    workdir: Path

    def http(self, index: int) -> httpx.Client:
        return httpx.Client(base_url=self.frontends[index].url, timeout=60)

    def frontend(self, index: int) -> Frontend:
        return Frontend(
            self.tritons,
            fs_url=f"s3://{self.bucket}/media",
            log_file=self.workdir / f"frontend{index}.log",
            extra_args=(
                "--job-store",
                self.job_store,
                "--job-lease-s",
                str(LEASE_S),
                "--max-pending-videos",
                str(MAX_PENDING),
                "--video-poll-ms",
                "100",
                "--state-dir",
                str(self.workdir / f"state{index}"),
            ),
            env=self.s3.env,
        )

    def replace_frontend(self, index: int) -> None:
        """A new frontend process in place of one that was killed (as a Deployment would start one)."""
        self.frontends[index].stop()
        self.frontends[index] = self.frontend(index).start().wait_ready()

    def stored_files(self, video_id: str) -> list[str]:
        listed = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix=f"media/videos/{video_id}/")
        return [item["Key"] for item in listed.get("Contents", [])]

    def cancelled_generations(self) -> float:
        total = 0.0
        for server in self.tritons:
            text = httpx.get(server.metrics_url, timeout=10).text
            total += metric_value(text, "diffusion_requests_total", outcome="GenerationCancelled")
        return total


@pytest.fixture(scope="module")
def cluster(
    tiny_models: dict[str, Path], postgres: LocalPostgres, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    bucket = f"cluster-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    # Both servers serve the video model; only the second the image model too, as Services per model kind would.
    video = tiny_video_specs(tiny_models, "diffusers")[:1]
    repositories = [
        render_repository(video, workdir / "repo0", gpus=[]),
        render_repository([*video, tiny_image_spec(tiny_models, "diffusers")], workdir / "repo1", gpus=[]),
    ]
    tritons = [
        TritonServer(repository, log_file=workdir / f"triton{i}.log", env={"HF_HUB_OFFLINE": "1"})
        for i, repository in enumerate(repositories)
    ]
    job_store = postgres.create_database(f"cluster_{uuid.uuid4().hex[:8]}")
    cluster = Cluster(postgres, s3_server, bucket, tritons, [], job_store, workdir)
    try:
        for server in tritons:
            server.start()
        for server in tritons:
            server.wait_ready()
        cluster.frontends = [cluster.frontend(i).start() for i in range(2)]
        for frontend in cluster.frontends:
            frontend.wait_ready()
        yield cluster
    finally:
        for frontend in cluster.frontends:
            frontend.stop()
        for server in tritons:
            server.stop()


def poll_until_done(http: httpx.Client, video_id: str, timeout: float = 300) -> list[dict]:
    """Every state of the job seen while polling it until it ends (a 503 while the database restarts is
    retried, as a client following ``retry-after`` would)."""
    seen: list[dict] = []

    def ended() -> bool:
        response = http.get(f"/v1/videos/{video_id}")
        if response.status_code == 503:
            return False
        assert response.status_code == 200, response.text
        seen.append(response.json())
        return seen[-1]["status"] in ("completed", "failed")

    wait_for(ended, timeout=timeout, interval=0.1, message=f"{video_id} ending")
    return seen


def test_a_job_created_on_one_frontend_is_polled_downloaded_and_deleted_through_another(cluster: Cluster) -> None:
    with cluster.http(0) as a, cluster.http(1) as b:
        created = a.post("/v1/videos", json=QUICK).json()
        trace = poll_until_done(b, created["id"])
        assert trace[-1]["status"] == "completed", trace[-1]
        content = b.get(f"/v1/videos/{created['id']}/content")
        assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
        assert probe_mp4(content.content).frames == 5
        assert created["id"] in [v["id"] for v in b.get("/v1/videos", params={"limit": 100}).json()["data"]]
        assert b.delete(f"/v1/videos/{created['id']}").json()["deleted"] is True
        assert a.get(f"/v1/videos/{created['id']}").status_code == 404
        assert cluster.stored_files(created["id"]) == []


def test_each_request_goes_to_a_server_that_serves_its_model(cluster: Cluster) -> None:
    image = {"model": "tiny-flux", "prompt": "x", "size": "64x64", "num_inference_steps": 1, "response_format": "url"}
    with cluster.http(0) as a:
        assert {m["id"] for m in a.get("/v1/models").json()["data"]} >= {"tiny-flux", T2V}
        statuses = [a.post("/v1/images/generations", json=image).status_code for _ in range(4)]
    assert statuses == [200] * 4, "never sent to the server without the image model"


def test_deleting_a_job_on_one_frontend_stops_it_where_it_runs(cluster: Cluster) -> None:
    before = cluster.cancelled_generations()
    with cluster.http(0) as a, cluster.http(1) as b:
        job = a.post("/v1/videos", json=LONG).json()
        wait_for(lambda: b.get(f"/v1/videos/{job['id']}").json()["progress"] > 0, timeout=120, message="job start")
        assert b.delete(f"/v1/videos/{job['id']}").json()["deleted"] is True
        wait_for(lambda: cluster.cancelled_generations() > before, timeout=30, message="the model seeing the delete")
        assert a.get(f"/v1/videos/{job['id']}").status_code == 404
        # The frontend that ran it is free for the next job.
        quick = a.post("/v1/videos", json=QUICK).json()
        assert poll_until_done(a, quick["id"])[-1]["status"] == "completed"
        assert cluster.stored_files(job["id"]) == []


def test_a_job_whose_frontend_is_killed_is_finished_by_the_other(cluster: Cluster) -> None:
    try:
        with cluster.http(0) as a, cluster.http(1) as b:
            job = a.post("/v1/videos", json=SLOW).json()
            wait_for(lambda: b.get(f"/v1/videos/{job['id']}").json()["progress"] > 0, timeout=120, message="start")
            os.killpg(cluster.frontends[0].process.pid, signal.SIGKILL)  # no goodbye: the lease must run out
            killed = time.monotonic()
            trace = poll_until_done(b, job["id"], timeout=180)
            finished_after = time.monotonic() - killed
            progress = [state["progress"] for state in trace]
            assert trace[-1]["status"] == "completed", trace[-1]
            assert progress == sorted(progress), f"progress never goes back: {progress}"
            assert cluster.stored_files(job["id"]) == [f"media/videos/{job['id']}/video.mp4"], "one final file"
            assert probe_mp4(b.get(f"/v1/videos/{job['id']}/content").content).frames == 5
            assert metric_value(b.get("/metrics").text, "openai_video_jobs_taken_over_total", model=T2V) >= 1
            print(f"the killed frontend's job completed elsewhere {finished_after:.1f} s after the kill")
    finally:
        cluster.replace_frontend(0)


def test_a_postgres_restart_under_load_loses_no_completed_job(cluster: Cluster) -> None:
    accepted: list[str] = []
    with cluster.http(0) as a, cluster.http(1) as b:
        for i in range(4):
            response = (a, b)[i % 2].post("/v1/videos", json=QUICK)
            assert response.status_code == 200, response.text
            accepted.append(response.json()["id"])
        wait_for(lambda: b.get(f"/v1/videos/{accepted[0]}").json()["status"] != "queued", timeout=60, message="start")
        cluster.postgres.restart("immediate")  # as a crash would: every connection cut at once
        for i in range(4):  # more load right after: each creation is accepted or refused (full, or the database
            response = (a, b)[i % 2].post("/v1/videos", json=QUICK)  # still coming back), never lost
            assert response.status_code in (200, 429, 503), response.text
            if response.status_code == 200:
                accepted.append(response.json()["id"])
        for video_id in accepted:
            assert poll_until_done(b, video_id)[-1]["status"] == "completed", video_id
        listed = {v["id"]: v["status"] for v in a.get("/v1/videos", params={"limit": 100}).json()["data"]}
        assert all(listed.get(video_id) == "completed" for video_id in accepted)
        assert all(cluster.stored_files(video_id) for video_id in accepted)


def test_a_burst_of_200_creations_is_queued_or_refused_with_429_and_every_accepted_job_completes(
    cluster: Cluster,
) -> None:
    urls = [frontend.url for frontend in cluster.frontends]

    def create(i: int) -> httpx.Response:
        return httpx.post(f"{urls[i % 2]}/v1/videos", json={**QUICK, "prompt": f"burst {i}"}, timeout=120)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(create, range(200)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    refused = [r for r in responses if r.status_code == 429]
    assert refused and all(r.headers.get("retry-after") for r in refused)
    assert refused[0].json()["error"]["code"] == "queue_full"
    accepted = [r.json()["id"] for r in responses if r.status_code == 200]
    assert len(accepted) >= 2 * MAX_PENDING
    with cluster.http(1) as b:
        for video_id in accepted:
            assert poll_until_done(b, video_id)[-1]["status"] == "completed", video_id


def test_serve_script_with_the_documented_local_postgres(tmp_path: Path) -> None:
    """The README's two commands: a PostgreSQL of one's own, then ``scripts/serve.sh --job-store <its URL>``."""
    root = Path(tempfile.mkdtemp(prefix="td-serve-postgres-"))
    root.chmod(0o711)  # as root the server runs as the postgres user, which must reach its folder
    pg_port, port = free_port(), free_port()
    processes: list[subprocess.Popen] = []

    def start(command: list[str], log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    try:
        database = start(
            [
                sys.executable,
                "-m",
                "diffusion_runtime.launcher.postgres",
                "--data",
                str(root / "pg"),
                "--port",
                str(pg_port),
            ],
            tmp_path / "postgres.log",
        )
        printed = wait_for(
            lambda: re.search(r"--job-store (\S+)", (tmp_path / "postgres.log").read_text()),
            timeout=120,
            message="the local PostgreSQL printing its URL",
        )
        url = printed.group(1)
        serve = start(
            [
                str(PROJECT_ROOT / "scripts" / "serve.sh"),
                "--kinds",
                "video",
                "--port",
                str(port),
                "--run-dir",
                str(tmp_path / "run"),
                "--fs-url",
                f"file://{tmp_path}/media",
                "--job-store",
                url,
            ],
            tmp_path / "serve.log",
        )
        wait_until_ready(f"http://127.0.0.1:{port}/health/ready", serve, 900, "serve.sh", tmp_path / "serve.log")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            job = http.post("/v1/videos", json=QUICK).json()
            assert poll_until_done(http, job["id"])[-1]["status"] == "completed"
        with psycopg.connect(url) as conn:
            status = conn.execute("SELECT status FROM video_jobs WHERE id = %s", (job["id"],)).fetchone()
        assert status == ("completed",), "the job's record is in PostgreSQL"
        assert not list((tmp_path / "run").rglob("*.sqlite3")), "no SQLite file beside it"
        os.killpg(serve.pid, signal.SIGINT)
        assert serve.wait(timeout=120) == 0
        database.send_signal(signal.SIGTERM)
        assert database.wait(timeout=60) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        LocalPostgres(root / "pg").stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
