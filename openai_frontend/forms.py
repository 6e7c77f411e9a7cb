"""Request bodies that are not plain JSON models: multipart forms (what the OpenAI SDK sends for uploads,
with every field a string and nested fields as ``key[sub]``), and validation of the fields they carry."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from openai_frontend.errors import invalid

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
_NESTED_KEY = re.compile(r"^(\w+)\[(\w+)\]$")
M = TypeVar("M", bound=BaseModel)


async def read_multipart(request: Request, file_fields: set[str]) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """Text fields (nested ``key[sub]`` folded into dicts) and the uploaded files of the allowed parts."""
    try:
        form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
    except Exception as exc:  # python-multipart's parse errors have no common base worth naming
        raise invalid(f"the multipart body could not be parsed: {exc}") from exc
    fields: dict[str, Any] = {}
    files: dict[str, list[bytes]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in file_fields:
                raise invalid(f"unexpected file part '{key}'", key)
            files.setdefault(key, []).append(await value.read())
        elif match := _NESTED_KEY.match(key):
            fields.setdefault(match.group(1), {})[match.group(2)] = value
        else:
            fields[key] = value
    return fields, files


def parse_fields(model: type[M], data: Any) -> M:
    """Validate a request body into ``model``, failing as OpenAI does: 400 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = f"{param} is required" if first["type"] == "missing" else f"{param}: {first['msg']}"
        raise invalid(message, param) from exc
