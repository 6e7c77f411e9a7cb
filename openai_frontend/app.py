"""The FastAPI application: routers, error handlers, request metrics, and the lifespan that owns clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute

from openai_frontend.context import FrontendContext, FrontendMetrics, FrontendSettings
from openai_frontend.errors import install_error_handlers
from openai_frontend.routers import images, media, models, observability
from openai_frontend.storage import open_storage
from openai_frontend.triton import TritonBackend


def create_app(settings: FrontendSettings) -> FastAPI:
    metrics = FrontendMetrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, FrontendContext]]:
        backend = TritonBackend(settings.triton_url, settings.triton_metrics_url)
        ctx = FrontendContext(
            settings=settings, backend=backend, storage=open_storage(settings.fs_url), metrics=metrics
        )
        try:
            yield {"ctx": ctx}
        finally:
            await backend.close()

    app = FastAPI(title="Triton diffusion: OpenAI-compatible API", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    for module in (models, images, media, observability):
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
