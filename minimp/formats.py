"""Floating-point formats as data: their bit layout, rounding to them, and what rounding does.

A binary floating-point format is fixed by a few fields: exponent bits, fraction
(mantissa) bits, the exponent bias, and how it spends its special codes: whether
it has infinities, which codes are NaN (IEEE's whole all-ones exponent, only the
single all-ones code as in float8_e4m3fn, or none at all as in float4_e2m1fn),
whether overflow saturates at the largest value, whether there is a sign bit and
whether the zero exponent field holds subnormals. Everything a lesson needs follows
from them: the largest finite value, the smallest normal and subnormal values, the
machine epsilon, and the exact result of rounding any real number to the format.
This module derives all of it from the fields of a frozen :class:`Format`, so the
same code rounds to fp32, fp16, bf16, fp8, fp6, fp4 and the e8m0 scale format, and
the tests can check it bit for bit against ``numpy.float16`` and ``ml_dtypes``,
which are implemented independently.

Rounding is IEEE 754 round-to-nearest-even unless asked otherwise: it is what
the hardware does when mixed-precision training casts to fp16 (Micikevicius et
al. 2018, sec. 3.1), and it is why values at or below 2^-25 become zero in fp16.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Literal

import ml_dtypes
import numpy as np

from minimp.backend import array_module as _array_module
from minimp.backend import to_numpy as _to_numpy

__all__ = [
    "BFLOAT16",
    "CATEGORIES",
    "FLOAT4_E2M1FN",
    "FLOAT6_E2M3FN",
    "FLOAT6_E3M2FN",
    "FLOAT8_E4M3FN",
    "FLOAT8_E5M2",
    "FLOAT8_E8M0FNU",
    "FLOAT16",
    "FLOAT32",
    "FORMATS",
    "Category",
    "Format",
    "bit_string",
    "classify",
    "count_categories",
    "get_format",
    "round_in_range",
    "round_to",
    "split_bits",
]


NanEncoding = Literal["ieee", "all_ones", "none"]


@dataclass(frozen=True)
class Format:
    """A binary floating-point format: a sign bit, ``exponent_bits``, ``mantissa_bits``.

    ``mantissa_bits`` counts the stored fraction bits (the leading 1 of a normal
    number is implicit). How the format spends its special codes is data too:

    - ``has_inf``: the all-ones exponent with a zero fraction is +-inf (IEEE).
    - ``nan``: which codes are NaN. ``"ieee"``: the all-ones exponent with any
      nonzero fraction, so that whole binade is special (float32, float16,
      bfloat16, float8_e5m2). ``"all_ones"``: only the single code whose
      exponent and fraction bits are all ones, the rest of the top binade holds
      ordinary numbers (the "fn" formats: float8_e4m3fn, float8_e8m0fnu).
      ``"none"``: every code is a number (float4_e2m1fn, the fp6 formats).
    - ``saturates``: rounding past the largest value gives +-max (the OCP MX
      element formats, which have nothing else to give); otherwise overflow is
      +-inf where there is one and NaN where there is not (e4m3fn 500 -> NaN).
    - ``signed``: whether there is a sign bit (float8_e8m0fnu, the MX block
      scale, is a bare exponent: unsigned, so no negative value and no zero).
    - ``subnormals``: whether the zero exponent field holds zero and the
      subnormals. ``False`` makes that field one more binade (e8m0's 2^-127), so
      the format has no zero: what rounds below its smallest value rounds to it.

    ``dtype`` is the NumPy (or ml_dtypes) dtype that stores values of the format.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool
    dtype: np.dtype
    nan: NanEncoding = "ieee"
    saturates: bool = False
    signed: bool = True
    subnormals: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.nan not in ("ieee", "all_ones", "none"):
            raise ValueError(
                f"{self.name}: nan must be 'ieee', 'all_ones' or 'none', got {self.nan!r}"
            )
        if self.has_inf != (self.nan == "ieee"):
            # IEEE reserves the whole top binade for inf and NaN; the other encodings
            # keep it for numbers, so they have no code left for an infinity.
            raise ValueError(
                f"{self.name}: has_inf={self.has_inf} with nan={self.nan!r}; an IEEE format "
                "(has_inf=True) uses nan='ieee', a format without inf uses 'all_ones' or 'none'"
            )
        if self.saturates and self.has_inf:
            raise ValueError(f"{self.name}: a format with inf overflows to inf, it cannot saturate")

    @property
    def bits(self) -> int:
        """Total width: sign (if any) + exponent + fraction."""
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def max_exponent(self) -> int:
        """Unbiased exponent of the largest finite value.

        IEEE formats reserve the all-ones exponent field for inf/NaN; the others
        keep it for numbers, unless their one NaN code fills it (no fraction bits).
        """
        top_field = 2**self.exponent_bits - 1
        reserved = self.nan == "ieee" or (self.nan == "all_ones" and self.mantissa_bits == 0)
        return top_field - self.bias - int(reserved)

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal value: exponent field 1, or field 0
        in a format without subnormals."""
        return int(self.subnormals) - self.bias

    @property
    def max(self) -> float:
        """Largest finite value: 65504 for fp16, 448 for e4m3fn, 57344 for e5m2, 6 for e2m1."""
        largest_significand = 2 ** (self.mantissa_bits + 1) - 1  # 1.11...1 in binary
        if self.nan == "all_ones" and self.mantissa_bits > 0:
            largest_significand -= 1  # the all-ones fraction of the top binade is NaN
        return math.ldexp(largest_significand, self.max_exponent - self.mantissa_bits)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, 2^(1-bias): 2^-14 (6.1e-5) for fp16."""
        return math.ldexp(1.0, self.min_exponent)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, 2^(1-bias-m): 2^-24 (6.0e-8) for fp16.

        Below half of it, round-to-nearest gives zero: the gradient underflow of
        Micikevicius et al. 2018, sec. 3.1. (Without subnormals: min_normal.)
        """
        if not self.subnormals:
            return self.min_normal
        return math.ldexp(1.0, self.min_exponent - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Gap between 1 and the next value, 2^-m: the relative precision of the format."""
        return math.ldexp(1.0, -self.mantissa_bits)


FLOAT32 = Format("float32", 8, 23, 127, True, np.float32)
FLOAT16 = Format("float16", 5, 10, 15, True, np.float16)
BFLOAT16 = Format("bfloat16", 8, 7, 127, True, ml_dtypes.bfloat16)
FLOAT8_E4M3FN = Format("float8_e4m3fn", 4, 3, 7, False, ml_dtypes.float8_e4m3fn, nan="all_ones")
FLOAT8_E5M2 = Format("float8_e5m2", 5, 2, 15, True, ml_dtypes.float8_e5m2)
# The OCP Microscaling (MX) v1.0 element formats: no inf, no NaN, saturating.
FLOAT6_E3M2FN = Format(
    "float6_e3m2fn", 3, 2, 3, False, ml_dtypes.float6_e3m2fn, nan="none", saturates=True
)
FLOAT6_E2M3FN = Format(
    "float6_e2m3fn", 2, 3, 1, False, ml_dtypes.float6_e2m3fn, nan="none", saturates=True
)
FLOAT4_E2M1FN = Format(
    "float4_e2m1fn", 2, 1, 1, False, ml_dtypes.float4_e2m1fn, nan="none", saturates=True
)
# The MX block scale: a power of two from 2^-127 to 2^127, 0xFF is NaN.
FLOAT8_E8M0FNU = Format(
    "float8_e8m0fnu", 8, 0, 127, False, ml_dtypes.float8_e8m0fnu,
    nan="all_ones", signed=False, subnormals=False,
)  # fmt: skip

FORMATS: tuple[Format, ...] = (
    FLOAT32, FLOAT16, BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2,
    FLOAT6_E3M2FN, FLOAT6_E2M3FN, FLOAT4_E2M1FN, FLOAT8_E8M0FNU,
)  # fmt: skip
_BY_NAME = {fmt.name: fmt for fmt in FORMATS}
_WIDEN_BIT_FOR_BIT = frozenset(fmt.dtype for fmt in FORMATS)


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


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], xp: Any) -> Any:
    """Uniform [0, 1) numbers on ``xp``'s device. On a GPU they are drawn there, by a
    device generator seeded from ``rng`` (so still a function of its seed): drawn on
    the host they would cross the bus, 8 bytes for every value rounded."""
    if xp is np:
        return rng.random(shape)
    return xp.random.default_rng(int(rng.integers(2**63))).random(shape)


def _round64(
    x: Any, fmt: Format, rounding: str, rng: np.random.Generator | None
) -> tuple[Any, Any]:
    """``x`` rounded to ``fmt``, as float64 (exact: every value of every format fits),
    and where it overflowed (rounded past ``fmt.max``, or was infinite)."""
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
        up = _uniform(rng, x.shape, xp) < (scaled - low)
        units = xp.where(up, low + 1.0, low)
    with np.errstate(over="ignore"):  # only near float64's max, where inf is right anyway
        rounded = xp.ldexp(units, qexp)
    rounded = xp.copysign(xp.where(finite, rounded, x), x)  # -0 and -tiny keep their sign
    if not fmt.subnormals:  # no zero to round to: the smallest value is the nearest one
        rounded = xp.where((rounded == 0) & (x != 0), xp.copysign(fmt.min_normal, x), rounded)
    # Overflow: the rounded magnitude (with an unbounded exponent) exceeds max.
    # Ties at max + ulp/2 were settled by rint above, as IEEE 754 requires.
    overflowed = xp.abs(rounded) > fmt.max
    if fmt.saturates:
        overflow_value = xp.copysign(fmt.max, x)
    else:  # the sign survives into a NaN too: e4m3fn -500 is stored as 0xff, as ml_dtypes does
        overflow_value = xp.copysign(xp.inf if fmt.has_inf else xp.nan, x)
    rounded = xp.where(overflowed, overflow_value, rounded)
    if not fmt.signed:  # no sign bit (e8m0): a negative value has no code
        rounded = xp.where(x < 0, xp.nan, rounded)
    if not fmt.subnormals:  # and no zero: +-0 has none either
        rounded = xp.where(x == 0, xp.nan, rounded)
    return rounded, overflowed


def round_in_range(x: Any, fmt: Format | str) -> Any:
    """``x`` (float32 or float64, each |x| <= fmt.max, or NaN) rounded to the nearest
    value of ``fmt``, ties to even, in x's own dtype: what ``round_to`` gives such values,
    bit for bit (the tests check), at a tenth of its time. The fp8 and block casts clip
    first, then call this. ``fmt`` must have subnormals (not e8m0).

    Normal range: round the bit pattern at the format's last mantissa bit (a carry into
    the exponent is the right result). Below min_normal the spacing is the constant
    min_subnormal, so rint(x / spacing) * spacing."""
    fmt = get_format(fmt)
    if not fmt.subnormals:
        raise ValueError(f"round_in_range: {fmt.name} has no subnormals; use round_to")
    xp = _array_module(x)
    width, mantissa = (64, 52) if x.dtype == np.float64 else (32, 23)
    uint = np.uint64 if width == 64 else np.uint32
    shift = mantissa - fmt.mantissa_bits
    bits = xp.ascontiguousarray(x).view(uint)
    ties_to_even = ((bits >> uint(shift)) & uint(1)) + uint((1 << (shift - 1)) - 1)
    keep = uint(((1 << width) - 1) ^ ((1 << shift) - 1))
    rounded = ((bits + ties_to_even) & keep).view(x.dtype)
    spacing = x.dtype.type(fmt.min_subnormal)
    subnormal = xp.rint(x / spacing) * spacing
    rounded = xp.where(xp.abs(x) < x.dtype.type(fmt.min_normal), subnormal, rounded)
    return xp.where(xp.isnan(x), x, rounded)


def round_to(
    x: Any,
    fmt: Format | str,
    rounding: str = "nearest",
    rng: np.random.Generator | None = None,
) -> Any:
    """Round ``x`` to ``fmt`` and return the values as a float32 array.

    float32 holds every value of every format here exactly, so the result can be
    inspected and computed with, and ``result.astype(fmt.dtype)`` is exact.
    The rounding is computed from the format's fields, not by a cast, so it also
    serves as an independent check of ``numpy.float16`` and ``ml_dtypes``.

    ``rounding="nearest"``: IEEE round-to-nearest-even, as a cast does. Inputs
    are widened to float64 (exact for float32 and narrower) and rounded once;
    ml_dtypes' own float64 casts round twice, through float32 (see the tests).
    Magnitudes that round above ``fmt.max`` overflow to +-inf, to a NaN of the
    same sign for formats without inf, or to +-max for saturating formats;
    signed zeros keep their sign. In a format without zero or sign (e8m0), zero
    and negative values have no code: NaN.

    A NaN comes back as the same NaN, payload and signaling bit included, as
    NumPy's own float16 cast keeps them (a float16 0x7c01 stays 0x7c01), so
    ``round_to(x, fmt).astype(fmt.dtype)`` stores it as the cast would. A format
    without NaN (fp4, fp6) cannot hold one: round_to leaves the NaN visible
    rather than hide it, where ml_dtypes' cast stores a zero.

    ``rounding="stochastic"`` (needs ``rng``, a ``numpy.random.Generator``):
    round up to the next representable value with probability (x - lo)/(hi - lo),
    so representable values are unchanged and the result is unbiased.
    """
    xp = _array_module(x)
    x = xp.asarray(x)
    rounded, _ = _round64(x, get_format(fmt), rounding, rng)
    with np.errstate(invalid="ignore"):
        rounded = rounded.astype(np.float32)
        if x.dtype not in _WIDEN_BIT_FOR_BIT:
            return rounded
        # These widen to float32 bit for bit, NaN payloads included; the float64
        # detour above would have quieted a signaling NaN.
        return xp.where(xp.isnan(x), x.astype(np.float32), rounded)


def split_bits(x: Any, fmt: Format | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored ``(sign, exponent, mantissa)`` bit fields of ``x`` cast to ``fmt``.

    Named ``split_bits`` rather than ``bits`` because ``Format.bits`` is the
    width of a format. The fields are read from the real bit pattern of the
    stored value (the cast to ``fmt.dtype``, viewed as an unsigned integer), so
    a lesson can show exactly what the hardware holds. The exponent is the
    biased field: 0 for zeros and subnormals.
    """
    fmt = get_format(fmt)
    with np.errstate(invalid="ignore", over="ignore"):  # the cast's own NaN and inf
        stored = _to_numpy(x).astype(fmt.dtype)
    pattern = stored.view(np.dtype(f"uint{8 * fmt.dtype.itemsize}")).astype(np.int64)
    mantissa = pattern & ((1 << fmt.mantissa_bits) - 1)
    exponent = (pattern >> fmt.mantissa_bits) & ((1 << fmt.exponent_bits) - 1)
    sign = (pattern >> (fmt.mantissa_bits + fmt.exponent_bits)) & int(fmt.signed)
    return sign, exponent, mantissa


def bit_string(value: Any, fmt: Format | str) -> str:
    """The bits of one value stored in ``fmt``, e.g. ``"0 01111 0000000000"`` for fp16 1.0."""
    fmt = get_format(fmt)
    sign, exponent, mantissa = (int(f) for f in split_bits(np.asarray(value).reshape(()), fmt))
    fields = [f"{sign}"] if fmt.signed else []
    fields.append(f"{exponent:0{fmt.exponent_bits}b}")
    if fmt.mantissa_bits:
        fields.append(f"{mantissa:0{fmt.mantissa_bits}b}")
    return " ".join(fields)


class Category(enum.IntEnum):
    """What casting a value to a format does to it, judged from the value before the cast."""

    ZERO = 0  # x is exactly +-0
    FLUSHED_TO_ZERO = 1  # x != 0 but rounds to 0: underflow (Micikevicius et al. 2018, sec. 3.1)
    SUBNORMAL = 2  # rounds to a nonzero value below min_normal: fewer significant bits
    NORMAL = 3  # rounds to a finite value of magnitude >= min_normal
    OVERFLOW = 4  # rounds to +-inf (NaN without inf, +-max if saturating); includes infinite x
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
    rounded, overflowed = _round64(x, fmt, "nearest", None)
    magnitude = xp.abs(rounded)
    # Later conditions win, so each line only needs to be right for what is left.
    codes = xp.full(x.shape, Category.NORMAL, dtype=xp.int8)
    codes[magnitude < fmt.min_normal] = Category.SUBNORMAL
    codes[magnitude == 0] = Category.FLUSHED_TO_ZERO
    codes[x == 0] = Category.ZERO
    # saturated values count as overflow too: they lost their magnitude
    codes[overflowed | (xp.isnan(rounded) & (x != 0))] = Category.OVERFLOW
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
