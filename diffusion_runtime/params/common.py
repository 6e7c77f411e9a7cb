"""Value checks every kind of request shares; each raises ``InvalidRequest`` naming the field."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import fields
from typing import Protocol, TypeVar

from diffusion_runtime.errors import InvalidRequest

SEED_MAX = 2**63 - 1
L = TypeVar("L")


class SizeLimits(Protocol):
    size_multiple: int
    min_size: int
    max_size: int


def limits_from_parameters(cls: type[L], parameters: Mapping[str, str]) -> L:
    """Build a limits dataclass from a model's config parameters (all strings), ignoring unrelated keys."""
    kwargs: dict[str, int | float] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        raw = parameters.get(f.name)
        if raw is not None and str(raw).strip():
            kwargs[f.name] = float(raw) if f.type == "float" else int(raw)
    return cls(**kwargs)


def check_int(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InvalidRequest(f"{param} must be an integer, got {value!r}", param)
    return value


def check_number(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{param} must be a number, got {value!r}", param)
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidRequest(f"{param} must be a finite number", param)
    return float(value)


def check_range(value: int | float, low: int | float, high: int | float, param: str) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low} and {high}, got {value}", param)


def check_text(value: object, param: str, max_chars: int, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(f"{param} is required", param)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string", param)
    if required and not value.strip():
        raise InvalidRequest(f"{param} must not be empty", param)
    if len(value) > max_chars:
        raise InvalidRequest(f"{param} is longer than {max_chars} characters", param)
    return value


def random_seed() -> int:
    return secrets.randbelow(2**32)


def check_seed(value: object, headroom: int = 0) -> int:
    """A given seed, or a fresh random one; ``headroom`` leaves room for ``seed + i`` per output."""
    if value is None:
        return random_seed()
    seed = check_int(value, "seed")
    check_range(seed, 0, SEED_MAX - headroom, "seed")
    return seed


def int_in_range(value: object, default: int, low: int, high: int, param: str) -> int:
    """An optional integer field: ``default`` when not given, else checked against ``[low, high]``."""
    result = default if value is None else check_int(value, param)
    check_range(result, low, high, param)
    return result


def number_in_range(value: object, default: float, low: float, high: float, param: str) -> float:
    result = default if value is None else check_number(value, param)
    check_range(result, low, high, param)
    return result


def check_dimension(value: object, param: str, limits: SizeLimits) -> int:
    value = check_int(value, param)
    check_range(value, limits.min_size, limits.max_size, param)
    if value % limits.size_multiple:
        raise InvalidRequest(f"{param} must be a multiple of {limits.size_multiple} for this model, got {value}", param)
    return value
