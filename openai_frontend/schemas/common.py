"""Wire shapes shared by every resource."""

from __future__ import annotations

from typing import Any, Literal

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


def inline_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` written in place, for hand-written OpenAPI request bodies:
    OpenAPI resolves ``#/$defs/...`` from the document's root, where a model's own ``$defs`` are not."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)
