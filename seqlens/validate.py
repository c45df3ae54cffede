"""Argument checks shared by the library, so that bad input is refused the same way everywhere:
an error that names the argument and says what was expected."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["ArgumentTypeError", "check_int", "positive_int"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Both a TypeError and a ValueError, so that callers which
    caught either one before the checks were unified still catch it."""


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` within ``[low, high]`` (open ends when None).

    bool, float, str and other non-integers are an :class:`ArgumentTypeError` (``True`` is not 1
    here, ``2.0`` is not 2); an integer out of range is a ValueError. Both messages name ``name``.
    """
    bound = "" if low is None else f" >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name}: expected an integer{bound}, got {value!r} ({type(value).__name__})")
    if low is not None and value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected an integer <= {high}, got {value}")
    return int(value)


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum`` (default 1), or an error naming ``name``."""
    return check_int(name, value, low=minimum)


def check_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` (None stays None), or a ValueError naming ``device``:
    not a device, or CUDA asked for where CUDA is not available."""
    import torch

    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {str(device)!r} was asked for but CUDA is not available")
    return device
