"""Triton glue for text-to-image: tensors in, one engine call, encoded files out.

One request per ``execute`` (``max_batch_size: 0``, no dynamic batcher: see the config). ``execute`` denoises;
the files are encoded on the encoder thread after ``execute`` returns, so the instance starts the next request
while the last one encodes, and the one final response goes through the request's response sender (allowed for
non-decoupled models).

Responses hold exactly the outputs the request asked for (``triton_io.inference_response``). Until they did, every
image answered from the encoder thread killed this model's stub on a ``KIND_GPU`` instance (H200, 2026-12-01): the
client waited forever, and the next request got "Stub process ... is not healthy". The cause, bisected on that
GPU with variants of this file behind one tritonserver:
- The OpenAI frontend asks for ``IMAGES`` and ``SEEDS`` only. Triton 24.10's Python backend removes the other
  outputs (``INFERENCE_TIME_S``) in ``ResponseSender::Send`` (``src/response_sender.cc``), *after* that function
  released the GIL. The removed ``pb_utils.Tensor`` owns a numpy array, which is thus freed without the GIL while
  the model's other threads run Python. The stub died there: its log stops between building the response and
  ``send`` returning, and the process was left a zombie.
- Same model, same inputs, direct gRPC: asking for all three outputs answered every size (64² to 512²); asking
  for ``IMAGES`` and ``SEEDS`` killed the stub at the first thread-sent image. Answered within ``execute``
  (64²), the response is pruned in the stub's main thread, which holds the GIL: no crash. (An earlier minimal
  model that sent from a thread worked, as the direct client here did when it asked for every output.)
- Ruled out on the same GPU, each answering 64², 256² and 512²: the engine (a numpy stand-in with and without
  CUDA initialised), custom metrics, cancellation polling, plain threads instead of the pool, sending inside
  ``execute``, keeping the request handles, a delayed send, a decoupled transaction policy. Decoupled would not
  have helped: its responses go through the same ``send``.
On a CPU the same freeing without the GIL went unpunished in every test; it is undefined behaviour all the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from diffusion_runtime.contract import IMAGE
from diffusion_runtime.engines import EngineConfig, create_image_engine
from diffusion_runtime.engines.base import warm_up_image
from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.media import decode_input_image, edit_mask, encode_image, fit_image
from diffusion_runtime.params import ImageLimits, ImageParams, validate_image_params
from diffusion_runtime.triton_io import cancellation_check, inference_response, read_bytes, requested_outputs
from diffusion_runtime.triton_model import DiffusionModel


@dataclass(frozen=True)
class Generated:
    """What one request's denoising leaves to encode and answer."""

    params: ImageParams
    images: list[np.ndarray]
    denoise_s: float
    outputs: frozenset[str]  # what the client asked for: the response holds exactly these


class TritonPythonModel(DiffusionModel):
    contract = IMAGE
    pb_utils = pb_utils
    encode_threads = 2

    def load(self, parameters: dict[str, str], device: str) -> None:
        self.limits = ImageLimits.from_parameters(parameters)
        self.png_level = int(parameters.get("png_compress_level") or 1)
        config = EngineConfig.from_parameters(parameters, device)
        self.engine = create_image_engine(config)
        self.warmup_s = warm_up_image(self.engine, config, self.limits)

    def _generate(self, request) -> Generated:
        params = validate_image_params(self.limits, **self.settings(request))
        image, mask = edit_inputs(request, params)
        start = time.perf_counter()
        images = self.engine.generate(params, cancellation_check(request), image, mask)
        return Generated(params, images, time.perf_counter() - start, requested_outputs(request))

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self.encoder.submit(self._finish, sender, self._generate(request))
            except Exception as exc:  # one bad request never takes the others (or the stub) down
                self.encoder.submit(self.fail, sender, exc)  # counting it is a round trip to Triton: off the path
        return None

    def _finish(self, sender, generated: Generated) -> None:
        """On the encoder thread: encode, send the request's one (final) response, then count it."""
        params = generated.params
        try:
            start = time.perf_counter()
            files = [
                encode_image(image, params.output_format, params.output_compression, self.png_level)
                for image in generated.images
            ]
            encode_s = time.perf_counter() - start
            self.send_final(sender, _response(generated, files))
        except Exception as exc:
            self.fail(sender, exc)
            return
        self.metrics.request("success")
        self.metrics.seconds("denoise", generated.denoise_s)
        self.metrics.steps(params.num_inference_steps * params.n)
        self.metrics.seconds("encode", encode_s)


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


def _response(generated: Generated, files: list[bytes]):
    """``IMAGES`` and ``SEEDS`` hold one entry per image (``[n]``)."""
    outputs = {
        "IMAGES": np.array(files, dtype=np.object_),
        "SEEDS": np.array(generated.params.seeds, dtype=np.int64),
        "INFERENCE_TIME_S": np.array([generated.denoise_s], dtype=np.float32),
    }
    return inference_response(pb_utils, outputs, generated.outputs)
