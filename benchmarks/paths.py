"""The three ways of making one generation: bare (the engine in this process, plus encoding), through Triton
alone (``tritonclient`` gRPC), and served (HTTP to the OpenAI frontend → Triton → model). The CPU benchmark uses
all three; the GPU benchmark sets the same bare engines beside its served requests.

Each call returns a ``Call``: wall time from sending the request to having the whole answer (the client's
JSON and base64 decoding are left out: they are the caller's business, not the server's), the files, and
for the bare path the engine's own generation time. For the served paths the generation time comes from the
model's ``diffusion_seconds_total{phase="denoise"}`` counter (see ``overhead.py``).
"""

from __future__ import annotations

import base64
import json
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from benchmarks.workloads import ImageJob, TextJob, VideoJob


@dataclass
class Call:
    wall_s: float
    files: list[bytes] = field(default_factory=list)
    gen_s: float | None = None  # engine time, where the path itself knows it
    first_s: float | None = None  # text: time to the first decoded block
    text: str | None = None
    tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _noop(_done: int, _total: int) -> None:
    return None


class _StepClock:
    """Times step boundaries as a ``StepHook``: host time on a CPU, CUDA events on a GPU (the host queues work
    ahead of the device, so its own clock would time the queueing)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.marks: list[Any] = []

    def mark(self, _done: int, _total: int) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Each mark's seconds after the first."""
        if not self.cuda:
            return [mark - self.marks[0] for mark in self.marks]
        self.marks[-1].synchronize()
        return [self.marks[0].elapsed_time(mark) / 1000.0 for mark in self.marks]


# --- bare ----------------------------------------------------------------------------------------------------


class BareImage:
    """``create_image_engine`` with the parameters the served model was rendered with (warmed up as it is), plus
    ``encode_image``."""

    def __init__(self, parameters: Mapping[str, str], device: str = "cpu") -> None:
        from diffusion_runtime.engines import EngineConfig, create_image_engine
        from diffusion_runtime.engines.base import warm_up_image
        from diffusion_runtime.media import DEFAULT_PNG_COMPRESS_LEVEL
        from diffusion_runtime.params import ImageLimits

        self.limits = ImageLimits.from_parameters(parameters)
        self.png_level = int(parameters.get("png_compress_level") or DEFAULT_PNG_COMPRESS_LEVEL)
        config = EngineConfig.from_parameters(parameters, device)
        self.device = device
        self.step_marks: list[float] = []
        self.engine = create_image_engine(config)
        self.warmup_s = warm_up_image(self.engine, config, self.limits)  # as the served model loads

    def generate(self, job: ImageJob) -> tuple[list[np.ndarray], float]:
        """The images and the seconds they took. ``step_marks`` then holds the seconds from the request's start to
        the end of each denoising step, and to its end, so the steps can be told apart from what comes before (text
        encoding) and after (VAE decoding, pixels to the host). On a GPU the marks are CUDA events: they time the
        device's work without making the host wait for it."""
        params = job.params(self.limits)
        clock = _StepClock(self.device)
        start = time.perf_counter()
        images = self.engine.generate(params, clock.mark)
        clock.mark(-1, 0)
        elapsed = time.perf_counter() - start
        self.step_marks = clock.seconds()
        return images, elapsed

    def __call__(self, job: ImageJob) -> Call:
        from diffusion_runtime.media import encode_image

        params = job.params(self.limits)
        start = time.perf_counter()
        images = self.engine.generate(params, _noop)
        generated = time.perf_counter()
        files = [encode_image(i, params.output_format, params.output_compression, self.png_level) for i in images]
        end = time.perf_counter()
        return Call(end - start, files, gen_s=generated - start, extra={"encode_s": end - generated})

    def close(self) -> None:
        self.engine.close()


class BareVideo:
    """``create_video_engine`` with the served model's parameters, plus ``encode_mp4``."""

    def __init__(self, parameters: Mapping[str, str], device: str = "cpu") -> None:
        from diffusion_runtime.engines import EngineConfig, create_video_engine
        from diffusion_runtime.params import VideoLimits

        self.limits = VideoLimits.from_parameters(parameters)
        self.crf = int(parameters.get("mp4_crf") or 18)
        self.engine = create_video_engine(EngineConfig.from_parameters(parameters, device))

    def __call__(self, job: VideoJob) -> Call:
        from diffusion_runtime.media import encode_mp4

        params = job.params(self.limits)
        start = time.perf_counter()
        frames = self.engine.generate(params, None, _noop)
        generated = time.perf_counter()
        video = encode_mp4(frames, params.fps, self.crf)
        end = time.perf_counter()
        return Call(end - start, [video], gen_s=generated - start, extra={"encode_s": end - generated})

    def close(self) -> None:
        self.engine.close()


class BareText:
    """The dLLM engine (the transformers masked LM and the project's block decoder) in this process."""

    def __init__(self, parameters: Mapping[str, str]) -> None:
        from diffusion_runtime.dllm import TextEngineConfig, create_text_engine
        from diffusion_runtime.params.text import TextLimits

        self.limits = TextLimits.from_parameters(parameters)
        self.engine = create_text_engine(TextEngineConfig.from_parameters(parameters, "cpu"))

    def __call__(self, job: TextJob) -> Call:
        params = job.params(self.limits)
        start = time.perf_counter()
        first = None
        texts = []
        tokens = None
        for delta in self.engine.generate(params, _noop):
            if first is None and delta.text:
                first = time.perf_counter() - start
            texts.append(delta.text)
            if delta.finish_reason is not None:
                tokens = delta.completion_tokens
        end = time.perf_counter()
        # The whole decode loop is what the served model's "denoise" counter times too.
        return Call(
            end - start,
            gen_s=end - start,
            first_s=end - start if first is None else first,
            text="".join(texts),
            tokens=tokens,
        )

    def close(self) -> None:
        self.engine.close()


# --- Triton alone (gRPC) -------------------------------------------------------------------------------------


class TritonImage:
    """``tritonclient.grpc`` ``infer`` with the very tensors the frontend builds (``image_inputs``)."""

    def __init__(self, url: str, limits: Any) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.limits = limits
        self.outputs = [grpcclient.InferRequestedOutput(n) for n in ("IMAGES", "SEEDS", "INFERENCE_TIME_S")]

    def __call__(self, job: ImageJob, model: str) -> Call:
        from openai_frontend.services.images import image_inputs
        from openai_frontend.triton.pool import infer_inputs

        inputs = infer_inputs(image_inputs(job.params(self.limits)))
        start = time.perf_counter()
        result = self.client.infer(model, inputs, outputs=self.outputs)
        end = time.perf_counter()
        files = [bytes(x) for x in result.as_numpy("IMAGES").reshape(-1)]
        return Call(
            end - start, files, extra={"model_gen_s": float(result.as_numpy("INFERENCE_TIME_S").reshape(-1)[0])}
        )

    def close(self) -> None:
        self.client.close()


class _TritonStream:
    """One gRPC stream kept open; each call sends a request and collects its responses until ``is_final``."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.module = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(
            callback=lambda result, error: self.responses.put((time.perf_counter(), result, error))
        )

    def run(
        self, model: str, arrays: Mapping[str, np.ndarray], outputs: list[str], is_final: Callable[[Any], bool]
    ) -> tuple[float, list[tuple[float, Any]]]:
        from openai_frontend.triton.pool import infer_inputs

        inputs = infer_inputs(arrays)
        requested = [self.module.InferRequestedOutput(n) for n in outputs]
        start = time.perf_counter()
        self.client.async_stream_infer(model, inputs, outputs=requested)
        received = []
        while True:
            at, result, error = self.responses.get(timeout=900)
            if error is not None:
                raise RuntimeError(f"{model}: {error}")
            received.append((at - start, result))
            if is_final(result):
                return start, received

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


class TritonVideo(_TritonStream):
    def __init__(self, url: str, limits: Any) -> None:
        super().__init__(url)
        self.limits = limits

    def __call__(self, job: VideoJob, model: str) -> Call:
        from openai_frontend.video_jobs import video_inputs

        outputs = ["PROGRESS", "VIDEO", "INFERENCE_TIME_S"]
        _, received = self.run(
            model, video_inputs(job.params(self.limits), None), outputs, lambda r: r.as_numpy("VIDEO") is not None
        )
        at, final = received[-1]
        video = bytes(final.as_numpy("VIDEO").reshape(-1)[0])
        gen = float(final.as_numpy("INFERENCE_TIME_S").reshape(-1)[0])
        return Call(at, [video], extra={"model_gen_s": gen, "responses": len(received)})


class TritonText(_TritonStream):
    def __init__(self, url: str, limits: Any) -> None:
        super().__init__(url)
        self.limits = limits

    def __call__(self, job: TextJob, model: str) -> Call:
        from openai_frontend.services.text import OUTPUTS, text_inputs

        _, received = self.run(
            model, text_inputs(job.params(self.limits)), OUTPUTS, lambda r: r.as_numpy("FINISH_REASON") is not None
        )
        texts = [bytes(r.as_numpy("TEXT").reshape(-1)[0]).decode("utf-8") for _, r in received]
        first = next((at for (at, _), t in zip(received, texts, strict=True) if t), received[0][0])
        tokens = int(received[-1][1].as_numpy("COMPLETION_TOKENS").reshape(-1)[0])
        return Call(received[-1][0], first_s=first, text="".join(texts), tokens=tokens)


# --- served (OpenAI frontend) ----------------------------------------------------------------------------------


class Served:
    """A keep-alive HTTP client to the frontend."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=900)

    def _post(self, path: str, body: dict[str, Any]) -> tuple[float, httpx.Response]:
        start = time.perf_counter()
        response = self.http.post(path, json=body)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text[:500]}")
        return elapsed, response

    def image(self, job: ImageJob, model: str) -> Call:
        elapsed, response = self._post("/v1/images/generations", job.openai_body(model))
        files = [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]
        return Call(elapsed, files)

    def video(self, job: VideoJob, model: str) -> Call:
        elapsed, response = self._post("/v1/videos", job.openai_body(model))
        body = response.json()
        return Call(
            elapsed,
            [base64.b64decode(body["data"][0]["b64_json"])],
            extra={"model_gen_s": body.get("inference_time_s")},
        )

    def text(self, job: TextJob, model: str) -> Call:
        elapsed, response = self._post("/v1/completions", job.openai_body(model, stream=False))
        body = response.json()
        return Call(elapsed, text=body["choices"][0]["text"], tokens=body["usage"]["completion_tokens"])

    def text_stream(self, job: TextJob, model: str) -> Call:
        body = {**job.openai_body(model, stream=True), "stream_options": {"include_usage": True}}
        texts: list[str] = []
        first = None
        tokens = None
        start = time.perf_counter()
        with self.http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"/v1/completions: HTTP {response.status_code}: {response.text[:500]}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    if line.startswith("event: error"):
                        raise RuntimeError("the stream reported an error")
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"the stream reported an error: {chunk['error']}")
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        if first is None:
                            first = time.perf_counter() - start
                        texts.append(choice["text"])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        end = time.perf_counter()
        return Call(end - start, first_s=first, text="".join(texts), tokens=tokens)

    def close(self) -> None:
        self.http.close()
