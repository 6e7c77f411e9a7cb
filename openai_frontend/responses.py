"""The frontend's JSON response: serialized by pydantic-core (Rust) rather than the standard library.

An image or video answered as ``b64_json`` is megabytes of base64 inside the JSON body; ``json.dumps`` scans every
character for escapes (measured on this project's 2-core CI machine: 34 ms for a 5.5 MB MP4's body, against 10 ms
with ``pydantic_core.to_json``), time a client waits for on every such answer."""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from starlette.responses import JSONResponse as StarletteJSONResponse


class JSONResponse(StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return to_json(content)
