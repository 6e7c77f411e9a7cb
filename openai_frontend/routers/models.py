"""``GET /v1/models``: the models Triton has loaded, under the ids clients send as ``model``."""

from __future__ import annotations

from fastapi import APIRouter

from openai_frontend.context import Ctx
from openai_frontend.errors import OpenAIError
from openai_frontend.schemas.common import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(ctx: Ctx) -> ModelList:
    models = await ctx.backend.models()
    return ModelList(data=[ModelCard(id=m.id, created=m.created, task=m.task) for m in models])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, ctx: Ctx) -> ModelCard:
    for m in await ctx.backend.models():
        if m.id == model_id:
            return ModelCard(id=m.id, created=m.created, task=m.task)
    raise OpenAIError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")
