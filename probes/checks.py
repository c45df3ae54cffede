"""Argument checks shared by the probes: each error names the argument and what was expected."""

from __future__ import annotations

import numbers
from typing import Any


def check_fraction(name: str, value: Any, low_open: bool = True) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and (0 < value <= 1 if low_open
                                                                                 else 0 <= value <= 1)
    if not ok:
        raise ValueError(f"{name}: expected a number in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, low: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)
