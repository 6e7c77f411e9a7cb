"""Triton glue for text-to-image: tensors in, one engine call, encoded files out.

``execute`` denoises and returns; the images are encoded and the response sent from a worker thread through the
request's response sender (allowed for non-decoupled models: exactly one final response per request). So
the instance is free for the next request while the last one encodes, and a client never gets its answer
before Triton has the instance back. Answering from inside ``execute`` let a client's next request arrive
in the moment between the answer and the instance's release, and Triton 2.51's dynamic batcher then
sometimes held it for its 500 ms idle wait (one instance at concurrency 4 served 0.65x the bare engine).
``max_batch_size: 1`` makes every ``execute`` one request, so with several instances a queued request goes
to whichever instance frees first instead of waiting behind a batch on one of them.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from diffusion_runtime.engines import EngineConfig, create_image_engine
from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.media import decode_input_image, edit_mask, encode_image, fit_image
from diffusion_runtime.params import ImageLimits, ImageParams, validate_image_params
from diffusion_runtime.triton_io import (
    ModelMetrics,
    cancellation_check,
    error_for,
    model_parameters,
    pin_instance_device,
    read_bytes,
    read_scalars,
)

INPUTS = {
    "PROMPT": "prompt",
    "NEGATIVE_PROMPT": "negative_prompt",
    "HEIGHT": "height",
    "WIDTH": "width",
    "NUM_IMAGES": "n",
    "NUM_INFERENCE_STEPS": "num_inference_steps",
    "GUIDANCE_SCALE": "guidance_scale",
    "SEED": "seed",
    "OUTPUT_FORMAT": "output_format",
    "OUTPUT_COMPRESSION": "output_compression",
    "STRENGTH": "strength",
}
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        device = pin_instance_device(args)
        parameters = model_parameters(args)
        self.limits = ImageLimits.from_parameters(parameters)
        self.png_level = int(parameters.get("png_compress_level") or 1)
        self.engine = create_image_engine(EngineConfig.from_parameters(parameters, device))
        self.encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
        self.metrics = ModelMetrics(pb_utils, args["model_name"])

    def _encode(self, images: list[np.ndarray], params: ImageParams) -> list[bytes]:
        start = time.perf_counter()
        files = [
            encode_image(image, params.output_format, params.output_compression, self.png_level) for image in images
        ]
        self.metrics.seconds("encode", time.perf_counter() - start)
        return files

    def _generate(self, request) -> tuple[ImageParams, list[np.ndarray], float]:
        params = validate_image_params(self.limits, **read_scalars(pb_utils, request, INPUTS))
        image, mask = edit_inputs(request, params)
        start = time.perf_counter()
        images = self.engine.generate(params, cancellation_check(request), image, mask)
        elapsed = time.perf_counter() - start
        self.metrics.seconds("denoise", elapsed)
        self.metrics.steps(params.num_inference_steps * params.n)
        return params, images, elapsed

    def _respond(self, sender, params: ImageParams, images: list[np.ndarray], elapsed: float) -> None:
        """On the encoder thread: encode, then send the request's one (final) response."""
        try:
            response = _response(params, self._encode(images, params), elapsed)
            self.metrics.request("success")
        except Exception as exc:
            self._fail(sender, exc)
            return
        sender.send(response, flags=FINAL)

    def _fail(self, sender, exc: BaseException) -> None:
        self.metrics.request(type(exc).__name__)
        sender.send(pb_utils.InferenceResponse(error=error_for(pb_utils, exc)), flags=FINAL)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                params, images, elapsed = self._generate(request)
            except Exception as exc:  # one bad request never takes the others (or the stub) down
                self._fail(sender, exc)
                continue
            self.encoder.submit(self._respond, sender, params, images, elapsed)
        return None

    def finalize(self):
        self.encoder.shutdown(wait=True)
        self.engine.close()


def edit_inputs(request, params: ImageParams):
    """The image to edit (fitted to the requested size) and its mask, when the request is an edit."""
    data = read_bytes(pb_utils, request, "INPUT_IMAGE")
    mask_data = read_bytes(pb_utils, request, "MASK_IMAGE")
    if not data:
        if mask_data:
            raise InvalidRequest("a mask needs an image to edit", "mask")
        return None, None
    image = fit_image(decode_input_image(data, "image"), params.width, params.height)
    mask = (
        edit_mask(decode_input_image(mask_data, "mask", mode=None), params.width, params.height) if mask_data else None
    )
    return image, mask


def _response(params: ImageParams, files: list[bytes], elapsed: float):
    """Outputs carry the request's batch dimension of 1: IMAGES and SEEDS are ``[1, n]``."""
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("IMAGES", np.array([files], dtype=np.object_)),
            pb_utils.Tensor("SEEDS", np.array([params.seeds], dtype=np.int64)),
            pb_utils.Tensor("INFERENCE_TIME_S", np.array([[elapsed]], dtype=np.float32)),
        ]
    )
