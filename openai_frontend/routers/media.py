"""``GET /media/{key}``: serves stored files when no ``--http-url`` (or presigning store) serves them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from diffusion_runtime.media import CONTENT_TYPES
from openai_frontend.context import Ctx
from openai_frontend.errors import OpenAIError

router = APIRouter()


@router.get("/media/{key:path}", name="get_media")
async def get_media(key: str, ctx: Ctx) -> Response:
    try:
        data = await asyncio.to_thread(ctx.storage.get, key)
    except KeyError:
        data = None
    if data is None:
        raise OpenAIError(404, f"no stored file '{key}'", code="not_found")
    media_type = CONTENT_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
    return Response(data, media_type=media_type, headers={"cache-control": "public, max-age=86400, immutable"})
