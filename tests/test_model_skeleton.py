"""The shared model skeleton without Triton: reading a request's inputs by the contract, the dLLM's request streams
and where they run, and the image path's answer from the encoder thread (``triton_model``, ``triton_streams``)."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from diffusion_runtime.contract import IMAGE, TEXT
from diffusion_runtime.errors import InvalidRequest, error_message
from diffusion_runtime.media import edit_inputs
from diffusion_runtime.triton_io import read_strings
from diffusion_runtime.triton_model import Denoised, DiffusionModel
from diffusion_runtime.triton_streams import RETIRED_REQUESTS, RequestStream, StreamRunner

FINAL = 1


class FakeStub:
    """Just enough of ``triton_python_backend_utils`` for the skeleton: inputs, responses, errors."""

    TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self.name, self.array = name, array

        def as_numpy(self) -> np.ndarray:
            return self.array

    class TritonError:
        INVALID_ARG, CANCELLED, INTERNAL = "INVALID_ARG", "CANCELLED", "INTERNAL"

        def __init__(self, message: str, code: str) -> None:
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None) -> None:
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(request: FakeRequest, name: str):
        array = request.inputs.get(name)
        return None if array is None else FakeStub.Tensor(name, array)


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[object, int]] = []
        self.cancelled = False

    def send(self, response, flags: int = 0) -> None:
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        return self.cancelled


class FakeRequest:
    def __init__(self, wanted: tuple[str, ...] = (), **inputs: np.ndarray) -> None:
        self.inputs, self.wanted, self.sender = inputs, wanted, FakeSender()

    def get_response_sender(self) -> FakeSender:
        return self.sender

    def requested_output_names(self) -> list[str]:
        return list(self.wanted)


def _strings(*values: bytes) -> np.ndarray:
    return np.array(values, dtype=np.object_)


def test_a_list_input_is_its_strings_or_the_json_list_one_string_holds() -> None:
    def stop(array: np.ndarray | None):
        request = FakeRequest() if array is None else FakeRequest(STOP=array)
        return read_strings(FakeStub, request, "STOP", "stop")

    assert stop(_strings(b"\n", b"END")) == ["\n", "END"]
    assert stop(_strings(b'["\\n", "END"]')) == ["\n", "END"], "clients that send one tensor"
    assert stop(_strings(b"[not json")) == ["[not json"], "a stop string that merely starts with ["
    assert stop(None) is None and stop(_strings()) is None
    with pytest.raises(InvalidRequest) as bad:
        stop(_strings(b"\xff"))
    assert error_message(bad.value) == "invalid argument [stop]: input STOP is not valid UTF-8"


def test_the_skeleton_reads_each_kind_of_input_by_the_contracts_fields() -> None:
    class TextModel(DiffusionModel):
        contract = TEXT
        pb_utils = FakeStub

    class ImageModel(DiffusionModel):
        contract = IMAGE
        pb_utils = FakeStub

    request = FakeRequest(PROMPT=_strings(b"hi"), STOP=_strings(b"END"), INPUT_IMAGE=_strings(b"\x89PNG"))
    assert TextModel().lists(request) == {"stop": ["END"]}
    assert TextModel().settings(request)["prompt"] == "hi"
    assert ImageModel().files(request) == {"image": b"\x89PNG", "mask": None}


def test_a_request_stream_sends_nothing_and_asks_nothing_after_its_final_response() -> None:
    sender = FakeSender()
    stream = RequestStream(request=object(), sender=sender, final_flag=FINAL)
    sender.cancelled = True
    stream.send("block")
    assert stream.is_cancelled()
    stream.send("last", flags=FINAL)
    assert not stream.is_cancelled(), "a finished request reads as not cancelled"
    with pytest.raises(RuntimeError, match="already sent"):
        stream.send("late")
    assert sender.sent == [("block", 0), ("last", FINAL)]


def test_one_place_runs_requests_on_the_calling_thread_and_more_run_on_workers() -> None:
    def run(stream: RequestStream, threads: list[str]) -> None:
        threads.append(threading.current_thread().name)
        stream.send("done", flags=FINAL)

    alone = StreamRunner(1, FINAL, thread_name_prefix="dllm")
    here: list[str] = []
    alone.start(object(), FakeSender(), run, here)
    alone.start(object(), FakeSender(), run, here)  # its place was given back
    assert here == [threading.current_thread().name] * 2
    alone.close()

    together = StreamRunner(2, FINAL, thread_name_prefix="dllm")
    there: list[str] = []
    for _ in range(RETIRED_REQUESTS + 2):
        together.start(object(), FakeSender(), run, there)
    together.close()
    assert len(there) == RETIRED_REQUESTS + 2 and all(name.startswith("dllm") for name in there)
    assert len(together._retired) == RETIRED_REQUESTS, "finished requests are kept alive, the last ones"


def test_a_failing_request_gives_its_place_back() -> None:
    def run(stream: RequestStream) -> None:
        raise RuntimeError("engine died")

    runner = StreamRunner(1, FINAL, thread_name_prefix="dllm")
    with pytest.raises(RuntimeError):
        runner.start(object(), FakeSender(), run)
    assert runner._places.acquire(blocking=False), "the place is free again"


class Metrics:
    def __init__(self) -> None:
        self.recorded: list[tuple] = []

    def request(self, outcome: str) -> None:
        self.recorded.append(("request", outcome))

    def seconds(self, phase: str, seconds: float) -> None:
        self.recorded.append(("seconds", phase))

    def steps(self, count: int) -> None:
        self.recorded.append(("steps", count))


class EncodingModel(DiffusionModel):
    contract = IMAGE
    pb_utils = FakeStub

    def __init__(self) -> None:
        self.encoder = ThreadPoolExecutor(1)
        self.metrics = Metrics()

    def denoise(self, request: FakeRequest) -> Denoised:
        if "PROMPT" not in request.inputs:
            raise InvalidRequest("a prompt is required", "prompt")
        return Denoised(params=None, samples=[b"file"], seconds=0.5, steps=4)

    def encode(self, denoised: Denoised) -> dict[str, np.ndarray]:
        return {"IMAGES": np.array(denoised.samples, dtype=np.object_), "INFERENCE_TIME_S": np.zeros(1)}


def test_denoised_requests_are_answered_from_the_encoder_thread_with_the_outputs_asked_for() -> None:
    model = EncodingModel()
    good, bad = FakeRequest(("IMAGES",), PROMPT=_strings(b"a fox")), FakeRequest(("IMAGES",))
    model.denoise_then_encode(good, model.denoise, model.encode)
    model.denoise_then_encode(bad, model.denoise, model.encode)
    model.encoder.shutdown(wait=True)
    [(response, flags)] = good.sender.sent
    assert flags == FINAL and list(response.outputs) == ["IMAGES"], "only what the client asked for"
    [(failed, flags)] = bad.sender.sent
    assert flags == FINAL and failed.error.code == "INVALID_ARG"
    assert model.metrics.recorded == [
        ("request", "success"),
        ("seconds", "denoise"),
        ("steps", 4),
        ("seconds", "encode"),
        ("request", "InvalidRequest"),
    ]


class GoneSender(FakeSender):
    """A request whose client left: Triton refuses its response."""

    def send(self, response, flags: int = 0) -> None:
        raise RuntimeError("the request was cancelled")


def test_an_answer_that_cannot_be_sent_is_counted_as_a_failure_not_a_success() -> None:
    model = EncodingModel()
    request = FakeRequest(("IMAGES",), PROMPT=_strings(b"a fox"))
    request.sender = GoneSender()
    model.denoise_then_encode(request, model.denoise, model.encode)
    model.encoder.shutdown(wait=True)
    assert model.metrics.recorded == [("request", "RuntimeError")], "no success, no timings for an unsent answer"


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def test_edit_inputs_are_fitted_to_the_requested_size_and_a_mask_needs_an_image() -> None:
    assert edit_inputs(None, None, 64, 32) == (None, None)
    image, mask = edit_inputs(_png((128, 128)), _png((128, 128), "RGBA"), 64, 32)
    assert image.size == mask.size == (64, 32) and mask.mode == "L"
    with pytest.raises(InvalidRequest, match="a mask needs an image"):
        edit_inputs(None, _png((8, 8)), 64, 32)
