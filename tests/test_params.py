"""Request validation rules shared by the frontend and the models."""

from __future__ import annotations

import pytest

from diffusion_runtime.errors import InvalidRequest
from diffusion_runtime.params import ImageLimits, parse_size, validate_image_params

LIMITS = ImageLimits()


def test_defaults_fill_in_and_seeds_follow_the_base_seed() -> None:
    params = validate_image_params(LIMITS, prompt="p", n=3, seed=100)
    assert (params.width, params.height) == (1024, 1024)
    assert params.num_inference_steps == LIMITS.default_steps
    assert params.output_format == "png"
    assert params.seeds == [100, 101, 102]


def test_a_random_seed_is_chosen_when_none_is_given() -> None:
    seeds = {validate_image_params(LIMITS, prompt="p").seed for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("size", "expected"),
    [("512x768", (512, 768)), (" 64 X 32 ", (64, 32)), ("auto", (1024, 1024)), (None, (1024, 1024))],
)
def test_parse_size(size, expected) -> None:
    assert parse_size(size, LIMITS) == expected


@pytest.mark.parametrize("size", ["", "1024", "1024x", "x1024", "-64x64", "64x64x3", "axb", "1e3x64"])
def test_parse_size_rejects_malformed(size) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_size(size, LIMITS)
    assert info.value.param == "size"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("width", 1000, "multiple of 16"),
        ("height", 0, "between"),
        ("height", 4096, "between"),
        ("n", 0, "between 1 and 10"),
        ("n", 11, "between 1 and 10"),
        ("n", True, "integer"),
        ("num_inference_steps", 0, "between"),
        ("num_inference_steps", 2.5, "integer"),
        ("guidance_scale", float("nan"), "finite"),
        ("guidance_scale", "high", "number"),
        ("seed", -1, "between"),
        ("output_format", "gif", "one of png, jpeg, webp"),
        ("output_compression", 101, "between 0 and 100"),
        ("negative_prompt", 5, "string"),
    ],
)
def test_out_of_range_values_name_the_field(field, value, needle) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_image_params(LIMITS, prompt="p", **{field: value})
    assert info.value.param == field
    assert needle in info.value.message


def test_prompt_rules() -> None:
    for prompt, needle in [(None, "required"), ("   ", "empty"), (3, "string"), ("x" * 10_001, "longer")]:
        with pytest.raises(InvalidRequest, match=needle):
            validate_image_params(LIMITS, prompt=prompt)


def test_limits_come_from_model_config_parameters() -> None:
    limits = ImageLimits.from_parameters(
        {"size_multiple": "8", "max_size": "512", "default_guidance_scale": "7.5", "model_path": "ignored"}
    )
    assert (limits.size_multiple, limits.max_size, limits.default_guidance_scale) == (8, 512, 7.5)
    assert validate_image_params(limits, prompt="p", width=264, height=264).width == 264
    with pytest.raises(InvalidRequest):
        validate_image_params(limits, prompt="p", width=520, height=64)


def test_jpg_is_an_alias_for_jpeg() -> None:
    assert validate_image_params(LIMITS, prompt="p", output_format="JPG").output_format == "jpeg"
