"""The SGLang engine: ``DiffGenerator`` (its own scheduler and GPU worker processes) driven from the stub.

What SGLang does not give us, and how it is made up for here:
- ``num_outputs_per_prompt > 1`` returns nothing with SGLang's diffusers backend, so ``n`` images are ``n``
  calls with seeds ``seed, seed+1, ...`` — the same seeds-per-image rule as the diffusers engine.
- Failures are logged and swallowed (``generate`` returns None or fewer results), so counts are checked.
- The denoising loop runs in SGLang's worker process with no step callback and no way to abort a request, so
  cancellation is honoured before each generation rather than between steps, and progress moves per
  generation, not per step. (``sglang serve`` does get per-step progress, but only from its native pipeline
  stages, for requests flagged ``report_progress`` that ``DiffGenerator`` never sets, over an IPC socket tied
  to its HTTP port; the diffusers backend reports nothing at all. Not a seam to build on.)
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from diffusion_runtime.engines.base import EngineConfig, StepHook, check_video, json_object
from diffusion_runtime.engines.sglang_speed import speed_kwargs, step_cache_sampling
from diffusion_runtime.errors import EngineFailure, InvalidRequest
from diffusion_runtime.media import to_uint8_hwc
from diffusion_runtime.net import free_port
from diffusion_runtime.params import ImageParams, VideoParams

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from PIL import Image

log = logging.getLogger(__name__)

# Stopping the generator, bounded to fit well inside tritonserver's exit timeout (10 s, launcher.processes), which
# also has to cover Triton's own one-second polls and the stub's interpreter teardown.
SHUTDOWN_REPLY_TIMEOUT_MS = 2000  # the scheduler's answer to ShutdownReq (it answers, then cleans up)
WORKER_CLEANUP_GRACE_S = 2.0  # for the workers' own cleanup after that answer, before they are terminated
WORKER_SIGNAL_WAIT_S = 1.0  # after SIGTERM, then after SIGKILL


WAN_14B_WIDTH = 5120  # Wan2.1-14B's hidden size (40 heads x 128); the 1.3B model's is 1536, Wan2.2-TI2V-5B's 3072


def read_config_json(path: str) -> dict[str, Any]:
    """A checkpoint's JSON config file as a dict; empty when it is missing or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def folder_model_id(model_path: str) -> str | None:
    """The name SGLang registers a local diffusers folder's pipeline under, from the folder's own
    ``model_index.json`` and ``transformer/config.json``; None where SGLang's own detection is left to decide (a hub
    id, which SGLang knows by name; a pipeline class this does not map).

    SGLang picks a pipeline config by the model's hub name, else by detectors that look at the folder's name and
    pipeline class, and a detector matches a class name only for some families: a FLUX.1-dev folder named ``mini``
    matches no FLUX.1 config and fails to load (``No configured precision for 'text_encoder_2'``), and any Wan
    text-to-video folder, 14B included, gets the 1.3B config. So the name is derived here, as ``DiffGenerator``'s
    ``model_id`` (``sglang_model_id`` overrides it). Wan2.1's 480P and 720P image-to-video checkpoints have the
    same shapes: a folder gets the 480P config unless ``sglang_model_id`` names the other."""
    if not os.path.isdir(model_path):
        return None
    index = read_config_json(os.path.join(model_path, "model_index.json"))
    pipeline = index.get("_class_name")
    transformer = read_config_json(os.path.join(model_path, "transformer", "config.json"))
    width = int(transformer.get("num_attention_heads", 0)) * int(transformer.get("attention_head_dim", 0))
    two_experts = bool((index.get("transformer_2") or [None])[0])  # Wan2.2 A14B: a second, low-noise transformer
    if pipeline == "FluxPipeline":
        if transformer.get("guidance_embeds") is False:
            raise ValueError(
                f"{model_path} is a FLUX.1-schnell-shaped pipeline (no guidance embedding), for which SGLang has no "
                "native config: set the engine parameter to diffusers, or sglang_model_id to a model SGLang knows"
            )
        return "FLUX.1-dev"
    if pipeline == "WanPipeline":
        if two_experts:
            return "Wan2.2-T2V-A14B-Diffusers"
        if width == 3072:
            return "Wan2.2-TI2V-5B-Diffusers"
        return "Wan2.1-T2V-14B-Diffusers" if width >= WAN_14B_WIDTH else "Wan2.1-T2V-1.3B-Diffusers"
    if pipeline == "WanImageToVideoPipeline":
        return "Wan2.2-I2V-A14B-Diffusers" if two_experts else "Wan2.1-I2V-14B-480P-Diffusers"
    return None


def generator_kwargs(config: EngineConfig) -> dict[str, Any]:
    """``DiffGenerator.from_pretrained`` kwargs for a config (kept separate so it can be unit-tested)."""
    kwargs: dict[str, Any] = {
        "model_path": config.model_path,
        "backend": config.sglang_backend,
        "num_gpus": config.num_gpus,
    }
    model_id = config.sglang_model_id or folder_model_id(config.model_path)
    if model_id:
        kwargs["model_id"] = model_id
    if config.sglang_attention_backend:
        kwargs["attention_backend"] = config.sglang_attention_backend
    if config.sglang_sleep_on_idle:
        kwargs["sleep_on_idle"] = True
    kwargs.update(speed_kwargs(config))
    kwargs.update(json_object(config.sglang_args, "sglang_args"))
    return kwargs


def native_transformer_problem(model_path: str) -> str | None:
    """Why SGLang's own class for the folder's transformer cannot be imported here, or None when it can (or when
    SGLang has no class of its own for it).

    SGLang only logs such an import error and then loads diffusers' class in its place: another model code, and
    one its pipelines do not always fit (observed on an H200 without ``nvidia-cutlass-dsl``, whose CuTe-DSL
    kernels SGLang's Wan transformer imports: text-to-video ran on diffusers' transformer unnoticed, and
    image-to-video failed at its first step with "'list' object has no attribute 'dtype'"). Importing the module
    the way SGLang's registry would surfaces the cause at load instead."""
    library_and_class = read_config_json(os.path.join(model_path, "model_index.json")).get("transformer")
    if not isinstance(library_and_class, list) or len(library_and_class) != 2:
        return None
    from sglang.multimodal_gen.runtime.models.registry import ModelRegistry

    registered = ModelRegistry.registered_models.get(library_and_class[1])
    module_name = getattr(registered, "module_name", None)
    if module_name is None:
        return None
    try:
        importlib.import_module(module_name)
    except Exception as exc:  # whatever stops SGLang's own import stops it here too
        return f"{library_and_class[1]} ({module_name}): {type(exc).__name__}: {exc}"
    return None


def result_frames(result: Any) -> np.ndarray:
    """The pixels of a ``GenerationResult`` as uint8 ``[T, H, W, 3]`` (an image is one frame): ``frames`` is a
    list of HWC arrays; ``samples`` is HWC, THWC or a batch of those."""
    frames = getattr(result, "frames", None)
    if frames is not None and len(frames) > 0:
        return np.stack([to_uint8_hwc(np.asarray(frame)) for frame in frames])
    samples = getattr(result, "samples", None)
    if samples is None:
        raise EngineFailure("SGLang returned a result without pixels")
    array = np.asarray(samples.cpu() if hasattr(samples, "cpu") else samples)
    if array.ndim == 3:
        array = array[None]
    while array.ndim > 4:
        array = array[0]
    return np.stack([to_uint8_hwc(frame) for frame in array])


def first_frame(result: Any) -> np.ndarray:
    """An image from a ``GenerationResult``."""
    return result_frames(result)[0]


def stop_generator(generator: Any) -> None:
    """``DiffGenerator.shutdown``, bounded: ask the scheduler to stop, give the workers ``WORKER_CLEANUP_GRACE_S``
    to clean up and exit, then terminate (at last kill) those still running, and close the client.

    SGLang's own ``shutdown`` gives each worker 10 s before it terminates it: all of tritonserver's exit timeout.
    And a worker does take seconds to exit. Its cleanup (scheduler freed, device cache emptied, process group
    destroyed, then "Shutdown complete" in the log) ends well within the grace, but then it is a spawned
    interpreter tearing down a million objects: 3-4 s of garbage collection on a busy 2-core host, for nothing
    that outlives the process. (SGLang's launcher, ``shutdown_scheduler_processes``, stops its workers the same
    way: shutdown request, deadline, terminate, kill.)"""
    from sglang.multimodal_gen.runtime.entrypoints.control_requests import ShutdownReq
    from sglang.multimodal_gen.runtime.scheduler_client import sync_scheduler_client

    start = time.monotonic()
    workers: list[BaseProcess] = list(generator.local_scheduler_process or [])
    if workers and generator.owns_scheduler_client:
        try:
            sync_scheduler_client.forward(ShutdownReq(), timeout_ms=SHUTDOWN_REPLY_TIMEOUT_MS)
        except Exception as exc:  # a scheduler that does not answer is terminated below
            log.warning("SGLang's scheduler did not acknowledge the shutdown: %s", exc)
    stop_processes(workers, WORKER_CLEANUP_GRACE_S)
    # The workers are accounted for: SGLang's shutdown now only closes its client (the zmq context).
    generator.local_scheduler_process = None
    generator.shutdown()
    log.info("SGLang generator stopped in %.1f s", time.monotonic() - start)


def stop_processes(processes: list[BaseProcess], grace_s: float) -> None:
    """Let ``processes`` exit by themselves for ``grace_s``, then SIGTERM those left and at last SIGKILL them."""
    alive = _join_all(processes, grace_s)
    if alive:
        log.info("terminating SGLang workers still exiting %.0f s after shutdown: %s", grace_s, alive)
        for process in alive:
            process.terminate()
        alive = _join_all(alive, WORKER_SIGNAL_WAIT_S)
    if alive:
        log.warning("killing SGLang workers that ignored SIGTERM: %s", alive)
        for process in alive:
            process.kill()
        alive = _join_all(alive, WORKER_SIGNAL_WAIT_S)
    if alive:
        log.error("SGLang workers still running after SIGKILL: %s", alive)


def _join_all(processes: list[BaseProcess], timeout: float) -> list[BaseProcess]:
    """Wait for ``processes`` until one shared deadline; the ones still alive."""
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    return [process for process in processes if process.is_alive()]


class _SGLangEngine:
    """One ``DiffGenerator`` per stub, and one checked result per call."""

    name = "sglang"

    def __init__(self, config: EngineConfig) -> None:
        from sglang.multimodal_gen import DiffGenerator

        self.config = config
        if config.sglang_backend == "sglang" and config.device.startswith("cuda"):  # the failing imports are CUDA-only
            problem = native_transformer_problem(config.model_path)
            if problem is not None:
                raise EngineFailure(
                    f"SGLang's own transformer cannot be imported on this host, so SGLang would run diffusers' "
                    f"in its place: {problem}. Install what it names (SGLang's Wan kernels need "
                    f"nvidia-cutlass-dsl, part of sglang[diffusion]) or set sglang_backend to 'diffusers'"
                )
        kwargs = generator_kwargs(config)
        # Several generators start at once in one tritonserver (two SGLang models, or instance_group count > 1),
        # and SGLang picks its ports from fixed defaults (HTTP 30000, torch.distributed master 30005, scheduler
        # 5555 + 0..100) and checks them before binding, so concurrent starts collide (observed: EADDRINUSE on
        # 30005, and both schedulers on 5628). Give each generator its own free ports unless sglang_args sets them.
        for key in ("port", "master_port", "scheduler_port"):
            kwargs.setdefault(key, free_port())
        if config.compile_mode:  # read by SGLang's workers, which inherit this process's environment
            os.environ["SGLANG_TORCH_COMPILE_MODE"] = config.compile_mode
        log.info("starting SGLang DiffGenerator: %s", kwargs)
        self.generator = DiffGenerator.from_pretrained(**kwargs)

    def _generate_one(self, sampling: dict[str, Any]) -> Any:
        """One output, with pixels returned in memory rather than written to SGLang's output folder."""
        sampling = {**sampling, "num_outputs_per_prompt": 1, "save_output": False, "return_frames": True}
        result = self.generator.generate(sampling_params_kwargs=sampling)
        if isinstance(result, list):
            if len(result) != 1:
                raise EngineFailure(f"SGLang returned {len(result)} results for one output")
            result = result[0]
        if result is None:
            raise EngineFailure("SGLang generated nothing (its error is in the tritonserver log)")
        return result

    def close(self) -> None:
        generator, self.generator = getattr(self, "generator", None), None
        if generator is not None:
            stop_generator(generator)


def _sampling(params: ImageParams | VideoParams, seed: int) -> dict[str, Any]:
    sampling: dict[str, Any] = {
        "prompt": params.prompt,
        "height": params.height,
        "width": params.width,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "seed": seed,
    }
    if params.negative_prompt:
        sampling["negative_prompt"] = params.negative_prompt
    return sampling


class SGLangImageEngine(_SGLangEngine):
    def generate(
        self,
        params: ImageParams,
        on_step: StepHook,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> list[np.ndarray]:
        if image is not None:
            # DiffGenerator's FLUX.1 pipelines make images from text only; passing the image would be ignored
            # silently. Edits are served by the diffusers engine (engine=diffusers).
            raise InvalidRequest("image edits need the diffusers engine; this model runs on the sglang engine", "image")
        steps = params.num_inference_steps
        images = []
        for index, seed in enumerate(params.seeds):
            on_step(index * steps, params.n * steps)
            sampling = {**_sampling(params, seed), **step_cache_sampling(self.config)}
            images.append(first_frame(self._generate_one(sampling)))
        on_step(params.n * steps, params.n * steps)
        return images


class SGLangVideoEngine(_SGLangEngine):
    """Wan-class video through ``DiffGenerator``. Progress is reported at the start (``0/steps``, which is also
    where a cancelled request stops) and at the end (``steps/steps``) only: see the module docstring.

    On CPU, Wan needs ``sglang_backend=diffusers`` (SGLang's native Wan wants sgl-kernel CPU ops that PyPI's
    wheels lack); no ``model_id`` is needed: SGLang reads the pipeline class from ``model_index.json``."""

    def generate(self, params: VideoParams, image: Image.Image | None, on_step: StepHook) -> np.ndarray:
        steps = params.num_inference_steps
        on_step(0, steps)
        sampling = {**_sampling(params, params.seed), "num_frames": params.num_frames, "fps": params.fps}
        with tempfile.TemporaryDirectory(prefix="i2v-") as folder:
            if image is not None:
                # SGLang's scheduler runs in another process and takes the image by path.
                sampling["image_path"] = os.path.join(folder, "input.png")
                image.save(sampling["image_path"], format="PNG", compress_level=1)
            frames = result_frames(self._generate_one(sampling))
        on_step(steps, steps)
        return check_video(frames, params)
