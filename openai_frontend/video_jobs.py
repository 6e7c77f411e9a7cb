"""Video jobs: OpenAI's asynchronous ``/v1/videos`` resource on top of the decoupled ``video_generation`` model.

``VideoJobStore`` keeps job records in SQLite, so completed jobs (and their files, in the media store) stay
retrievable after a frontend restart; jobs that a restart cut off are marked ``failed`` when the store opens,
never left ``in_progress``. ``VideoJobRunner`` runs each job as an asyncio task: it waits for a free
generation slot of its model (status ``queued``), streams the model's progress into the record
(``in_progress``), stores the MP4 and completes the record. Deleting a job cancels its task, which cancels the
gRPC stream, which Triton reports to the model between steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_runtime.contract import VIDEO
from diffusion_runtime.params import VideoParams
from openai_frontend.errors import OpenAIError
from openai_frontend.storage import MediaStorage, StorageUnavailable
from openai_frontend.triton import ServedModel, TritonBackend

log = logging.getLogger(__name__)

PENDING = ("queued", "in_progress")
VIDEO_OUTPUTS = ["PROGRESS", "VIDEO", "SEED", "NUM_FRAMES", "INFERENCE_TIME_S"]
_ID_RE = re.compile(r"^video_[0-9a-f]{32}$")
INTERRUPTED = {"code": "interrupted", "message": "the server restarted before this video finished; create it again"}


def new_video_id() -> str:
    return f"video_{uuid.uuid4().hex}"


def is_video_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


@dataclass
class VideoJob:
    id: str
    model: str
    status: str
    progress: int
    created_at: int
    seconds: str
    size: str
    prompt: str
    params: dict[str, Any]
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict[str, Any] | None = None
    media_key: str | None = None
    inference_time_s: float | None = None

    def to_object(self) -> dict[str, Any]:
        """The OpenAI video object (plus the generation settings actually used)."""
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": self.status,
            "progress": self.progress,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at,
            "seconds": self.seconds,
            "size": self.size,
            "prompt": self.prompt,
            "error": self.error,
            "remixed_from_video_id": None,
            "seed": self.params.get("seed"),
            "num_frames": self.params.get("num_frames"),
            "fps": self.params.get("fps"),
            "inference_time_s": self.inference_time_s,
        }


_COLUMNS = [f.name for f in dataclasses.fields(VideoJob)]
_JSON_COLUMNS = {"params", "error"}


class VideoJobStore:
    """SQLite-backed job records. Calls are short; the async wrappers run them on a worker thread so the
    event loop never waits on disk."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS video_jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                + ", ".join(f"{c} {'TEXT UNIQUE NOT NULL' if c == 'id' else ''}" for c in _COLUMNS)
                + ")"
            )
            interrupted = self._db.execute(
                "UPDATE video_jobs SET status='failed', error=? WHERE status IN ('queued', 'in_progress')",
                (json.dumps(INTERRUPTED),),
            ).rowcount
        if interrupted:
            log.warning("marked %d video job(s) cut off by a restart as failed", interrupted)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _row(row: tuple) -> VideoJob:
        values = dict(zip(_COLUMNS, row, strict=True))
        for column in _JSON_COLUMNS:
            values[column] = json.loads(values[column]) if values[column] is not None else None
        return VideoJob(**values)

    def _insert(self, job: VideoJob) -> None:
        values = [
            json.dumps(v) if c in _JSON_COLUMNS and v is not None else v for c, v in dataclasses.asdict(job).items()
        ]
        with self._lock:
            self._db.execute(
                f"INSERT INTO video_jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", values
            )

    def _get(self, job_id: str) -> VideoJob | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM video_jobs WHERE id=?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def _update(self, job_id: str, **changes: Any) -> None:
        assignments = ", ".join(f"{c}=?" for c in changes)
        values = [json.dumps(v) if c in _JSON_COLUMNS and v is not None else v for c, v in changes.items()]
        with self._lock:
            self._db.execute(f"UPDATE video_jobs SET {assignments} WHERE id=?", [*values, job_id])

    def _delete(self, job_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM video_jobs WHERE id=?", (job_id,)).rowcount > 0

    def _list(self, after: str | None, limit: int, order: str) -> tuple[list[VideoJob], bool]:
        direction, compare = ("DESC", "<") if order == "desc" else ("ASC", ">")
        query = f"SELECT {', '.join(_COLUMNS)} FROM video_jobs"
        args: list[Any] = []
        if after is not None:
            query += f" WHERE seq {compare} (SELECT seq FROM video_jobs WHERE id=?)"
            args.append(after)
        query += f" ORDER BY seq {direction} LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [self._row(r) for r in rows[:limit]], len(rows) > limit

    async def insert(self, job: VideoJob) -> None:
        await asyncio.to_thread(self._insert, job)

    async def get(self, job_id: str) -> VideoJob | None:
        return await asyncio.to_thread(self._get, job_id)

    async def update(self, job_id: str, **changes: Any) -> None:
        await asyncio.to_thread(self._update, job_id, **changes)

    async def delete(self, job_id: str) -> bool:
        return await asyncio.to_thread(self._delete, job_id)

    async def list(self, after: str | None, limit: int, order: str) -> tuple[list[VideoJob], bool]:
        return await asyncio.to_thread(self._list, after, limit, order)


def video_inputs(params: VideoParams, image: bytes | None) -> dict[str, np.ndarray]:
    return VIDEO.request_tensors(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt or None,
        height=params.height,
        width=params.width,
        num_frames=params.num_frames,
        fps=params.fps,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        seed=params.seed,
        image=image,
    )


VARIANTS = {"video": "video/mp4", "thumbnail": "image/webp", "spritesheet": "image/jpeg"}
_VARIANT_FILES = {"video": "video.mp4", "thumbnail": "thumbnail.webp", "spritesheet": "spritesheet.jpg"}


def media_key(job_id: str, variant: str = "video") -> str:
    """Where a job's file of one content variant is stored (made from the job id, never from user input)."""
    return f"videos/{job_id}/{_VARIANT_FILES[variant]}"


class VideoJobRunner:
    """Runs jobs as tasks, at most ``model.instances`` at a time per model, and at most ``max_pending`` waiting
    or running per model (beyond that, creation is refused with 429)."""

    def __init__(self, store: VideoJobStore, backend: TritonBackend, storage: MediaStorage, max_pending: int) -> None:
        self.store = store
        self.backend = backend
        self.storage = storage
        self.max_pending = max_pending
        self._tasks: dict[str, asyncio.Task] = {}
        self._pending: dict[str, int] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def submit(self, job: VideoJob, model: ServedModel, params: VideoParams, image: bytes | None) -> None:
        if self._pending.get(model.triton_name, 0) >= self.max_pending:
            raise OpenAIError(
                429,
                f"too many videos are waiting for {model.id}; retry later",
                code="queue_full",
                headers={"retry-after": "10"},
            )
        await self.store.insert(job)
        self._pending[model.triton_name] = self._pending.get(model.triton_name, 0) + 1
        task = asyncio.create_task(self._run(job.id, model, params, image), name=job.id)
        self._tasks[job.id] = task

        def finished(_: asyncio.Task) -> None:
            self._tasks.pop(job.id, None)
            self._pending[model.triton_name] -= 1

        task.add_done_callback(finished)

    def _slot(self, model: ServedModel) -> asyncio.Semaphore:
        if model.triton_name not in self._slots:
            self._slots[model.triton_name] = asyncio.Semaphore(max(1, model.instances))
        return self._slots[model.triton_name]

    async def _run(self, job_id: str, model: ServedModel, params: VideoParams, image: bytes | None) -> None:
        async with self._slot(model):
            await self.store.update(job_id, status="in_progress")
            try:
                final = await self._generate(job_id, model, params, image)
                key = media_key(job_id)
                await asyncio.to_thread(self.storage.put, key, bytes(final["VIDEO"][0]), "video/mp4")
                await self.store.update(
                    job_id,
                    status="completed",
                    progress=100,
                    completed_at=int(time.time()),
                    media_key=key,
                    inference_time_s=round(float(final["INFERENCE_TIME_S"][0]), 3),
                )
            except asyncio.CancelledError:
                raise
            except OpenAIError as exc:
                await self.store.update(
                    job_id,
                    status="failed",
                    completed_at=int(time.time()),
                    error={"code": exc.code or "generation_failed", "message": exc.message},
                )
            except StorageUnavailable as exc:
                await self.store.update(
                    job_id,
                    status="failed",
                    completed_at=int(time.time()),
                    error={"code": "storage_unavailable", "message": f"media storage failed: {exc}"},
                )
            except Exception as exc:  # anything unexpected: the job fails, the server keeps going
                log.exception("video job %s failed", job_id)
                await self.store.update(
                    job_id,
                    status="failed",
                    completed_at=int(time.time()),
                    error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"},
                )

    async def _generate(
        self, job_id: str, model: ServedModel, params: VideoParams, image: bytes | None
    ) -> dict[str, np.ndarray]:
        reported = 0
        stream = self.backend.stream(model, video_inputs(params, image), VIDEO_OUTPUTS, lambda out: "VIDEO" in out)
        async for response in stream:
            if "VIDEO" in response:
                return response
            if "PROGRESS" in response:
                done, total = (int(v) for v in response["PROGRESS"].reshape(-1)[:2])
                percent = min(99, int(100 * done / max(total, 1)))
                if percent > reported:
                    reported = percent
                    await self.store.update(job_id, progress=percent)
        raise OpenAIError(500, "the model finished without a video", code="generation_failed")

    async def wait(self, job_id: str) -> VideoJob | None:
        """Wait for a job to end without cancelling it if the waiter is cancelled."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait({task})
        return await self.store.get(job_id)

    async def cancel(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    async def close(self) -> None:
        for job_id in list(self._tasks):
            await self.cancel(job_id)
