"""Triton glue for text-to-video and image-to-video: tensors in, one engine call, a stream of responses out.

Decoupled: each request gets a non-final ``PROGRESS`` response per denoising step (``[done, total]``), then one
final response with the MP4. Denoising runs in ``execute``; the MP4 is encoded and the final response sent from
a worker thread, so ``execute`` returns and the instance starts the next request while the last one encodes.
Every failure, cancellation included, ends the request's stream with an error response; the stub survives.
"""

from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

from diffusion_runtime.contract import VIDEO
from diffusion_runtime.engines import EngineConfig, StepHook, create_video_engine
from diffusion_runtime.errors import GenerationCancelled
from diffusion_runtime.media import encode_mp4, fitted_input_image
from diffusion_runtime.params import VideoLimits, VideoParams, validate_video_params
from diffusion_runtime.params.video import check_video_mode
from diffusion_runtime.triton_io import cancellation_check, inference_response, requested_outputs
from diffusion_runtime.triton_model import DiffusionModel


class TritonPythonModel(DiffusionModel):
    contract = VIDEO
    pb_utils = pb_utils
    encode_threads = 2

    def load(self, parameters: dict[str, str], device: str) -> None:
        self.mode = (parameters.get("video_mode") or "t2v").lower()
        check_video_mode(self.mode, self.mode == "i2v")  # an unknown mode stops the model from loading
        self.limits = VideoLimits.from_parameters(parameters)
        self.crf = int(parameters.get("mp4_crf") or 18)
        self.engine = create_video_engine(EngineConfig.from_parameters(parameters, device))

    def execute(self, requests):
        for request in requests:
            self._generate(request, request.get_response_sender())
        return None

    def _generate(self, request, sender) -> None:
        try:
            params = validate_video_params(self.limits, **self.settings(request))
            image = self._input_image(self.files(request)["image"], params)
            wanted = requested_outputs(request)
            progress = StepProgress(request, sender, wanted)
            start = time.perf_counter()
            try:
                frames = self.engine.generate(params, image, progress)
            finally:  # a cancelled request's steps were real work too: keep steps/s honest
                elapsed = time.perf_counter() - start
                self.metrics.seconds("denoise", elapsed)
                self.metrics.steps(progress.done)
            self.encoder.submit(self.answer, sender, self._finish, request, wanted, params, frames, elapsed)
        except Exception as exc:  # one bad request never takes the stub down
            self.fail(sender, exc)

    def _input_image(self, data: bytes | None, params: VideoParams) -> Image.Image | None:
        """The conditioning image an i2v model needs, fitted to the requested size."""
        check_video_mode(self.mode, bool(data), "this model")
        return fitted_input_image(data, "input_reference", params.width, params.height) if data else None

    def _finish(
        self, sender, request, wanted: frozenset[str], params: VideoParams, frames: np.ndarray, elapsed: float
    ) -> None:
        """On the encode thread: MP4, then the final response."""
        if request.is_cancelled():  # nobody is waiting for the file: spare the CPU
            raise GenerationCancelled("cancelled by the client before encoding")
        start = time.perf_counter()
        video = encode_mp4(frames, params.fps, self.crf)
        self.metrics.seconds("encode", time.perf_counter() - start)
        total = params.num_inference_steps
        outputs = {
            "PROGRESS": np.array([total, total], dtype=np.int32),
            "VIDEO": np.array([video], dtype=np.object_),
            "SEED": np.array([params.seed], dtype=np.int64),
            "NUM_FRAMES": np.array([len(frames)], dtype=np.int32),
            "INFERENCE_TIME_S": np.array([elapsed], dtype=np.float32),
        }
        sender.send(inference_response(pb_utils, outputs, wanted), flags=self.final)


class StepProgress:
    """The engine's step hook: stop if the client cancelled, else stream ``[done, total]``; remembers how far
    the engine got."""

    def __init__(self, request, sender, wanted: frozenset[str]) -> None:
        self._check_cancelled: StepHook = cancellation_check(request)
        self._sender = sender
        self._wanted = wanted
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        self._check_cancelled(done, total)
        progress = {"PROGRESS": np.array([done, total], dtype=np.int32)}
        self._sender.send(inference_response(pb_utils, progress, self._wanted))
