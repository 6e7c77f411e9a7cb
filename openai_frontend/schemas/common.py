"""Wire shapes shared by every resource."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from openai_frontend.errors import invalid


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "triton-diffusion"
    task: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class KnobsFromNvExt(BaseModel):
    """A request whose extra knobs may come at the top level (the OpenAI SDK's ``extra_body``) or inside
    ``nvext`` (as the seed's clients send them)."""

    model_config = ConfigDict(extra="allow")

    def knob(self, name: str) -> object:
        """Giving a knob both ways with different values is an error rather than a silent choice."""
        top = getattr(self, name)
        nvext = getattr(self, "nvext", None)
        nested = getattr(nvext, name, None) if nvext is not None else None
        if top is not None and nested is not None and top != nested:
            raise invalid(f"{name} is given both at the top level and in nvext with different values", name)
        return top if top is not None else nested
