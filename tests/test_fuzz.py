"""Schema-driven fuzzing: schemathesis generates requests from the frontend's own OpenAPI document
(``/openapi.json``) against a real stack, valid ones and deliberately invalid ones, and the server must never
answer 5xx nor leave a request hanging.

The document is used as the server publishes it, with two pieces of knowledge added so that valid requests
reach the models instead of all ending as 404s: which model ids each endpoint serves (an ``enum`` on
``model``), and a few sizes within the tiny models' limits. Negative generation still mutates both. The CLI
runs as a subprocess; its JSON and HAR reports give the counts (every request and its status).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis  # noqa: F401 - installed by scripts/setup.sh; a missing fuzzer is a failure, not a skip

from scripts.reliability_report import record
from tests.conftest import Stack, start_stack
from tests.test_bad_input import I2V, IMAGE, T2V, TEXT, reliability_specs

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend, and runs schemathesis against them

MIN_REQUESTS = 1000
REQUEST_TIMEOUT_S = 60  # a request that takes longer counts as a hang
SIZES = ["16x16", "32x16", "64x64", "auto"]


def _integers(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _numbers(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high}


# What valid values look like for the tiny models (their limits are model configuration, so the published
# document cannot state them): positive generation stays mostly valid and reaches the models.
VALID = {
    "prompt": {"type": "string", "pattern": "[a-z]", "maxLength": 40},  # not blank
    "n": _integers(1, 2),
    "num_inference_steps": _integers(1, 2),
    "guidance_scale": _numbers(0, 10),
    "seed": _integers(0, 2**32),
    "output_compression": _integers(0, 100),
    "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
    "seconds": {"type": "string", "enum": ["0.5", "1", "2"]},
    "num_frames": {"type": "integer", "enum": [5, 9]},
    "fps": _integers(4, 16),
    "max_tokens": _integers(1, 8),
    "max_completion_tokens": _integers(1, 8),
    "block_length": _integers(1, 8),
    "steps": _integers(1, 8),
    "threshold": _numbers(0, 1),
    "temperature": _numbers(0, 2),
    "messages": {
        "type": "array",
        "minItems": 1,
        "maxItems": 3,
        "items": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}},
        },
    },
}
MODELS = {
    "/v1/images/generations": [IMAGE],
    "/v1/images/edits": [IMAGE],
    "/v1/videos": [T2V, I2V],
    "/v1/chat/completions": [TEXT],
    "/v1/completions": [TEXT],
}


@pytest.fixture(scope="module")
def stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # At most two videos wait per model: generated job requests beyond that get 429, not a growing queue.
    yield from start_stack(
        reliability_specs(tiny_models), tmp_path_factory.mktemp("fuzz"), frontend_args=("--max-pending-videos", "2")
    )


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        return document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def _object_schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema with ``properties`` in the document (components, inline bodies, nested ``nvext``)."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            yield node
        for value in node.values():
            yield from _object_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _object_schemas(value)


def with_test_data(document: dict[str, Any], video_id: str, media_key: str) -> dict[str, Any]:
    """The published document plus the served model ids, sizes within limits, and example ids of stored
    objects (so GET/DELETE on them reach real records as well as missing ones)."""
    for path, models in MODELS.items():
        for operation in document["paths"].get(path, {}).values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                properties = _resolve(document, media["schema"]).get("properties", {})
                if "model" in properties:  # required where several models serve the endpoint
                    properties["model"] = {"type": "string", "enum": models}
                    if len(models) > 1:
                        media["schema"].setdefault("required", []).append("model")
                if "size" in properties:
                    properties["size"] = {"type": "string", "enum": SIZES}
    for schema in _object_schemas(document):
        for name, constraint in VALID.items():
            if name in schema["properties"]:
                required = name in schema.get("required", ())
                schema["properties"][name] = constraint if required else {"anyOf": [constraint, {"type": "null"}]}
    examples = {"video_id": video_id, "key": media_key, "model_id": IMAGE}
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in examples:
                    parameter["example"] = examples[parameter["name"]]
    return document


def run_schemathesis(base_url: str, schema: Path, reports: Path, max_examples: int, seed: int) -> dict[str, Any]:
    """Run the CLI and read back: test cases, every request's status and duration, failures and errors."""
    cli = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    command = [
        cli,
        "run",
        str(schema),
        "--url",
        base_url,
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",  # hypothesis is not thread-safe here: two workers crashed it (AST recursion depth mismatch)
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--no-shrink",
        "--continue-on-failure",
        "--suppress-health-check",
        "all",
        "--report",
        "json,har",
        "--report-json-path",
        str(reports / "run.json"),
        "--report-har-path",
        str(reports / "requests.har"),
    ]
    start = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.monotonic() - start
    report = json.loads((reports / "run.json").read_text())
    entries = json.loads((reports / "requests.har").read_text())["log"]["entries"]
    statuses = Counter(entry["response"]["status"] for entry in entries)
    return {
        "exit_code": completed.returncode,
        "output_tail": completed.stdout[-3000:] + completed.stderr[-2000:],
        "seconds": round(elapsed, 1),
        "test_cases": report["test_cases"]["generated"],
        "requests": len(entries),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "server_errors": sum(count for status, count in statuses.items() if status >= 500),
        "posts_answered_200": sum(
            1 for e in entries if e["request"]["method"] == "POST" and e["response"]["status"] == 200
        ),
        "slowest_request_s": round(max((entry["time"] for entry in entries), default=0) / 1000, 2),
        "failures": report["failures"],
        "errors": report["errors"],
        "operations": report["operations"]["tested"],
    }


def test_generated_requests_never_get_a_5xx_or_hang(stack: Stack, tmp_path: Path) -> None:
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        video = http.post(
            "/v1/videos", json={"model": T2V, "prompt": "x", "size": "16x16", "num_frames": 5, "response_format": "url"}
        ).json()
        image = http.post("/v1/images/generations", json={"model": IMAGE, "prompt": "x", "size": "16x16"}).json()
        media_key = image["data"][0]["url"].split("/media/", 1)[1]
        document = with_test_data(http.get("/openapi.json").json(), video["id"], media_key)
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(document))

    result = run_schemathesis(stack.url, schema, tmp_path, max_examples=30, seed=20261126)
    record("fuzz", {key: value for key, value in result.items() if key != "output_tail"})

    assert not result["errors"], f"requests that errored or timed out: {result['errors']}\n{result['output_tail']}"
    assert result["server_errors"] == 0, f"{result['failures']}\n{result['output_tail']}"
    assert not result["failures"], result["output_tail"]
    assert result["requests"] >= MIN_REQUESTS, result
    assert result["operations"] == sum(len(operations) for operations in document["paths"].values())
    assert result["posts_answered_200"] > 100, "valid generation requests reached the models too"
    with httpx.Client(base_url=stack.url, timeout=120) as http:  # and the server still serves
        ready = http.get("/health/ready")
        assert ready.status_code == 200, ready.text
