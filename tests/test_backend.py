"""The array-level helpers every op relies on: exact casts and the 16-bit matmul rule."""

import numpy as np
import pytest

from minimp import backend


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.itemsize == 2 else np.uint32)


def test_widen_is_exact_on_every_float16():
    everything = np.arange(2**16, dtype=np.uint16).view(np.float16)
    widened = backend.widen(everything)
    assert widened.dtype == np.float32
    assert np.array_equal(_bits(widened), _bits(everything.astype(np.float32)))
    transposed = everything.reshape(256, 256).T  # views of any layout
    assert np.array_equal(_bits(backend.widen(transposed)), _bits(transposed.astype(np.float32)))


def test_narrow_rounds_like_numpy_on_random_float32_around_the_subnormal_range():
    """The subnormal shortcut must give NumPy's (IEEE) rounding bit for bit: random
    bit patterns, plus values spread over float16's whole subnormal and normal range,
    plus every tie between float16 subnormals."""
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    spread = rng.standard_normal(1_000_000) * 2.0 ** rng.uniform(-30, 0, 1_000_000)
    ties = (np.arange(-2048, 2048) + 0.5) * 2.0**-24
    for x in (random_bits.view(np.float32), spread.astype(np.float32), ties.astype(np.float32)):
        with np.errstate(over="ignore", invalid="ignore"):
            expected = x.astype(np.float16)
            ours = backend.narrow(x, np.float16)
        same = (_bits(ours) == _bits(expected)) | (np.isnan(ours) & np.isnan(expected))
        assert same.all()


@pytest.mark.parametrize("dtype", [np.float16, np.dtype("bfloat16")])
def test_lowp_matmul_accumulates_in_float32_and_rounds_once(dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 300)).astype(dtype)
    b = rng.standard_normal((300, 5)).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    exact = a.astype(np.float64) @ b.astype(np.float64) + bias.astype(np.float64)
    ours = backend.lowp_matmul(a, b, dtype, bias)
    assert ours.dtype == dtype
    # float32 accumulation error is far below half a 16-bit ulp: one rounding of the
    # exact result, except where the exact result lies within that error of a tie.
    agree = ours.astype(np.float64) == exact.astype(np.float32).astype(dtype).astype(np.float64)
    assert agree.mean() > 0.97


@pytest.mark.parametrize("value", [1e-5, -3e-7, 2.0**-24, 2.0**-25, 0.0, 1.0])
def test_narrow_takes_the_numpy_scalar_a_full_reduction_returns(value):
    """A full float32 reduction returns a NumPy scalar, not an array: rounding a
    subnormal one must not assign into it (issue 16, item 1)."""
    scalar = np.float32(value)
    ours = backend.narrow(scalar, np.float16)
    assert ours.dtype == np.float16
    assert _bits(np.asarray(ours)) == _bits(np.asarray(scalar.astype(np.float16)))


@pytest.mark.parametrize("scale", [2.0**16, 3.0, 2.0**-3])
def test_unscale_is_widen_then_multiply_bit_for_bit_and_checks_before_unscaling(scale):
    """Every float16 value, unscaled by a power of two, by 3 (1/3 rounds) and by a
    scale below 1, where a finite gradient times 1/S can overflow: torch's kernel
    checks the value before the product, so only inf and NaN inputs count."""
    everything = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    inv_scale = np.float32(1.0 / scale)
    with np.errstate(over="ignore", invalid="ignore"):
        unscaled, finite = backend.unscale(everything, inv_scale)
        expected = everything.astype(np.float32) * inv_scale
    assert unscaled.dtype == np.float32 and not finite
    assert np.array_equal(_bits(unscaled), _bits(expected))
    finite_values = everything[np.isfinite(everything)]
    with np.errstate(over="ignore"):
        assert backend.unscale(finite_values, inv_scale)[1]
    assert backend.unscale(np.zeros(0, np.float16), inv_scale)[1]
    for bad in (np.inf, -np.inf, np.nan):
        one_bad = np.array([1.0, bad, 2.0], np.float16)
        assert not backend.unscale(one_bad, inv_scale)[1]
        assert not backend.unscale(one_bad.astype(np.float32), inv_scale)[1]
