"""Triton glue for text-to-image and image edits: tensors in, one engine call, encoded files out.

One request per ``execute`` (``max_batch_size: 0``, no dynamic batcher: see the config). ``execute`` denoises;
the files are encoded and the one final response sent on the encoder thread after ``execute`` returns
(``DiffusionModel.denoise_then_encode``). The response holds exactly the outputs the request asked for: until it
did, every image answered from the encoder thread killed this model's stub on a ``KIND_GPU`` instance
(``triton_io.inference_response`` tells how that was found).
"""

from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from diffusion_runtime.contract import IMAGE
from diffusion_runtime.engines import EngineConfig, create_image_engine
from diffusion_runtime.engines.base import warm_up_image
from diffusion_runtime.media import DEFAULT_PNG_COMPRESS_LEVEL, edit_inputs, encode_image
from diffusion_runtime.params import ImageLimits, validate_image_params
from diffusion_runtime.triton_io import cancellation_check
from diffusion_runtime.triton_model import Denoised, DiffusionModel


class TritonPythonModel(DiffusionModel):
    contract = IMAGE
    pb_utils = pb_utils
    encode_threads = 2

    def load(self, parameters: dict[str, str], device: str) -> None:
        self.limits = ImageLimits.from_parameters(parameters)
        self.png_level = int(parameters.get("png_compress_level") or DEFAULT_PNG_COMPRESS_LEVEL)
        config = EngineConfig.from_parameters(parameters, device)
        self.engine = create_image_engine(config)
        self.warmup_s = warm_up_image(self.engine, config, self.limits)

    def execute(self, requests):
        for request in requests:
            self.denoise_then_encode(request, self._denoise, self._encode)
        return None

    def _denoise(self, request) -> Denoised:
        params = validate_image_params(self.limits, **self.settings(request))
        files = self.files(request)
        image, mask = edit_inputs(files["image"], files["mask"], params.width, params.height)
        start = time.perf_counter()
        images = self.engine.generate(params, cancellation_check(request), image, mask)
        return Denoised(params, images, time.perf_counter() - start, params.num_inference_steps * params.n)

    def _encode(self, denoised: Denoised) -> dict[str, np.ndarray]:
        """``IMAGES`` and ``SEEDS`` hold one entry per image (``[n]``)."""
        params = denoised.params
        files = [
            encode_image(image, params.output_format, params.output_compression, self.png_level)
            for image in denoised.samples
        ]
        return {
            "IMAGES": np.array(files, dtype=np.object_),
            "SEEDS": np.array(params.seeds, dtype=np.int64),
            "INFERENCE_TIME_S": np.array([denoised.seconds], dtype=np.float32),
        }
