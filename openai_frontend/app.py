"""The FastAPI application: routers, error handlers, request metrics, and the lifespan that owns clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute

from openai_frontend.context import FrontendContext, FrontendMetrics, FrontendSettings
from openai_frontend.errors import install_error_handlers
from openai_frontend.routers import completions, images, media, models, observability, videos
from openai_frontend.security import ApiKeyMiddleware, BodyLimitMiddleware
from openai_frontend.storage import open_storage
from openai_frontend.triton import TritonBackend
from openai_frontend.video_jobs import VideoJobRunner, VideoJobStore


def create_app(settings: FrontendSettings) -> FastAPI:
    """Opening the media store happens here, not in the lifespan, so a bad ``--fs-url`` stops startup with a
    clear message (``StorageUnavailable``/``ValueError``) before the server binds its port."""
    metrics = FrontendMetrics()
    storage = open_storage(settings.fs_url, settings.presign_expiry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, FrontendContext]]:
        backend = TritonBackend(settings.triton_urls, settings.triton_metrics_urls)
        store = VideoJobStore(Path(settings.state_dir) / "videos.sqlite3")
        jobs = VideoJobRunner(store, backend, storage, settings.max_pending_videos)
        ctx = FrontendContext(settings=settings, backend=backend, storage=storage, video_jobs=jobs, metrics=metrics)
        try:
            yield {"ctx": ctx}
        finally:
            await jobs.close()
            store.close()
            await backend.close()

    app = FastAPI(title="Triton diffusion: OpenAI-compatible API", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    for module in (models, completions, images, videos, media, observability):
        app.include_router(module.router)

    @app.middleware("http")
    async def record(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = route.path if isinstance(route, APIRoute) else "unmatched"
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    return app
