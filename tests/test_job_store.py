"""The video job store, on SQLite (unit lane) and on a real PostgreSQL server (end-to-end lane): upgrades keep
every job, leases pass a dead runner's job to another, attempts are capped, and every runner's write is
conditional on still holding the job."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from benchmarks.job_store import new_job
from diffusion_runtime.launcher.postgres import LocalPostgres
from openai_frontend.job_store import MIGRATIONS, VideoJobStore
from tests.conftest import wait_for

LEASE_S = 0.5
REQUEST = {"prompt": "x", "width": 64, "height": 64}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "videos.sqlite3")
    postgres: LocalPostgres = request.getfixturevalue("postgres")
    return postgres.create_database(f"jobs_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(store_url: str):
    opened = VideoJobStore(store_url, lease_s=LEASE_S)
    yield opened
    opened.close()


def claim_when_expired(store: VideoJobStore, owner: str, max_attempts: int = 3):
    """Claim once the lease has run out (polled, never a fixed sleep); returns (claimed, failed)."""

    def claim() -> tuple | None:
        claimed, failed = asyncio.run(store.claim_expired(owner, 10, max_attempts))
        return (claimed, failed) if claimed or failed else None

    return wait_for(claim, timeout=10, interval=0.05, message="a lease running out")


def test_a_job_whose_runner_stops_renewing_runs_again_elsewhere_and_only_there(store: VideoJobStore) -> None:
    job = new_job()
    asyncio.run(store.insert(job, REQUEST, b"png", "frontend-a"))
    assert asyncio.run(store.claim_expired("frontend-b", 10, 3)) == ([], []), "a live lease is not taken"
    assert asyncio.run(store.progress(job.id, "frontend-a", 40))

    (claim,), failed = claim_when_expired(store, "frontend-b")
    assert failed == [] and claim.job.id == job.id and claim.attempt == 2
    assert claim.request == REQUEST and claim.input_image == b"png"
    assert not asyncio.run(store.progress(job.id, "frontend-a", 60)), "the first runner learns it lost the job"
    assert not asyncio.run(store.finish(job.id, "frontend-a", status="completed", progress=100))

    assert asyncio.run(store.progress(job.id, "frontend-b", 10))
    assert asyncio.run(store.get(job.id)).progress == 40, "progress never goes back when a job runs again"
    assert asyncio.run(store.finish(job.id, "frontend-b", status="completed", progress=100, media_key="k"))
    done = asyncio.run(store.get(job.id))
    assert (done.status, done.progress, done.media_key) == ("completed", 100, "k")
    assert asyncio.run(store.claim_expired("frontend-c", 10, 3)) == ([], []), "a finished job is never claimed"


def test_a_job_is_attempted_at_most_max_attempts_times_then_fails_with_the_reason(store: VideoJobStore) -> None:
    job = new_job()
    asyncio.run(store.insert(job, REQUEST, None, "frontend-a"))
    (claim,), _ = claim_when_expired(store, "frontend-b", max_attempts=2)
    assert claim.attempt == 2
    claimed, (failed,) = claim_when_expired(store, "frontend-c", max_attempts=2)
    assert claimed == [] and failed.id == job.id
    ended = asyncio.run(store.get(job.id))
    assert ended.status == "failed" and ended.error["code"] == "attempts_exhausted"
    assert "2 times" in ended.error["message"]


def test_a_deleted_job_is_noticed_by_its_runner_at_the_next_step(store: VideoJobStore) -> None:
    job = new_job()
    asyncio.run(store.insert(job, REQUEST, None, "frontend-a"))
    assert asyncio.run(store.renew("frontend-a", [job.id])) == {job.id}
    assert asyncio.run(store.delete(job.id))
    assert not asyncio.run(store.progress(job.id, "frontend-a", 50))
    assert asyncio.run(store.renew("frontend-a", [job.id])) == set()
    assert asyncio.run(store.get(job.id)) is None


def test_a_released_job_is_claimed_at_once_without_counting_an_attempt(store: VideoJobStore) -> None:
    job = new_job()
    asyncio.run(store.insert(job, REQUEST, None, "frontend-a"))
    assert asyncio.run(store.release("frontend-a", [job.id])) == 1
    (claim,), _ = asyncio.run(store.claim_expired("frontend-b", 10, 3))
    assert claim.attempt == 1, "a graceful stop hands the job over without spending an attempt"


def test_concurrent_claimers_never_share_a_job(store_url: str) -> None:
    """Four frontends claim a dead one's jobs at once: each job goes to exactly one. The claimed leases last a
    minute, so none runs out during the test (with the fixture's half-second lease, a loaded machine let claimed
    jobs expire and be claimed again, which is the lease doing its job, not a shared claim)."""
    store = VideoJobStore(store_url, lease_s=60.0)
    jobs = [new_job() for _ in range(24)]
    for job in jobs:
        asyncio.run(store.insert(job, REQUEST, None, "dead-frontend"))
    asyncio.run(store.release("dead-frontend", [j.id for j in jobs]))
    taken: dict[str, list[str]] = {}

    def claimer(name: str) -> None:
        while True:
            claimed, _ = asyncio.run(store.claim_expired(name, 3, 3))
            if not claimed:
                return
            taken.setdefault(name, []).extend(c.job.id for c in claimed)

    threads = [threading.Thread(target=claimer, args=(f"frontend-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    every = [job_id for ids in taken.values() for job_id in ids]
    assert sorted(every) == sorted(j.id for j in jobs), "each job claimed exactly once"


def test_list_pages_newest_first(store: VideoJobStore) -> None:
    jobs = [new_job() for _ in range(3)]
    for job in jobs:
        asyncio.run(store.insert(job, REQUEST, None, "frontend-a"))
    page, more = asyncio.run(store.list(None, 2, "desc"))
    assert [j.id for j in page] == [jobs[2].id, jobs[1].id] and more
    rest, more = asyncio.run(store.list(page[-1].id, 2, "desc"))
    assert [j.id for j in rest] == [jobs[0].id] and not more


FIRST_RELEASE_SCHEMA = (
    "CREATE TABLE video_jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, model , status , "
    "progress , created_at , seconds , size , prompt , params , completed_at , expires_at , error , media_key , "
    "inference_time_s )"
)


def test_a_first_release_sqlite_file_is_upgraded_and_keeps_every_job(tmp_path: Path) -> None:
    path = tmp_path / "videos.sqlite3"
    with sqlite3.connect(path) as db:  # a job file as the first release wrote it
        db.execute(FIRST_RELEASE_SCHEMA)
        row = "INSERT INTO video_jobs (id, model, status, progress, created_at, seconds, size, prompt, params, "
        db.execute(row + "media_key) VALUES ('video_done', 'm', 'completed', 100, 1, '4', '64x64', 'p', '{}', 'k')")
        db.execute(row + "media_key) VALUES ('video_cut', 'm', 'in_progress', 30, 2, '4', '64x64', 'p', '{}', NULL)")
    store = VideoJobStore(str(path), lease_s=LEASE_S)
    assert store.version == len(MIGRATIONS)
    done = asyncio.run(store.get("video_done"))
    assert (done.status, done.media_key, done.params) == ("completed", "k", {})
    claimed, (cut,) = asyncio.run(store.claim_expired("frontend-a", 10, 3))
    assert claimed == [] and cut.id == "video_cut", "a job without a stored request cannot run again"
    assert asyncio.run(store.get("video_cut")).error["code"] == "interrupted"
    store.close()
    again = VideoJobStore(str(path), lease_s=LEASE_S)  # opening an up-to-date store changes nothing
    assert [j.id for j in asyncio.run(again.list(None, 10, "asc"))[0]] == ["video_done", "video_cut"]
    again.close()
