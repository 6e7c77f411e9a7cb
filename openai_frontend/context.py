"""What every router needs, created once by the app's lifespan and handed out as a FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from openai_frontend.storage import MediaStorage
from openai_frontend.triton import TritonBackend
from openai_frontend.video_jobs import VideoJobRunner


@dataclass(frozen=True)
class FrontendSettings:
    triton_urls: tuple[str, ...] = ("127.0.0.1:8001",)
    triton_metrics_urls: tuple[str | None, ...] = ()
    triton_dns_refresh_s: float = 10.0  # seconds between resolutions of a dns:///host:port Triton URL
    fs_url: str = "file:///tmp/triton-diffusion/media"
    http_url: str | None = None
    presign_expiry: int = 3600  # seconds a presigned S3 URL stays valid
    request_timeout: float = 600.0
    state_dir: str = "/tmp/triton-diffusion/state"  # video job records (SQLite), when job_store is not given
    job_store: str | None = None  # a SQLite path or a postgresql:// URL; None: <state_dir>/videos.sqlite3
    job_lease_s: float = 20.0  # how long a video job stays claimed without renewal before another frontend runs it
    job_max_attempts: int = 3  # runs of one video job (each ended by its frontend's death) before it fails
    video_poll_ms: int = 1000  # what openai-poll-after-ms tells pollers while a video is pending
    max_pending_videos: int = 64  # per model, queued or running; more is refused with 429
    api_keys: tuple[str, ...] = ()  # empty: no authentication (allowed only on loopback, see main)
    max_body_bytes: int = 32 * 1024 * 1024

    @property
    def job_store_url(self) -> str:
        return self.job_store or str(Path(self.state_dir) / "videos.sqlite3")


class FrontendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "openai_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "openai_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.images = Counter("openai_images_generated", "Images returned", ["model"], registry=self.registry)
        self.video_takeovers = Counter(
            "openai_video_jobs_taken_over",
            "Video jobs this frontend claimed from another (one that died, or handed them back as it stopped)",
            ["model"],
            registry=self.registry,
        )


@dataclass
class FrontendContext:
    settings: FrontendSettings
    backend: TritonBackend
    storage: MediaStorage
    video_jobs: VideoJobRunner
    metrics: FrontendMetrics = field(default_factory=FrontendMetrics)

    def media_url(self, key: str, request: Request) -> str:
        """Absolute URL of a stored object: ``--http-url`` when given, else the store's own (e.g. presigned)
        URL, else this frontend's ``/media`` route."""
        if self.settings.http_url:
            return f"{self.settings.http_url.rstrip('/')}/{key}"
        return self.storage.public_url(key) or str(request.url_for("get_media", key=key))


async def context(request: Request) -> FrontendContext:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop on every request.
    return request.state.ctx


Ctx = Annotated[FrontendContext, Depends(context)]
