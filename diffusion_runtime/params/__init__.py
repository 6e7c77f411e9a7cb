"""Request validation shared by the frontend and the Triton models.

The frontend validates before it calls Triton (so users get a 400 naming the field), and each model validates
the same way again, because Triton clients such as perf_analyzer reach the models without the frontend. The
rules live only here, one module per kind of request. Model-specific limits come from the model's
``config.pbtxt`` parameters (e.g. ``ImageLimits.from_parameters``), which the frontend reads from Triton so
both sides agree.
"""

from diffusion_runtime.params.image import ImageLimits, ImageParams, parse_size, validate_image_params
from diffusion_runtime.params.video import VideoLimits, VideoParams, validate_video_params

__all__ = [
    "ImageLimits",
    "ImageParams",
    "VideoLimits",
    "VideoParams",
    "parse_size",
    "validate_image_params",
    "validate_video_params",
]
