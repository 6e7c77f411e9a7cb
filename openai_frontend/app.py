"""The FastAPI application: routers, error handlers, request metrics, and the lifespan that owns clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openai_frontend.context import FrontendContext, FrontendMetrics, FrontendSettings
from openai_frontend.errors import install_error_handlers
from openai_frontend.responses import JSONResponse
from openai_frontend.routers import completions, images, media, models, observability, videos
from openai_frontend.routers.playground import mount_playground
from openai_frontend.security import ApiKeyMiddleware, BodyLimitMiddleware
from openai_frontend.storage import open_storage
from openai_frontend.triton import TritonBackend
from openai_frontend.triton.targets import targets
from openai_frontend.video_jobs import VideoJobRunner, VideoJobStore


def create_app(settings: FrontendSettings) -> FastAPI:
    """Opening the media and job stores happens here, not in the lifespan, so a bad ``--fs-url`` or
    ``--job-store`` stops startup with a clear message (``StorageUnavailable``/``JobStoreUnavailable``/
    ``ValueError``) before the server binds its port."""
    targets(settings.triton_urls, settings.triton_metrics_urls)  # a malformed dns: URL stops startup here
    metrics = FrontendMetrics()
    storage = open_storage(settings.fs_url, settings.presign_expiry)
    store = VideoJobStore(settings.job_store_url, lease_s=settings.job_lease_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, FrontendContext]]:
        backend = TritonBackend(
            settings.triton_urls, settings.triton_metrics_urls, dns_refresh_s=settings.triton_dns_refresh_s
        )
        jobs = VideoJobRunner(
            store,
            backend,
            storage,
            settings.max_pending_videos,
            max_attempts=settings.job_max_attempts,
            poll_interval=settings.video_poll_ms / 1000,
            takeovers=metrics.video_takeovers,
        )
        jobs.start()
        ctx = FrontendContext(settings=settings, backend=backend, storage=storage, video_jobs=jobs, metrics=metrics)
        try:
            yield {"ctx": ctx}
        finally:
            await jobs.close()
            store.close()
            await backend.close()

    app = FastAPI(
        title="Triton diffusion: OpenAI-compatible API",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    for module in (models, completions, images, videos, media, observability):
        app.include_router(module.router)
    mount_playground(app)

    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


class RequestMetricsMiddleware:
    """Requests by route and status, and their latency (until the last byte is sent). Plain ASGI rather than
    ``@app.middleware("http")``, whose ``BaseHTTPMiddleware`` costs a task group and a body stream per request."""

    def __init__(self, app: ASGIApp, metrics: FrontendMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")  # set by the router on this same scope
            path = route.path if isinstance(route, APIRoute) else "unmatched"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
