"""Floating-point formats as data: their bit layout, rounding to them, and what rounding does.

A binary floating-point format is fixed by four numbers: exponent bits, fraction
(mantissa) bits, the exponent bias, and whether the all-ones exponent means
inf/NaN. Everything a lesson needs follows from them: the largest finite value,
the smallest normal and subnormal values, the machine epsilon, and the exact
result of rounding any real number to the format. This module derives all of it
from the fields of a frozen :class:`Format`, so the same code rounds to fp16,
bf16 and fp8, and the tests can check it bit for bit against ``numpy.float16``
and ``ml_dtypes``, which are implemented independently.

Rounding is IEEE 754 round-to-nearest-even unless asked otherwise: it is what
the hardware does when mixed-precision training casts to fp16 (Micikevicius et
al. 2018, sec. 3.1), and it is why values at or below 2^-25 become zero in fp16.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from minimp.backend import array_module as _array_module
from minimp.backend import to_numpy as _to_numpy

__all__ = [
    "BFLOAT16",
    "CATEGORIES",
    "FLOAT8_E4M3FN",
    "FLOAT8_E5M2",
    "FLOAT16",
    "FLOAT32",
    "FORMATS",
    "Category",
    "Format",
    "bit_string",
    "classify",
    "count_categories",
    "get_format",
    "round_to",
    "split_bits",
]


@dataclass(frozen=True)
class Format:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    ``mantissa_bits`` counts the stored fraction bits (the leading 1 of a normal
    number is implicit). ``has_inf=False`` is the "fn" convention of
    float8_e4m3fn: the all-ones exponent still holds normal numbers, only
    S.1111.111 is NaN, and there is no infinity, so overflow gives NaN.
    ``dtype`` is the NumPy dtype that stores values of the format.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def bits(self) -> int:
        """Total width: sign + exponent + fraction."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def max_exponent(self) -> int:
        """Unbiased exponent of the largest finite value.

        With inf, the all-ones exponent field is reserved for inf/NaN; without
        it ("fn"), that field holds ordinary numbers.
        """
        top_field = 2**self.exponent_bits - 1
        return top_field - self.bias - (1 if self.has_inf else 0)

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal value (exponent field 1)."""
        return 1 - self.bias

    @property
    def max(self) -> float:
        """Largest finite value: 65504 for fp16, 448 for e4m3fn, 57344 for e5m2."""
        # An "fn" format gives its largest significand (all-ones fraction) to NaN.
        largest_significand = 2 ** (self.mantissa_bits + 1) - (1 if self.has_inf else 2)
        return math.ldexp(largest_significand, self.max_exponent - self.mantissa_bits)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, 2^(1-bias): 2^-14 (6.1e-5) for fp16."""
        return math.ldexp(1.0, self.min_exponent)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, 2^(1-bias-m): 2^-24 (6.0e-8) for fp16.

        Below half of it, round-to-nearest gives zero: the gradient underflow of
        Micikevicius et al. 2018, sec. 3.1.
        """
        return math.ldexp(1.0, self.min_exponent - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Gap between 1 and the next value, 2^-m: the relative precision of the format."""
        return math.ldexp(1.0, -self.mantissa_bits)


FLOAT32 = Format("float32", 8, 23, 127, True, np.dtype(np.float32))
FLOAT16 = Format("float16", 5, 10, 15, True, np.dtype(np.float16))
BFLOAT16 = Format("bfloat16", 8, 7, 127, True, np.dtype(ml_dtypes.bfloat16))
FLOAT8_E4M3FN = Format("float8_e4m3fn", 4, 3, 7, False, np.dtype(ml_dtypes.float8_e4m3fn))
FLOAT8_E5M2 = Format("float8_e5m2", 5, 2, 15, True, np.dtype(ml_dtypes.float8_e5m2))

FORMATS: tuple[Format, ...] = (FLOAT32, FLOAT16, BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2)
_BY_NAME = {fmt.name: fmt for fmt in FORMATS}


def get_format(fmt: Format | str | Any) -> Format:
    """The :class:`Format` for a Format, a name (``"float16"``) or a NumPy dtype."""
    if isinstance(fmt, Format):
        return fmt
    if isinstance(fmt, str):
        if fmt in _BY_NAME:
            return _BY_NAME[fmt]
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(_BY_NAME)}")
    try:
        dtype = np.dtype(fmt)
    except TypeError:
        raise TypeError(f"expected a Format, a format name or a NumPy dtype, got {fmt!r}") from None
    for candidate in FORMATS:
        if candidate.dtype == dtype:
            return candidate
    raise ValueError(f"no format for dtype {dtype}: use one of {', '.join(_BY_NAME)}")


def _as_float64(x: Any, xp: Any) -> Any:
    """``x`` as float64: exact for every format here (float32 and narrower)."""
    # A signaling NaN (any NaN bit pattern can arrive) raises "invalid" when it is
    # converted; it is still a NaN, so the flag carries no information here.
    with np.errstate(invalid="ignore"):
        return xp.asarray(x, dtype=xp.float64)


def _round64(x: Any, fmt: Format, rounding: str, rng: np.random.Generator | None) -> Any:
    """``x`` rounded to ``fmt``, as float64 (exact: every value of every format fits)."""
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"unknown rounding {rounding!r}: use 'nearest' or 'stochastic'")
    if rounding == "stochastic" and rng is None:
        raise ValueError(
            "rounding='stochastic' needs a random generator: "
            "pass rng=numpy.random.default_rng(seed)"
        )
    xp = _array_module(x)
    x = _as_float64(x, xp)
    finite = xp.isfinite(x)
    xf = xp.where(finite, x, 0.0)
    # Quantum (spacing of representable values) around x: 2^(E - m) for x in
    # binade [2^E, 2^(E+1)), and the fixed subnormal spacing 2^(emin - m) below
    # 2^emin. frexp gives |x| = f * 2^e with f in [0.5, 1), so E = e - 1, exactly.
    _, e = xp.frexp(xf)
    qexp = xp.maximum(e - 1, fmt.min_exponent) - fmt.mantissa_bits
    # Scaling by a power of two is exact, so `scaled` is x in units of its quantum:
    # an integer part (kept) and a fraction (rounded away). It is below 2^(m+1),
    # so rint/floor and the scaling back are exact too.
    scaled = xp.ldexp(xf, -qexp)
    if rounding == "nearest":
        units = xp.rint(scaled)  # round half to even: IEEE round-to-nearest-even
    else:
        low = xp.floor(scaled)
        # Up with probability (x - lo) / (hi - lo), so E[result] = x (Gupta et al.
        # 2015). rng.random() is uniform on multiples of 2^-53: P is exact to 2^-53.
        up = xp.asarray(rng.random(x.shape)) < (scaled - low)
        units = xp.where(up, low + 1.0, low)
    with np.errstate(over="ignore"):  # only near float64's max, where inf is right anyway
        rounded = xp.ldexp(units, qexp)
    rounded = xp.copysign(xp.where(finite, rounded, x), x)  # -0 and -tiny keep their sign
    # Overflow: the rounded magnitude (with an unbounded exponent) exceeds max.
    # Ties at max + ulp/2 were settled by rint above, as IEEE 754 requires.
    overflow_value = xp.copysign(xp.inf, x) if fmt.has_inf else xp.nan
    return xp.where(xp.abs(rounded) > fmt.max, overflow_value, rounded)


def round_to(
    x: Any,
    fmt: Format | str,
    rounding: str = "nearest",
    rng: np.random.Generator | None = None,
) -> Any:
    """Round ``x`` to ``fmt`` and return the values as a float32 array.

    float32 holds every fp16, bf16 and fp8 value exactly, so the result can be
    inspected and computed with, and ``result.astype(fmt.dtype)`` is exact.
    The rounding is computed from the format's fields, not by a cast, so it also
    serves as an independent check of ``numpy.float16`` and ``ml_dtypes``.

    ``rounding="nearest"``: IEEE round-to-nearest-even, as a cast does. Inputs
    are widened to float64 (exact for float32 and narrower) and rounded once;
    ml_dtypes' own float64 casts round twice, through float32 (see the tests).
    Magnitudes that round above ``fmt.max`` overflow to +-inf (NaN for formats
    without inf); NaN stays NaN; signed zeros keep their sign.

    ``rounding="stochastic"`` (needs ``rng``, a ``numpy.random.Generator``):
    round up to the next representable value with probability (x - lo)/(hi - lo),
    so representable values are unchanged and the result is unbiased.
    """
    rounded = _round64(x, get_format(fmt), rounding, rng)
    with np.errstate(invalid="ignore"):  # a float64 signaling NaN passes through unchanged
        return rounded.astype(np.float32)


def split_bits(x: Any, fmt: Format | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored ``(sign, exponent, mantissa)`` bit fields of ``x`` cast to ``fmt``.

    Named ``split_bits`` rather than ``bits`` because ``Format.bits`` is the
    width of a format. The fields are read from the real bit pattern of the
    stored value (the cast to ``fmt.dtype``, viewed as an unsigned integer), so
    a lesson can show exactly what the hardware holds. The exponent is the
    biased field: 0 for zeros and subnormals.
    """
    fmt = get_format(fmt)
    stored = _to_numpy(x).astype(fmt.dtype)
    pattern = stored.view(np.dtype(f"uint{8 * fmt.dtype.itemsize}")).astype(np.int64)
    mantissa = pattern & ((1 << fmt.mantissa_bits) - 1)
    exponent = (pattern >> fmt.mantissa_bits) & ((1 << fmt.exponent_bits) - 1)
    sign = (pattern >> (fmt.mantissa_bits + fmt.exponent_bits)) & 1
    return sign, exponent, mantissa


def bit_string(value: Any, fmt: Format | str) -> str:
    """The bits of one value stored in ``fmt``, e.g. ``"0 01111 0000000000"`` for fp16 1.0."""
    fmt = get_format(fmt)
    sign, exponent, mantissa = (int(f) for f in split_bits(np.asarray(value).reshape(()), fmt))
    fields = f"{sign} {exponent:0{fmt.exponent_bits}b}"
    return fields + (f" {mantissa:0{fmt.mantissa_bits}b}" if fmt.mantissa_bits else "")


class Category(enum.IntEnum):
    """What casting a value to a format does to it, judged from the value before the cast."""

    ZERO = 0  # x is exactly +-0
    FLUSHED_TO_ZERO = 1  # x != 0 but rounds to 0: underflow (Micikevicius et al. 2018, sec. 3.1)
    SUBNORMAL = 2  # rounds to a nonzero value below min_normal: fewer significant bits
    NORMAL = 3  # rounds to a finite value of magnitude >= min_normal
    OVERFLOW = 4  # rounds to +-inf (NaN without inf); includes infinite x
    NAN = 5  # x is NaN


CATEGORIES: tuple[str, ...] = tuple(c.name.lower() for c in Category)
"""The category names, in code order: the keys of :func:`count_categories`."""


def classify(x: Any, fmt: Format | str) -> Any:
    """An int8 array of :class:`Category` codes, one for each element of ``x``.

    Each value is classified by what round-to-nearest-even to ``fmt`` makes of
    it, from the value before the cast: a gradient that becomes 0 in fp16 counts
    as flushed_to_zero, not as zero, so underflow is never hidden.
    """
    fmt = get_format(fmt)
    xp = _array_module(x)
    x = _as_float64(x, xp)
    rounded = _round64(x, fmt, "nearest", None)
    magnitude = xp.abs(rounded)
    # Later conditions win, so each line only needs to be right for what is left.
    codes = xp.full(x.shape, Category.NORMAL, dtype=xp.int8)
    codes[magnitude < fmt.min_normal] = Category.SUBNORMAL
    codes[magnitude == 0] = Category.FLUSHED_TO_ZERO
    codes[x == 0] = Category.ZERO
    codes[~xp.isfinite(rounded)] = Category.OVERFLOW
    codes[xp.isnan(x)] = Category.NAN
    return codes


def count_categories(
    x: Any, fmt: Format | str, normalize: bool = False
) -> dict[str, int] | dict[str, float]:
    """How many elements of ``x`` fall in each category (fractions with ``normalize=True``).

    Keys are :data:`CATEGORIES`, all present (0 when empty). One bincount over
    the codes: cheap enough to record per-layer underflow at every step.
    """
    codes = classify(x, fmt)
    xp = _array_module(codes)
    counts = [int(c) for c in xp.bincount(codes.ravel(), minlength=len(CATEGORIES))]
    if not normalize:
        return dict(zip(CATEGORIES, counts, strict=True))
    total = max(codes.size, 1)
    return {name: count / total for name, count in zip(CATEGORIES, counts, strict=True)}
