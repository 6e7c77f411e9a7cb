"""Video jobs: OpenAI's asynchronous ``/v1/videos`` resource on top of the decoupled ``video_generation`` model.

Job records live in a ``VideoJobStore`` (``openai_frontend.job_store``): a SQLite file beside one frontend, or
PostgreSQL shared by several. ``VideoJobRunner`` runs the jobs this frontend holds the lease on, each as an
asyncio task: it waits for a free generation slot of its model (status ``queued``), streams the model's progress
into the record (``in_progress``, renewing the lease at each step), stores the MP4 and completes the record.

A lease keeper renews the leases of every job held here and claims the jobs whose lease has run out (their
frontend died), running them again from the start. Every write is conditional on the claim: a job deleted on
any frontend is noticed at the next denoising step, and its task is cancelled, which cancels the gRPC stream,
which Triton reports to the model between steps. The MP4's key is made from the job id, so however many times a
job runs there is one file, and only the runner that still holds the claim completes the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import socket
import time
import uuid
from typing import Any

import numpy as np
from prometheus_client import Counter

from diffusion_runtime.contract import VIDEO
from diffusion_runtime.params import VideoParams
from openai_frontend.errors import OpenAIError
from openai_frontend.job_store import PENDING, ClaimedJob, JobStoreUnavailable, VideoJob, VideoJobStore
from openai_frontend.storage import MediaStorage, StorageUnavailable
from openai_frontend.triton import ServedModel, TritonBackend

log = logging.getLogger(__name__)

__all__ = ["PENDING", "VideoJob", "VideoJobRunner", "VideoJobStore"]
VIDEO_OUTPUTS = ["PROGRESS", "VIDEO", "SEED", "NUM_FRAMES", "INFERENCE_TIME_S"]
_ID_RE = re.compile(r"^video_[0-9a-f]{32}$")


def new_video_id() -> str:
    return f"video_{uuid.uuid4().hex}"


def is_video_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def new_runner_id() -> str:
    """This frontend process's name in leases: the host (a pod's name on Kubernetes), the pid, and a random tail
    so a restarted process never passes for the one before it."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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


class JobLost(Exception):
    """The job is no longer this frontend's to run: it was deleted, or another frontend took it over."""


class VideoJobRunner:
    """Runs the jobs this frontend holds, at most ``model.instances`` at a time per model, and at most
    ``max_pending`` waiting or running per model (beyond that, creation is refused with 429)."""

    def __init__(
        self,
        store: VideoJobStore,
        backend: TritonBackend,
        storage: MediaStorage,
        max_pending: int,
        *,
        runner_id: str | None = None,
        max_attempts: int = 3,
        poll_interval: float = 1.0,
        takeovers: Counter | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.storage = storage
        self.max_pending = max_pending
        self.runner_id = runner_id or new_runner_id()
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.takeovers = takeovers  # by model: how often frontends die under running jobs
        # Renew three times per lease (a missed renewal is not fatal), and look for orphaned jobs at least every
        # 2 s, so a dead frontend's job runs again within the lease plus 2 s.
        self.keeper_interval = min(store.lease_s / 3, 2.0)
        self._tasks: dict[str, asyncio.Task] = {}
        self._pending: dict[str, int] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._keeper: asyncio.Task | None = None

    def start(self) -> None:
        """Start the lease keeper (renewals and takeovers); the app's lifespan calls it."""
        self._keeper = asyncio.create_task(self._keep_leases(), name="video-job-leases")

    async def submit(self, job: VideoJob, model: ServedModel, params: VideoParams, image: bytes | None) -> None:
        if self._pending.get(model.triton_name, 0) >= self.max_pending:
            raise OpenAIError(
                429,
                f"too many videos are waiting for {model.id}; retry later",
                code="queue_full",
                headers={"retry-after": "10"},
            )
        self._reserve(model)  # before the insert's await: concurrent creations must see each other
        try:
            await self.store.insert(job, dataclasses.asdict(params), image, self.runner_id)
        except BaseException:
            self._pending[model.triton_name] -= 1
            raise
        self._launch(job.id, model, params, image)

    def _reserve(self, model: ServedModel) -> None:
        self._pending[model.triton_name] = self._pending.get(model.triton_name, 0) + 1

    def _launch(self, job_id: str, model: ServedModel, params: VideoParams, image: bytes | None) -> None:
        task = asyncio.create_task(self._run(job_id, model, params, image), name=job_id)
        self._tasks[job_id] = task

        def finished(_: asyncio.Task) -> None:
            self._tasks.pop(job_id, None)
            self._pending[model.triton_name] -= 1

        task.add_done_callback(finished)

    def _slot(self, model: ServedModel) -> asyncio.Semaphore:
        if model.triton_name not in self._slots:
            self._slots[model.triton_name] = asyncio.Semaphore(max(1, model.instances))
        return self._slots[model.triton_name]

    async def _run(self, job_id: str, model: ServedModel, params: VideoParams, image: bytes | None) -> bytes | None:
        """The job, to its end; the MP4 when it completed here (a blocking create answers with it, rather than
        reading back what was just stored)."""
        async with self._slot(model):
            try:
                await self._step(job_id, 0)  # in_progress from here on
                final = await self._generate(job_id, model, params, image)
                key = media_key(job_id)
                video = bytes(final["VIDEO"][0])
                await asyncio.to_thread(self.storage.put, key, video, "video/mp4")
                completed = {
                    "status": "completed",
                    "progress": 100,
                    "completed_at": int(time.time()),
                    "media_key": key,
                    "inference_time_s": round(float(final["INFERENCE_TIME_S"][0]), 3),
                }
                if await self._finish(job_id, completed):
                    return video
                await self._forget_media_of_deleted(job_id)
            except asyncio.CancelledError:
                raise
            except JobLost:
                log.info("video job %s was deleted or taken over elsewhere; stopped running it here", job_id)
            except OpenAIError as exc:
                await self._fail(job_id, exc.code or "generation_failed", exc.message)
            except StorageUnavailable as exc:
                await self._fail(job_id, "storage_unavailable", f"media storage failed: {exc}")
            except Exception as exc:  # anything unexpected: the job fails, the server keeps going
                log.exception("video job %s failed", job_id)
                await self._fail(job_id, "internal_error", f"{type(exc).__name__}: {exc}")
        return None

    async def _fail(self, job_id: str, code: str, message: str) -> None:
        await self._finish(
            job_id, {"status": "failed", "completed_at": int(time.time()), "error": {"code": code, "message": message}}
        )

    async def _finish(self, job_id: str, changes: dict[str, Any], patience: float = 120.0) -> bool:
        """Write the final state, waiting out a job store that is briefly down (a database restart) rather than
        losing a finished video. False when the job is no longer ours (deleted, or taken over)."""
        deadline = time.monotonic() + patience
        delay = 0.2
        while True:
            try:
                return await self.store.finish(job_id, self.runner_id, **changes)
            except JobStoreUnavailable as exc:
                if time.monotonic() > deadline:
                    log.error("video job %s: could not record its end (%s): %s", job_id, changes["status"], exc)
                    return False
                log.warning("video job %s: the job store is unavailable, retrying its end: %s", job_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _forget_media_of_deleted(self, job_id: str) -> None:
        """A job deleted while its file was being stored leaves no file behind (a takeover's file stays: the same
        key is written again by the frontend that runs the job now)."""
        with contextlib.suppress(JobStoreUnavailable):
            if await self.store.get(job_id) is None:
                for variant in VARIANTS:
                    await asyncio.to_thread(self.storage.delete, media_key(job_id, variant))

    async def _generate(
        self, job_id: str, model: ServedModel, params: VideoParams, image: bytes | None
    ) -> dict[str, np.ndarray]:
        stream = self.backend.stream(model, video_inputs(params, image), VIDEO_OUTPUTS, lambda out: "VIDEO" in out)
        async with contextlib.aclosing(stream):  # leaving early cancels the Triton request
            async for response in stream:
                if "VIDEO" in response:
                    return response
                if "PROGRESS" in response:
                    done, total = (int(v) for v in response["PROGRESS"].reshape(-1)[:2])
                    await self._step(job_id, min(99, int(100 * done / max(total, 1))))
        raise OpenAIError(500, "the model finished without a video", code="generation_failed")

    async def _step(self, job_id: str, percent: int) -> None:
        """At every denoising step: record progress, renew the lease and learn whether the job is still ours."""
        try:
            still_ours = await self.store.progress(job_id, self.runner_id, percent)
        except JobStoreUnavailable as exc:  # keep generating; the keeper renews the lease once the store is back
            log.warning("video job %s: progress not recorded: %s", job_id, exc)
            return
        if not still_ours:
            raise JobLost

    async def _keep_leases(self) -> None:
        while True:
            try:
                await self._renew_and_claim()
            except JobStoreUnavailable as exc:
                log.warning("video job leases: the job store is unavailable: %s", exc)
            except Exception:  # the keeper must outlive any one failure
                log.exception("video job leases: renewal failed")
            await asyncio.sleep(self.keeper_interval)

    async def _renew_and_claim(self) -> None:
        held = [job_id for job_id, task in self._tasks.items() if not task.done()]
        ours = await self.store.renew(self.runner_id, held)
        for job_id in set(held) - ours:
            job = await self.store.get(job_id)
            task = self._tasks.get(job_id)
            if task is not None and (job is None or job.status in PENDING):  # deleted, or run elsewhere now
                task.cancel()
        room = self.max_pending - max(self._pending.values(), default=0)
        if room <= 0:
            return
        claimed, failed = await self.store.claim_expired(self.runner_id, room, self.max_attempts)
        for job in failed:
            log.warning("video job %s failed for good: %s", job.id, job.error)
        for claim in claimed:
            await self._take_over(claim)

    async def _take_over(self, claim: ClaimedJob) -> None:
        job = claim.job
        try:
            model = await self.backend.resolve(job.model, "video")
        except OpenAIError as exc:  # this frontend does not serve the model: leave the job to one that does
            log.warning("video job %s needs %s, which is not served here: %s", job.id, job.model, exc)
            await self.store.release(self.runner_id, [job.id])
            return
        log.info("video job %s: taken over (attempt %d of %d)", job.id, claim.attempt, self.max_attempts)
        if self.takeovers is not None:
            self.takeovers.labels(model.id).inc()
        self._reserve(model)
        self._launch(job.id, model, VideoParams(**claim.request), claim.input_image)

    async def wait(self, job_id: str) -> tuple[VideoJob | None, bytes | None]:
        """Wait for a job to end without cancelling it if the waiter is cancelled (a job run elsewhere is
        followed through the store). Returns the job and, when it completed here, its MP4."""
        task = self._tasks.get(job_id)
        video = None
        if task is not None:
            await asyncio.wait({task})
            video = None if task.cancelled() or task.exception() is not None else task.result()
        while (job := await self.store.get(job_id)) is not None and job.status in PENDING:
            await asyncio.sleep(self.poll_interval)
        return job, video

    async def cancel(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    async def abandon(self, job_id: str, code: str, message: str) -> None:
        """Stop a job here and record why it failed (its blocking client went away)."""
        await self.cancel(job_id)
        await self._fail(job_id, code, message)

    async def close(self) -> None:
        """Stop: the jobs running here are handed back at once, for another frontend (or this one restarted) to
        run, rather than after their lease runs out."""
        if self._keeper is not None:
            self._keeper.cancel()
        held = list(self._tasks)
        for job_id in held:
            await self.cancel(job_id)
        with contextlib.suppress(JobStoreUnavailable):
            handed_back = await self.store.release(self.runner_id, held)
            if handed_back:
                log.info("handed %d unfinished video job(s) back to the job store", handed_back)
