"""Argument checks shared by minimp's settings: an int is an int (not a bool), a real
number is finite. The settings (the scaler's, the fp8 scalings') gather every problem
with these before refusing, so one error names them all."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def is_int(x: Any) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)
