"""Liveness, readiness and Prometheus metrics (the frontend's own, followed by Triton's)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from openai_frontend.context import Ctx
from openai_frontend.responses import JSONResponse

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(ctx: Ctx) -> JSONResponse:
    is_ready, detail = await ctx.backend.readiness()
    return JSONResponse(
        {"status": "ready" if is_ready else "not ready", **detail}, status_code=200 if is_ready else 503
    )


@router.get("/metrics")
async def metrics(ctx: Ctx) -> PlainTextResponse:
    text = generate_latest(ctx.metrics.registry).decode() + await ctx.backend.metrics_text()
    return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)
