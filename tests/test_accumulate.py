"""minimp.scaling.accumulate: every emulated accumulator equals a slow scalar loop in its
precision bit for bit, the float32 setting is today's matmul unchanged, and running sums
of ones stall where the formats say."""

import ml_dtypes
import numpy as np
import pytest

from minimp import backend
from minimp.formats import round_to
from minimp.scaling.accumulate import (
    ACCUMULATORS,
    BFLOAT16_SUM,
    FLOAT16_SUM,
    FP8_TENSOR_CORE,
    FP8_TENSOR_CORE_PROMOTED,
    Accumulator,
    matmul,
    running_sum,
)

EMULATED = [FLOAT16_SUM, BFLOAT16_SUM, FP8_TENSOR_CORE, FP8_TENSOR_CORE_PROMOTED,
            Accumulator("bf16_promote8", BFLOAT16_SUM.format, promote_every=8)]  # fmt: skip


def scalar_sum(terms, acc):
    """One Python float at a time: round to the accumulator after every addition; with
    promotion, add the partial sum into a float32 total every promote_every terms."""
    total, partial = np.float32(0), 0.0
    for k, term in enumerate(terms):
        partial = float(round_to(np.float64(partial + term), acc.format))
        if acc.promote_every and (k + 1) % acc.promote_every == 0:
            total, partial = total + np.float32(partial), 0.0
    if not acc.promote_every:
        return np.float32(partial)
    return total + np.float32(partial)


def scalar_dot(x, y, acc):
    return scalar_sum([float(a) * float(b) for a, b in zip(x, y, strict=True)], acc)


def spread_operands(rng, m, k, n, dtype=np.float16):
    """Operands whose products span several binades, so that every accumulator rounds."""
    a = rng.standard_normal((m, k)) * 2.0 ** rng.integers(-6, 6, (m, k))
    b = rng.standard_normal((k, n)) * 2.0 ** rng.integers(-6, 6, (k, n))
    return a.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("acc", EMULATED, ids=lambda a: a.name)
def test_each_emulation_equals_a_scalar_loop_bit_for_bit(acc):
    rng = np.random.default_rng(0)
    a, b = spread_operands(rng, 3, 300, 2)  # 300: the last promoted run is short
    got = matmul(a, b, acc)
    assert got.dtype == np.float32
    want = np.array([[scalar_dot(a[i], b[:, j], acc) for j in range(2)] for i in range(3)])
    np.testing.assert_array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))
    # the accumulator did round: the exact sums differ from it
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert not np.array_equal(got, exact.astype(np.float32))
    terms = rng.standard_normal(1000) * 10.0 ** rng.uniform(-3, 3, 1000)
    assert running_sum(terms, acc).view(np.uint32) == scalar_sum(terms, acc).view(np.uint32)


def test_a_float16_accumulator_overflows_where_its_terms_do_not():
    terms = np.full(40, 2000.0)  # 80000 > 65504
    assert running_sum(terms, FLOAT16_SUM) == np.inf == scalar_sum(terms, FLOAT16_SUM)
    assert 65504 < running_sum(terms, BFLOAT16_SUM) == scalar_sum(terms, BFLOAT16_SUM) < np.inf


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_the_float32_setting_is_todays_matmul(dtype):
    rng = np.random.default_rng(1)
    a, b = spread_operands(rng, 17, 300, 9, dtype)
    want = backend.lowp_matmul(a, b, dtype)
    got = matmul(a, b, "float32", dtype=dtype)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(matmul(a, b), backend.widen(a) @ backend.widen(b))


@pytest.mark.parametrize(
    "acc, stall",
    [("bfloat16", 256), ("float16", 2048), ("e8m13", 2**14), ("e8m13_promote128", None),
     ("float32", None)],
)  # fmt: skip
def test_a_running_sum_of_ones_stalls_where_its_format_runs_out_of_bits(acc, stall):
    """1 is half an ulp of 2^(m+1): from there, sum + 1 ties back to the even sum."""
    k = 20_000
    ones = np.ones((1, k), dtype=np.float16)
    got = matmul(ones, ones.T, acc)[0, 0]
    assert got == (stall if stall is not None else k)
    if acc != "float32":
        assert running_sum(np.ones(k), acc) == got


def test_promotion_every_128_keeps_a_long_dot_product_near_float32():
    """DeepSeek-V3's reason to promote (sec. 3.3.2): the error of the 14-bit accumulator
    grows with K; promoted every 128 products it stays near float32's."""
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (4, 8192)).astype(np.float16)  # positive: no cancellation
    b = rng.uniform(0, 1, (8192, 4)).astype(np.float16)
    exact = a.astype(np.float64) @ b.astype(np.float64)

    def error(acc):
        return float(np.max(np.abs(matmul(a, b, acc) - exact) / exact))

    errors = {name: error(name) for name in ACCUMULATORS}
    assert errors["float32"] < errors["e8m13_promote128"] < errors["e8m13"]
    assert errors["e8m13"] < errors["float16"] < errors["bfloat16"]
    assert errors["e8m13_promote128"] < 10 * 2.0**-14 < errors["e8m13"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"unknown accumulator 'fp64': use one of float32, "):
        matmul(np.ones((2, 2)), np.ones((2, 2)), "fp64")
    with pytest.raises(ValueError, match="promote_every must be an int >= 1 or None, got 0"):
        Accumulator("x", BFLOAT16_SUM.format, promote_every=0)
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(2, 2\) do not multiply"):
        matmul(np.ones((2, 3)), np.ones((2, 2)), "bfloat16")
