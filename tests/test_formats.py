"""minimp.formats against the independent oracles: numpy.finfo/float16 and ml_dtypes.

round_to computes rounding from a Format's fields alone, so agreeing bit for bit
with the casts of numpy and ml_dtypes (written independently, in C++) over every
bit pattern, every tie and millions of random values is real evidence.

One thing the oracles get wrong, found while writing these tests (ml_dtypes
0.6.0, and torch 2.13 too, even for float16): a float64 -> bfloat16/fp8 cast
goes through float32 first, and that double rounding breaks ties that are not
ties: 1 + 2^-8 + 2^-40 lies above the midpoint of 1 and 1 + 2^-7, so it rounds
to 1 + 2^-7, but float32 rounds it to the midpoint 1 + 2^-8 and the second
rounding then goes to the even neighbour, 1. numpy's float64 -> float16 cast is
direct and right. So float64 inputs are checked against a corrected oracle:
round to float32 *to odd* first, which makes the second rounding exact
(Boldo & Melquiond 2008), then cast with ml_dtypes.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimp import formats
from minimp.formats import (
    BFLOAT16,
    CATEGORIES,
    FLOAT4_E2M1FN,
    FLOAT6_E2M3FN,
    FLOAT6_E3M2FN,
    FLOAT8_E4M3FN,
    FLOAT8_E5M2,
    FLOAT8_E8M0FNU,
    FLOAT16,
    FLOAT32,
    FORMATS,
    Category,
    Format,
    bit_string,
    classify,
    count_categories,
    get_format,
    round_to,
    split_bits,
)

# The OCP MX element formats (saturating, no inf, no NaN) and the e8m0 block scale.
MX_FORMATS = [FLOAT6_E3M2FN, FLOAT6_E2M3FN, FLOAT4_E2M1FN, FLOAT8_E8M0FNU]
# every bit pattern enumerable
SMALL_FORMATS = [FLOAT16, BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2, *MX_FORMATS]
SIGNED_FORMATS = [fmt for fmt in SMALL_FORMATS if fmt.signed]
# Formats minimp does not name, built from fields only: round_to must be generic.
OTHER_FORMATS = [
    Format("float8_e4m3", 4, 3, 7, True, ml_dtypes.float8_e4m3),  # IEEE-style, max 240
    Format("float8_e3m4", 3, 4, 3, True, ml_dtypes.float8_e3m4),  # max 15.5
]
N_RANDOM = 4_000_000  # random float32 bit patterns per format


def uint_dtype(fmt: Format) -> np.dtype:
    return np.dtype(f"uint{8 * fmt.dtype.itemsize}")


def all_values(fmt: Format) -> np.ndarray:
    """Every bit pattern of a (<= 16-bit) format, as stored values."""
    return np.arange(2**fmt.bits, dtype=uint_dtype(fmt)).view(fmt.dtype)


def widen(values: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Exact widening; signaling NaNs among the bit patterns raise "invalid", harmlessly."""
    with np.errstate(invalid="ignore"):
        return values.astype(dtype)


def cast(x: np.ndarray, fmt: Format) -> np.ndarray:
    """The oracle: numpy's or ml_dtypes' own cast, widened back to float32 (exact)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is expected
        return x.astype(fmt.dtype).astype(np.float32)


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Bit-for-bit equality of float32 arrays (so -0 != 0), with any NaN equal to any NaN."""
    assert got.dtype == want.dtype == np.float32
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    bad = np.flatnonzero(got[~nan].view(np.uint32) != want[~nan].view(np.uint32))
    if bad.size:
        x_bad = got[~nan][bad[:5]], want[~nan][bad[:5]]
        pytest.fail(f"{bad.size} values differ; first got/want: {x_bad}")


def tie_inputs(fmt: Format) -> np.ndarray:
    """Midpoints of adjacent representable values (signed), and their float32 neighbours.

    A midpoint of two p-bit values has p + 1 bits, so it is exact in float32 for
    every format here; the neighbours check that "just above" and "just below"
    a tie round away from it.
    """
    values = widen(all_values(fmt))
    positive = np.unique(values[np.isfinite(values) & (values >= 0)])
    # Extend by the first value past max: the midpoint to it is the overflow threshold.
    top = fmt.max + 2.0 ** (fmt.max_exponent - fmt.mantissa_bits)
    positive = np.append(positive, top)
    mid = ((positive[:-1] + positive[1:]) / 2).astype(np.float32)
    mid = np.concatenate([mid, -mid])
    return np.concatenate(
        [mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))]
    )


def edge_inputs(fmt: Format) -> np.ndarray:
    """Range edges of fmt (and their float32 neighbours), plus +-0, +-inf, NaN."""
    ulp_max = 2.0 ** (fmt.max_exponent - fmt.mantissa_bits)
    points = [
        fmt.min_subnormal / 2, fmt.min_subnormal, fmt.min_normal, fmt.max,
        fmt.max + ulp_max / 2, fmt.max + ulp_max, 2 * fmt.max, 1.0, 2.0**-25, 2.0**-24,
    ]  # fmt: skip
    with np.errstate(over="ignore"):  # bfloat16's max + ulp is 2^128: float32's inf
        edges = np.array(points, dtype=np.float32)
    edges = np.concatenate(
        [edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(0))]
    )
    specials = np.array([0.0, np.inf, np.nan], dtype=np.float32)
    return np.concatenate([edges, -edges, specials, -specials])


def random_float32(n: int, seed: int) -> np.ndarray:
    """Uniform random bit patterns: every exponent, float32 subnormals, inf and NaN."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, size=n, dtype=np.uint32).view(np.float32)


def to_float32_round_to_odd(x: np.ndarray) -> np.ndarray:
    """float64 -> float32, truncated, with the last bit set when inexact ("round to odd").

    Rounding to odd into >= p + 2 bits, then to nearest-even with p bits, equals
    rounding to nearest-even directly: the odd bit records "there was more".
    """
    with np.errstate(over="ignore", invalid="ignore"):
        near = x.astype(np.float32)
        overshot = np.abs(near.astype(np.float64)) > np.abs(x)
        truncated = np.where(overshot, np.nextafter(near, np.float32(0)), near)
        inexact = truncated.astype(np.float64) != x
    return (truncated.view(np.uint32) | inexact.astype(np.uint32)).view(np.float32)


# --- the format constants --------------------------------------------------------------


@pytest.mark.parametrize("fmt", [*FORMATS, *OTHER_FORMATS], ids=lambda f: f.name)
def test_format_constants_match_finfo(fmt: Format) -> None:
    info = ml_dtypes.finfo(fmt.dtype)  # numpy.finfo for float16 and float32
    assert fmt.max == float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    assert fmt.eps == float(info.eps)
    assert fmt.bits == info.bits
    assert (fmt.exponent_bits, fmt.mantissa_bits) == (info.nexp, info.nmant)
    assert (fmt.min_exponent, fmt.max_exponent + 1) == (info.minexp, info.maxexp)


def test_format_facts_from_the_paper() -> None:
    assert (FLOAT16.max, FLOAT16.min_normal, FLOAT16.min_subnormal) == (65504, 2**-14, 2**-24)
    assert (FLOAT8_E4M3FN.max, FLOAT8_E5M2.max, BFLOAT16.eps) == (448, 57344, 2**-7)
    assert not FLOAT8_E4M3FN.has_inf and FLOAT8_E5M2.has_inf


def test_get_format() -> None:
    assert get_format("float16") is FLOAT16
    assert get_format(FLOAT8_E5M2) is FLOAT8_E5M2
    assert get_format(np.float16) is FLOAT16
    assert get_format(np.dtype("float32")) is FLOAT32
    assert get_format(ml_dtypes.bfloat16) is BFLOAT16
    assert get_format(np.dtype(ml_dtypes.float8_e4m3fn)) is FLOAT8_E4M3FN
    with pytest.raises(ValueError, match="float16, bfloat16, float8_e4m3fn, float8_e5m2"):
        get_format("half")
    with pytest.raises(ValueError, match="float64"):
        get_format(np.float64)


# --- round to nearest: bit for bit against the casts ---------------------------------


@pytest.mark.parametrize("fmt", SMALL_FORMATS + OTHER_FORMATS, ids=lambda f: f.name)
def test_every_bit_pattern_round_trips(fmt: Format) -> None:
    values = all_values(fmt)
    with np.errstate(invalid="ignore"):  # signaling NaNs come back signaling: the cast says so
        back = round_to(widen(values, np.float32), fmt).astype(fmt.dtype)
    nan = np.isnan(widen(values, np.float32))
    assert np.isnan(widen(back, np.float32))[nan].all()
    np.testing.assert_array_equal(
        back.view(uint_dtype(fmt))[~nan], values.view(uint_dtype(fmt))[~nan]
    )


@pytest.mark.parametrize("fmt", SMALL_FORMATS + OTHER_FORMATS, ids=lambda f: f.name)
def test_round_to_matches_cast_bit_for_bit(fmt: Format) -> None:
    x = np.concatenate([random_float32(N_RANDOM, seed=fmt.bits), tie_inputs(fmt), edge_inputs(fmt)])
    assert_same_bits_as_cast(round_to(x, fmt), x, fmt)


def assert_same_bits_as_cast(got: np.ndarray, x: np.ndarray, fmt: Format) -> None:
    """round_to against the cast; a format without NaN keeps NaN inputs NaN (the cast
    stores a zero for them, see round_to's docstring)."""
    if fmt.nan == "none":
        nan = np.isnan(x)
        assert np.isnan(got[nan]).all()
        got, x = got[~nan], x[~nan]
    assert_same_bits(got, cast(x, fmt))


def test_float16_ties_and_thresholds_by_hand() -> None:
    x = [2.0**-25, np.nextafter(np.float32(2**-25), 1), 3 * 2.0**-25, 65519.99, 65520, -65520]
    want = [0.0, 2.0**-24, 2.0**-23, 65504, np.inf, -np.inf]
    np.testing.assert_array_equal(round_to(x, "float16"), np.array(want, np.float32))
    assert round_to(-1e-10, "float16").view(np.uint32) == np.float32(-0.0).view(np.uint32)


def test_fp8_overflow_does_not_saturate() -> None:
    out = round_to([464, 465, 500, np.inf, 1e5, 61439, 61440], FLOAT8_E4M3FN)
    np.testing.assert_array_equal(np.isnan(out), [False, True, True, True, True, True, True])
    assert out[0] == 448  # a tie between 448 (fraction 110) and 480 (111): to even
    out = round_to([1e5, 61439, 61440, -np.inf], FLOAT8_E5M2)
    np.testing.assert_array_equal(out, [np.inf, 57344, np.inf, -np.inf])


def test_float32_from_float64_matches_numpy() -> None:
    rng = np.random.default_rng(32)
    x = rng.integers(0, 2**64, size=N_RANDOM, dtype=np.uint64).view(np.float64)
    a = rng.standard_normal(200_000).astype(np.float32)  # float32 ties, exact in float64
    mid = (a.astype(np.float64) + np.nextafter(a, np.float32(np.inf))) / 2
    ties = np.concatenate([mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf)])
    x = np.concatenate([x, ties, np.array([3.4028235677973366e38, 2.0**-150, 1e-320])])
    assert_same_bits(round_to(x, FLOAT32), cast(x, FLOAT32))


@pytest.mark.parametrize("fmt", SMALL_FORMATS + OTHER_FORMATS, ids=lambda f: f.name)
def test_float64_inputs_round_once(fmt: Format) -> None:
    rng = np.random.default_rng(64)
    ties = tie_inputs(fmt).astype(np.float64)
    tiny = np.abs(ties) * 2.0**-40
    scale = 2.0 ** rng.integers(
        fmt.min_exponent - fmt.mantissa_bits - 2, fmt.max_exponent + 2, 200_000
    )
    x = np.concatenate([ties + tiny, ties - tiny, rng.uniform(-2, 2, scale.size) * scale])
    assert_same_bits_as_cast(round_to(x, fmt), to_float32_round_to_odd(x), fmt)
    if fmt is FLOAT16:  # numpy's float64 -> float16 cast is direct, hence right
        assert_same_bits(round_to(x, fmt), cast(x, fmt))
    # The case from the module docstring, where ml_dtypes 0.6.0 returns 1.0 for bfloat16.
    assert round_to(1 + 2.0**-8 + 2.0**-40, BFLOAT16) == 1 + 2.0**-7


def test_scalars_and_lists() -> None:
    out = round_to(0.1, "float16")
    assert out.dtype == np.float32 and out.shape == () and out == np.float16(0.1)
    assert round_to([1, 2.0001], "bfloat16").tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="nearest"):
        round_to(1.0, FLOAT16, rounding="up")


# --- stochastic rounding -----------------------------------------------------------


def neighbours(x: np.ndarray, fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """The representable values just below and above x (equal when x is representable)."""
    table = widen(all_values(fmt))
    table = np.sort(table[np.isfinite(table)])
    low = table[np.searchsorted(table, x, side="right") - 1]
    high = table[np.searchsorted(table, x, side="left")]
    return low, high


@pytest.mark.parametrize("fmt", SIGNED_FORMATS, ids=lambda f: f.name)
@settings(max_examples=60, deadline=None)
@given(value=st.floats(-1.0, 1.0, allow_subnormal=True), power=st.integers(-40, 17))
def test_stochastic_gives_a_neighbour(fmt: Format, value: float, power: int) -> None:
    x = np.float64(np.float32(value * 2.0**power))
    if abs(x) > fmt.max:
        return
    low, high = neighbours(np.array([x]), fmt)
    out = round_to(np.full(64, x, np.float32), fmt, "stochastic", np.random.default_rng(0))
    assert np.all((out == low) | (out == high)), (x, low, high, np.unique(out))


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
def test_stochastic_keeps_representable_values(fmt: Format) -> None:
    values = widen(all_values(fmt), np.float32)
    out = round_to(values, fmt, "stochastic", rng=np.random.default_rng(1))
    assert_same_bits(out, values)


@pytest.mark.parametrize(
    ("x", "fmt"),
    [(1 + 2.0**-12, FLOAT16), (0.3 * 2.0**-24, FLOAT16), (3.3, BFLOAT16), (0.7, FLOAT8_E4M3FN),
     (-1e-5, FLOAT8_E5M2)],
)  # fmt: skip
def test_stochastic_is_unbiased(x: float, fmt: Format) -> None:
    n = 200_000
    x32 = np.float32(x)
    low, high = neighbours(np.array([x32], np.float64), fmt)
    p = (x32 - low[0]) / (high[0] - low[0])
    assert 0 < p < 1
    standard_error = (high[0] - low[0]) * np.sqrt(p * (1 - p) / n)
    out = round_to(np.full(n, x32), fmt, "stochastic", np.random.default_rng(2))
    assert abs(out.astype(np.float64).mean() - x32) < 5 * standard_error
    assert set(np.unique(out)) == {np.float32(low[0]), np.float32(high[0])}


def test_stochastic_overflow_and_seeds() -> None:
    out = round_to(np.full(1000, 460.0), FLOAT8_E4M3FN, "stochastic", np.random.default_rng(3))
    assert set(out[~np.isnan(out)]) == {448.0} and 0 < np.isnan(out).sum() < 1000
    out = round_to(np.full(1000, 65510.0), FLOAT16, "stochastic", np.random.default_rng(3))
    assert set(out) == {65504.0, np.inf}
    x = np.random.default_rng(4).standard_normal(1000)
    a, b, c = (round_to(x, FLOAT16, "stochastic", np.random.default_rng(s)) for s in (5, 5, 6))
    assert_same_bits(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match=r"rng=numpy\.random\.default_rng"):
        round_to(x, FLOAT16, "stochastic")


# --- bits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fmt", "want"),
    [
        (1.0, FLOAT16, "0 01111 0000000000"),
        (-2.0, FLOAT16, "1 10000 0000000000"),
        (65504, FLOAT16, "0 11110 1111111111"),
        (2.0**-24, FLOAT16, "0 00000 0000000001"),
        (np.inf, FLOAT16, "0 11111 0000000000"),
        (-0.0, FLOAT16, "1 00000 0000000000"),
        (1.0, BFLOAT16, "0 01111111 0000000"),
        (-np.inf, BFLOAT16, "1 11111111 0000000"),
        (2.0**-133, BFLOAT16, "0 00000000 0000001"),
        (448, FLOAT8_E4M3FN, "0 1111 110"),
        (2.0**-9, FLOAT8_E4M3FN, "0 0000 001"),
        (57344, FLOAT8_E5M2, "0 11110 11"),
        (np.inf, FLOAT8_E5M2, "0 11111 00"),
        (1.0, FLOAT32, "0 01111111 00000000000000000000000"),
    ],
)
def test_bit_string(value: float, fmt: Format, want: str) -> None:
    assert bit_string(value, fmt) == want


def test_bit_string_of_nan_in_e4m3fn() -> None:
    assert bit_string(np.nan, FLOAT8_E4M3FN).endswith("1111 111")


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
def test_split_bits_matches_the_stored_pattern_and_value(fmt: Format) -> None:
    values = all_values(fmt)
    sign, exponent, mantissa = split_bits(values, fmt)
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    pattern = (sign << (e + m)) | (exponent << m) | mantissa
    np.testing.assert_array_equal(pattern, values.view(uint_dtype(fmt)))
    # The fields mean what IEEE says: (-1)^s * 1.mantissa * 2^(exponent - bias), or
    # (-1)^s * 0.mantissa * 2^(1 - bias) when the exponent field is 0 (subnormal).
    # Without subnormals (e8m0) the zero field is one more binade: no special case.
    x = widen(values)
    finite = np.isfinite(x)
    subnormal = (exponent == 0) & fmt.subnormals
    significand = np.where(subnormal, mantissa, mantissa + 2**m).astype(np.float64)
    power = np.maximum(exponent, int(fmt.subnormals)) - fmt.bias - m
    rebuilt = np.where(sign == 1, -1.0, 1.0) * np.ldexp(significand, power)
    np.testing.assert_array_equal(rebuilt[finite], x[finite])


# --- classify ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "fmt", "category"),
    [
        (2.0**-25, FLOAT16, Category.FLUSHED_TO_ZERO),
        (-(2.0**-25), FLOAT16, Category.FLUSHED_TO_ZERO),
        (2.0**-24, FLOAT16, Category.SUBNORMAL),
        (2.0**-14, FLOAT16, Category.NORMAL),
        (6.1e-5, FLOAT16, Category.SUBNORMAL),  # just below 2^-14 = 6.1035e-5
        (2.0**-14 - 2.0**-25, FLOAT16, Category.NORMAL),  # a tie: to even, 2^-14
        (70000.0, FLOAT16, Category.OVERFLOW),
        (65519.0, FLOAT16, Category.NORMAL),
        (np.inf, FLOAT16, Category.OVERFLOW),
        (1e5, FLOAT8_E5M2, Category.OVERFLOW),
        (500.0, FLOAT8_E4M3FN, Category.OVERFLOW),
        (464.0, FLOAT8_E4M3FN, Category.NORMAL),
        (0.0, FLOAT16, Category.ZERO),
        (-0.0, FLOAT16, Category.ZERO),
        (np.nan, FLOAT16, Category.NAN),
        (np.nan, FLOAT8_E4M3FN, Category.NAN),
        (1e-30, FLOAT16, Category.FLUSHED_TO_ZERO),
        (1e-30, BFLOAT16, Category.NORMAL),
        (1e-40, BFLOAT16, Category.SUBNORMAL),
    ],
)
def test_classify_by_hand(x: float, fmt: Format, category: Category) -> None:
    codes = classify(np.array([x], np.float32), fmt)
    assert codes.dtype == np.int8
    assert Category(codes[0]) is category


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
def test_classify_agrees_with_the_cast(fmt: Format) -> None:
    x = np.concatenate([random_float32(100_000, seed=7), tie_inputs(fmt), edge_inputs(fmt)])
    r = cast(x, fmt)
    # A saturating format overflows where the rounding would pass max: from max + ulp/2
    # on (max's last fraction bit is 1, so that tie goes up, past max).
    ulp_max = 2.0 ** (fmt.max_exponent - fmt.mantissa_bits)
    saturated = fmt.saturates & (np.abs(x) >= fmt.max + ulp_max / 2)
    want = np.select(
        [np.isnan(x), x == 0, r == 0, ~np.isfinite(r) | saturated, np.abs(r) < fmt.min_normal],
        [Category.NAN, Category.ZERO, Category.FLUSHED_TO_ZERO, Category.OVERFLOW,
         Category.SUBNORMAL],
        Category.NORMAL,
    )  # fmt: skip
    np.testing.assert_array_equal(classify(x, fmt), want)


def test_count_categories() -> None:
    x = np.array([0.0, -0.0, 2.0**-25, 1e-30, 2.0**-24, 1.0, 2.0, 70000.0, np.nan])
    counts = count_categories(x, "float16")
    assert list(counts) == list(CATEGORIES)
    assert counts == {
        "zero": 2, "flushed_to_zero": 2, "subnormal": 1, "normal": 2, "overflow": 1, "nan": 1,
    }  # fmt: skip
    assert sum(counts.values()) == x.size
    fractions = count_categories(x.reshape(3, 3), FLOAT16, normalize=True)
    assert fractions["flushed_to_zero"] == pytest.approx(2 / 9)
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert sum(count_categories(np.zeros((0,)), FLOAT16, normalize=True).values()) == 0


def test_public_api() -> None:
    assert set(formats.__all__) <= set(dir(formats))
    assert CATEGORIES == ("zero", "flushed_to_zero", "subnormal", "normal", "overflow", "nan")


# --- the special codes as fields: overflow, saturation, NaN, no sign, no zero ----------


def stored(x: Any, fmt: Format) -> list[int]:
    """The codes a cast stores for round_to's result."""
    with np.errstate(invalid="ignore", over="ignore"):
        return round_to(x, fmt).astype(fmt.dtype).view(uint_dtype(fmt)).tolist()


def test_negative_overflow_keeps_its_sign_in_e4m3fn() -> None:
    x = np.array([-500, -np.inf, 500, np.inf, -np.nan], np.float32)
    assert stored(x, FLOAT8_E4M3FN) == [0xFF, 0xFF, 0x7F, 0x7F, 0xFF]
    assert stored(x, FLOAT8_E4M3FN) == x.astype(FLOAT8_E4M3FN.dtype).view(np.uint8).tolist()


@pytest.mark.parametrize(
    ("bits", "fmt"),
    [(0x7C01, FLOAT16), (0xFE03, FLOAT16), (0x7F81, BFLOAT16), (0x7F80_0001, FLOAT32),
     (0xFFC0_1234, FLOAT32)],
)  # fmt: skip
def test_nan_payloads_and_signaling_bits_survive(bits: int, fmt: Format) -> None:
    """As NumPy's float16 <-> float32 casts keep them (0x7c01 is a signaling NaN)."""
    x = np.array([bits], uint_dtype(fmt)).view(fmt.dtype)
    with np.errstate(invalid="ignore"):
        widened = x.astype(np.float32)
    assert round_to(x, fmt).view(np.uint32).tolist() == widened.view(np.uint32).tolist()
    if fmt is not BFLOAT16:  # ml_dtypes' float32 -> bfloat16 cast makes every NaN 0x7fc0
        assert stored(x, fmt) == [bits]


def test_mx_element_formats_saturate() -> None:
    x = np.array([6.99, 7.0, 1e9, np.inf, -np.inf, -7.0, 0.25, 0.75, 5.0], np.float32)
    np.testing.assert_array_equal(round_to(x, FLOAT4_E2M1FN), [6, 6, 6, 6, -6, -6, 0, 1, 4])
    np.testing.assert_array_equal(round_to(x, FLOAT4_E2M1FN), cast(x, FLOAT4_E2M1FN))
    assert (FLOAT6_E2M3FN.max, FLOAT6_E3M2FN.max, FLOAT4_E2M1FN.max) == (7.5, 28, 6)
    assert round_to(1e9, FLOAT6_E3M2FN) == 28 and round_to(-1e9, FLOAT6_E2M3FN) == -7.5
    codes = classify(np.array([1e9, 6.5, 7.0], np.float32), FLOAT4_E2M1FN)
    assert codes.tolist() == [Category.OVERFLOW, Category.NORMAL, Category.OVERFLOW]


def test_a_format_without_nan_keeps_nan_visible() -> None:
    with np.errstate(invalid="ignore"):
        assert np.isnan(round_to([np.nan, -np.nan], FLOAT4_E2M1FN)).all()
        assert (
            stored([np.nan], FLOAT6_E2M3FN)
            == np.float32([np.nan]).astype(FLOAT6_E2M3FN.dtype).view(np.uint8).tolist()
        )  # what the cast then stores: ml_dtypes' zero


def test_e8m0_is_a_bare_power_of_two() -> None:
    # ties between 2^e and 2^(e+1) go up (an exponent alone is "odd"); nothing rounds to 0
    x = [1.0, 1.5, 3.0, 0.75, 1e-45, 2.0**127, 1.49 * 2.0**127]
    assert round_to(x, FLOAT8_E8M0FNU).tolist() == [1, 2, 4, 1, 2.0**-127, 2.0**127, 2.0**127]
    assert np.isnan(round_to(1.5 * 2.0**127, FLOAT8_E8M0FNU))  # overflow: NaN, no inf
    # no sign and no zero: NaN, stored as 0xff
    assert stored([0.0, -0.0, -1.0, np.inf, np.nan], FLOAT8_E8M0FNU) == [0xFF] * 5
    assert bit_string(1.0, FLOAT8_E8M0FNU) == "01111111" and FLOAT8_E8M0FNU.bits == 8


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"has_inf": False}, "has_inf=False with nan='ieee'"),
     ({"has_inf": True, "nan": "all_ones"}, "has_inf=True with nan='all_ones'"),
     ({"has_inf": False, "nan": "sometimes"}, "nan must be"),
     ({"has_inf": True, "saturates": True}, "cannot saturate")],
)  # fmt: skip
def test_inconsistent_special_codes_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Format("float8_custom", 4, 3, 7, dtype=ml_dtypes.float8_e4m3fn, **fields)
