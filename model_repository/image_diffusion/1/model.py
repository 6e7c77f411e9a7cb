"""Triton glue for text-to-image: tensors in, one engine call, encoded files out.

Dynamic batching hands ``execute`` several queued requests. They are generated one after another while the
previous request's images are encoded on a worker thread, so file encoding never holds up the next denoise.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

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

    def _generate(self, request) -> tuple[ImageParams, Future, float]:
        params = validate_image_params(self.limits, **read_scalars(pb_utils, request, INPUTS))
        image, mask = edit_inputs(request, params)
        start = time.perf_counter()
        images = self.engine.generate(params, cancellation_check(request), image, mask)
        elapsed = time.perf_counter() - start
        self.metrics.seconds("denoise", elapsed)
        self.metrics.steps(params.num_inference_steps * params.n)
        return params, self.encoder.submit(self._encode, images, params), elapsed

    def execute(self, requests):
        started: list[tuple[ImageParams, Future, float] | BaseException] = []
        for request in requests:
            try:
                started.append(self._generate(request))
            except Exception as exc:  # one bad request never takes the others (or the stub) down
                started.append(exc)
        responses = []
        for item in started:
            try:
                if isinstance(item, BaseException):
                    raise item
                params, files, elapsed = item
                responses.append(_response(params, files.result(), elapsed))
                self.metrics.request("success")
            except Exception as exc:
                self.metrics.request(type(exc).__name__)
                responses.append(pb_utils.InferenceResponse(error=error_for(pb_utils, exc)))
        return responses

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
