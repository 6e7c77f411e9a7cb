"""From a failed model call to the OpenAI error a client sees: the model writes its failure's kind into the message
(``diffusion_runtime.errors``), the frontend reads it back and maps Triton's own errors by their gRPC status
(``openai_frontend.triton.failures``), and one mapping gives the status and body (``openai_frontend.errors``).
The errors are tritonclient's and gRPC's own types, built as they arrive over the wire."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.grpc import InferenceServerException

from diffusion_runtime.errors import EngineFailure, GenerationCancelled, InvalidRequest, error_message
from openai_frontend.triton.failures import as_triton_error, model_control_refused, openai_error


def stream_error(exc: BaseException) -> InferenceServerException:
    """What tritonclient hands over for a model's error response inside a decoupled stream: the message alone."""
    return InferenceServerException(msg=error_message(exc))


def test_a_models_own_failures_keep_their_kind_inside_a_stream() -> None:
    invalid = openai_error(stream_error(InvalidRequest("seed must be at least 0", "seed")))
    assert (invalid.status, invalid.code, invalid.param) == (400, "invalid_value", "seed")
    assert invalid.message == "seed must be at least 0"
    unnamed = openai_error(stream_error(InvalidRequest("the prompt is empty")))
    assert (unnamed.status, unnamed.param) == (400, None)
    failed = openai_error(stream_error(EngineFailure("the pipeline returned no image")))
    assert (failed.status, failed.code) == (500, "generation_failed")
    assert failed.message == "generation failed: EngineFailure: the pipeline returned no image"
    cancelled = openai_error(stream_error(GenerationCancelled("cancelled by the client at step 2/8")))
    assert (cancelled.status, cancelled.code) == (499, "cancelled")


def test_the_models_message_still_reads_as_a_sentence() -> None:
    message = error_message(InvalidRequest("must be between 1 and 10", "n"))
    assert message == "invalid argument [n]: must be between 1 and 10"


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'PROMPT'", (400, "invalid_value")),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found", (404, "model_not_found")),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", (499, "cancelled")),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", (504, "timeout")),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", (503, "triton_unavailable")),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", (429, "queue_full")),
        ("StatusCode.INTERNAL", "Stub process 'image_diffusion_0_0' is not healthy.", (503, "model_unavailable")),
        ("StatusCode.INTERNAL", "Failed to process the request(s) for model instance", (500, "generation_failed")),
        (None, "Stub process 'dllm_0_0' is not healthy.", (503, "model_unavailable")),
    ],
)
def test_tritons_own_errors_map_by_status(status: str | None, message: str, expected: tuple[int, str]) -> None:
    error = openai_error(InferenceServerException(msg=message, status=status))
    assert (error.status, error.code) == expected
    response = error.response()
    if error.status == 503:
        assert response.headers["retry-after"].isdigit()
    if error.status == 429:
        assert response.headers["retry-after"] == "1"


def test_a_grpc_error_from_a_stream_maps_by_its_code() -> None:
    raw = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "Socket closed")
    error = openai_error(as_triton_error(raw))
    assert (error.status, error.code) == (503, "triton_unavailable")


def test_a_server_without_model_control_is_told_from_one_that_is_down() -> None:
    refused = InferenceServerException(
        msg="explicit model load / unload is not allowed if polling is enabled", status="StatusCode.UNAVAILABLE"
    )
    down = InferenceServerException(msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
    assert model_control_refused(refused) and not model_control_refused(down)
