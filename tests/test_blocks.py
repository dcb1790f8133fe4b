"""minimp.scaling.blocks: MX encoding bit for bit against gfloat's block encoder (Graphcore's
independent implementation of the OCP MX v1.0 spec), NVFP4's two-level scale against a
worked example of NVIDIA's rule, DeepSeek-V3's tiles, the storage cost of each format."""

import gfloat
import numpy as np
import pytest
from gfloat.formats import (
    format_info_mxfp4_e2m1,
    format_info_mxfp6_e2m3,
    format_info_mxfp6_e3m2,
    format_info_mxfp8_e4m3,
    format_info_mxfp8_e5m2,
)

from minimp.formats import FLOAT4_E2M1FN, FLOAT8_E4M3FN, round_to
from minimp.scaling import blocks
from minimp.scaling.blocks import (
    BLOCK_FORMATS,
    DEEPSEEK_ACTIVATIONS,
    DEEPSEEK_WEIGHTS,
    MXFP4,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    NVFP4,
    BlockFormat,
    block_matmul,
    quantize,
)

GFLOAT = {
    MXFP8_E4M3: format_info_mxfp8_e4m3,
    MXFP8_E5M2: format_info_mxfp8_e5m2,
    MXFP6_E2M3: format_info_mxfp6_e2m3,
    MXFP6_E3M2: format_info_mxfp6_e3m2,
    MXFP4: format_info_mxfp4_e2m1,
}
MX = list(GFLOAT)


def bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def gfloat_mx(x, fmt):
    """gfloat's quantize_block on each run of 32 values along the last axis, and its scales."""
    blocks = x.astype(np.float64).reshape(-1, 32)
    values = [gfloat.quantize_block(GFLOAT[fmt], b, gfloat.compute_scale_amax) for b in blocks]
    scales = [gfloat.compute_scale_amax(GFLOAT[fmt].etype.emax, b) for b in blocks]
    shape = (*x.shape[:-1], x.shape[-1] // 32)
    return np.array(values, dtype=np.float32).reshape(x.shape), np.float32(scales).reshape(shape)


def awkward_data(rng, rows=48, cols=256):
    """Blocks whose magnitudes span float32's range, with outliers, zero blocks, float32
    subnormals (their scale exponent clamps at E8M0's -127), exact ties and values at
    powers of two (where floor(log2 amax) changes)."""
    x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-30, 30, (rows, 1))
    x[rng.random(x.shape) < 0.01] *= 1e4  # outliers: one value sets its block's scale
    x[1, :32] = 0.0
    x[2, :32] = rng.standard_normal(32) * 2.0**-140  # float32 subnormals
    x[3, :32] = 2.0 ** rng.integers(-3, 4, 32) * rng.choice([1.0, 1.25, 1.5, 1.75], 32)
    x[4, :32] = np.float32(1.0) - np.float32(2.0**-24)  # just below a power of two
    x = x.astype(np.float32)
    x[0, 7] = -0.0
    return x


@pytest.mark.parametrize("fmt", MX, ids=lambda f: f.name)
def test_mx_matches_gfloat_bit_for_bit(fmt):
    x = awkward_data(np.random.default_rng(0))
    q = quantize(x, fmt)
    want, want_scales = gfloat_mx(x, fmt)
    assert np.array_equal(bits(q.values), bits(want))
    assert np.array_equal(bits(q.scales), bits(want_scales))
    assert q.scales[2, 0] == 2.0**-127  # clamped: floor(log2(amax)) - emax is below -127
    assert q.scales[1, 0] == 2.0**-127 and not q.values[1, :32].any()  # amax 0
    # the values are the elements times the scales, and the elements are the format's
    assert np.array_equal(q.elements, round_to(q.elements, fmt.element))
    assert np.array_equal(q.values, q.elements * np.repeat(q.scales, 32, axis=1))
    # along the other axis: the blocks run down the columns
    qt = quantize(np.ascontiguousarray(x.T), fmt, axis=0)
    assert np.array_equal(bits(qt.values), bits(want.T))
    assert np.array_equal(bits(qt.scales), bits(want_scales.T))
    # any number of dimensions: blocks run along the chosen axis
    q3 = quantize(x.reshape(6, 8, 256).transpose(0, 2, 1), fmt, axis=1)
    assert np.array_equal(bits(q3.values), bits(want.reshape(6, 8, 256).transpose(0, 2, 1)))
    assert q3.scales.shape == (6, 8, 8)


@pytest.mark.parametrize("fmt", MX, ids=lambda f: f.name)
def test_a_nan_or_inf_makes_its_block_nan_and_leaves_the_others(fmt):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    x[0, 3], x[1, 40], x[2, 0] = np.nan, np.inf, -np.inf
    q = quantize(x, fmt)
    nan_blocks = np.array([[True, False], [False, True], [True, False]])
    assert np.array_equal(np.isnan(q.scales), nan_blocks)  # E8M0's 0xFF
    assert np.array_equal(np.isnan(q.values), np.repeat(nan_blocks, 32, axis=1))
    finite = ~np.repeat(nan_blocks, 32, axis=1)
    want, _ = gfloat_mx(np.where(finite, x, 0.0).astype(np.float32), fmt)
    assert np.array_equal(bits(q.values[finite]), bits(want[finite]))
    if fmt is MXFP8_E4M3:  # gfloat agrees on NaN where the element format has a NaN
        assert np.isnan(gfloat_mx(x[:1], fmt)[0][0, :32]).all()


def test_the_largest_value_lands_in_the_top_binade_and_may_saturate():
    """MX's power-of-two scale puts amax in [2^8, 2^9) for E4M3: above 448 it saturates."""
    x = np.zeros(32, dtype=np.float32)
    x[:3] = [500.0, 300.0, 1.0]
    q = quantize(x, MXFP8_E4M3)
    assert q.scales[0] == 1.0  # floor(log2(500)) - 8 = 0
    assert list(q.values[:3]) == [448.0, 288.0, 1.0]  # 500 saturated, 300 rounded to e4m3


# ---- NVFP4 -------------------------------------------------------------------------


def test_nvfp4_two_level_scale_hand_worked():
    """NVIDIA's rule ("Pretraining Large Language Models with NVFP4", arXiv 2509.25149,
    sec. 2 and appendix; and the NVFP4 blog "Introducing NVFP4 for Efficient and Accurate
    Low-Precision Inference", June 2025): tensor encode scale t = 6 * 448 / amax(tensor);
    per 16-value block, the E4M3 scale is e4m3(amax(block) / 6 * t); an element is
    e2m1(x * t / block_scale); it decodes as element * block_scale / t.

    Worked by hand, tensor amax 5376 (= 2 * 2688): t = 0.5.
    Block 0 (amax 5376): block scale 5376 / 6 * 0.5 = 448, exact in E4M3.
      x = 5376 -> 5376 * 0.5 / 448 = 6 -> 6 * 448 / 0.5 = 5376
      x = 2000 -> 2.232 -> e2m1 2 -> 1792;  x = 1000 -> 1.116 -> 1 -> 896
      x = -300 -> -0.335 -> -0.5 (nearer than 0) -> -448;  x = 100 -> 0.112 -> 0
    Block 1 (amax 10): 10 / 6 * 0.5 = 0.8333 -> E4M3 0.8125 (spacing 1/16 in [0.5, 1)).
      x = 10 -> 10 * 0.5 / 0.8125 = 6.15 -> saturates at 6 -> 6 * 0.8125 / 0.5 = 9.75
      x = 3 -> 1.846 -> 2 -> 3.25;  x = -1 -> -0.615 -> -0.5 -> -0.8125
    """
    x = np.zeros(32, dtype=np.float32)
    x[:5] = [5376.0, 2000.0, 1000.0, -300.0, 100.0]
    x[16:19] = [10.0, 3.0, -1.0]
    q = quantize(x, NVFP4)
    assert q.tensor_scale == 2.0  # 1 / t
    assert list(q.scales) == [448.0, 0.8125]
    assert list(q.elements[:5]) == [6.0, 2.0, 1.0, -0.5, 0.0]
    assert list(q.elements[16:19]) == [6.0, 2.0, -0.5]
    assert list(q.values[:5]) == [5376.0, 1792.0, 896.0, -448.0, 0.0]
    assert list(q.values[16:19]) == [9.75, 3.25, -0.8125]
    assert not q.values[5:16].any() and not q.values[19:].any()


def test_nvfp4s_tensor_scale_keeps_small_blocks_inside_e4m3s_range():
    """Without the second level a block whose amax / 6 is below E4M3's smallest subnormal
    (2^-9) gets a zero scale and vanishes; the tensor scale lifts it back into range."""
    one_level = BlockFormat("e2m1_e4m3_16", FLOAT4_E2M1FN, (16, 1), FLOAT8_E4M3FN, "amax")
    x = np.full(32, 1e-3, dtype=np.float32)
    x[16:] = 1e-5
    assert not quantize(x, one_level).values.any()
    q = quantize(x, NVFP4)
    assert q.scales.min() > 0
    np.testing.assert_allclose(q.values, x, rtol=0.1)


# ---- DeepSeek-V3 -------------------------------------------------------------------


def test_deepseek_scales_are_amax_over_448_in_float32():
    """arXiv 2412.19437 sec. 3.3.2: the scale comes from the tile's current amax, and is not
    rounded to a power of two; each tile's largest value becomes +-448 exactly."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 256)) * 3).astype(np.float32)
    q = quantize(x, DEEPSEEK_ACTIVATIONS)
    amax = np.abs(x).reshape(4, 2, 128).max(axis=2)
    assert np.array_equal(q.scales, amax / np.float32(448))
    assert not np.all(np.frexp(q.scales)[0] == 0.5)  # not powers of two
    assert np.array_equal(np.abs(q.elements).reshape(4, 2, 128).max(axis=2), np.full((4, 2), 448))
    np.testing.assert_array_less(np.abs(q.values - x), np.abs(x) * 2.0**-4 + 1e-30)


def test_square_weight_blocks_are_the_same_along_either_axis_and_mx_blocks_are_not():
    """A weight is quantized along K forward (x @ W.T) and along N backward (g @ W):
    DeepSeek's 128x128 blocks give the same values both ways, MX's 1x32 do not."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((256, 256)) * 10.0 ** rng.uniform(-2, 2, (256, 1))).astype(np.float32)
    forward, backward = quantize(w, DEEPSEEK_WEIGHTS, 1), quantize(w, DEEPSEEK_WEIGHTS, 0)
    assert np.array_equal(forward.values, backward.values)
    assert forward.scales.shape == (2, 2)
    assert not np.array_equal(quantize(w, MXFP8_E4M3, 1).values, quantize(w, MXFP8_E4M3, 0).values)


def test_block_matmul_quantizes_each_operand_along_k():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((8, 64)).astype(np.float32)
    b = rng.standard_normal((64, 5)).astype(np.float32)
    want = quantize(a, MXFP4, axis=1).values @ quantize(b, MXFP8_E5M2, axis=0).values
    got = block_matmul(a, b, MXFP4, MXFP8_E5M2)
    assert np.array_equal(got, want)
    wrong_axis = quantize(a, MXFP4, axis=0).values @ quantize(b, MXFP8_E5M2, axis=1).values
    assert not np.array_equal(got, wrong_axis)


# ---- storage, errors ---------------------------------------------------------------


def test_bits_per_value_count_the_scales():
    bits_per_value = {f.name: f.bits_per_value for f in BLOCK_FORMATS}
    assert bits_per_value == {
        "mxfp8_e4m3": 8.25,
        "mxfp8_e5m2": 8.25,
        "mxfp6_e2m3": 6.25,
        "mxfp6_e3m2": 6.25,
        "mxfp4": 4.25,
        "nvfp4": 4.5,
        "deepseek_1x128": 8.25,
        "deepseek_128x128": 8 + 32 / 128**2,
    }
    assert MXFP8_E4M3.bytes_per_value == 8.25 / 8


def test_bad_inputs_are_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"float32 array, got float16.*astype\(np.float32\)"):
        quantize(np.ones(32, dtype=np.float16), MXFP4)
    with pytest.raises(ValueError, match=r"128x128 block needs a matrix, got shape \(2, 3, 4\)"):
        quantize(np.ones((2, 3, 4), dtype=np.float32), DEEPSEEK_WEIGHTS)
    with pytest.raises(ValueError, match="block must be two ints >= 1"):
        BlockFormat("bad", FLOAT4_E2M1FN, (0, 1), FLOAT8_E4M3FN, "amax")
    with pytest.raises(ValueError, match="an E8M0 scale is a power of two"):
        BlockFormat("bad", FLOAT4_E2M1FN, (32, 1), FLOAT8_E4M3FN, "power_of_two")
    with pytest.raises(ValueError, match=r"shapes \(2, 32\) and \(64, 2\) do not multiply"):
        block_matmul(np.ones((2, 32)), np.ones((64, 2)), MXFP4, MXFP4)


@pytest.mark.parametrize(
    "fmt",
    sorted({f.element for f in BLOCK_FORMATS} | {f.scale_format for f in BLOCK_FORMATS}, key=str),
    ids=str,
)
def test_the_saturating_cast_is_round_to_of_the_clipped_value_bit_for_bit(fmt):
    """The block casts' fast rounding on float64 bits against the generic ``round_to``:
    random magnitudes across and beyond the format's range (overflow saturates), every
    tie between neighbouring values of the format, signed zeros, NaNs and infinities."""
    rng = np.random.default_rng(0)
    spread = rng.standard_normal(200_000) * 2.0 ** rng.uniform(-30, 20, 200_000)
    codes = np.unique(round_to(np.linspace(-fmt.max, fmt.max, 20_001), fmt)).astype(np.float64)
    ties = (codes[1:] + codes[:-1]) / 2
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, fmt.max, -fmt.max])
    for x in (spread, ties, codes, special):
        fast = blocks._saturate(x, fmt)
        with np.errstate(invalid="ignore"):
            generic = round_to(np.clip(x, -fmt.max, fmt.max), fmt)
        assert fast.dtype == generic.dtype == np.float32
        np.testing.assert_array_equal(fast.view(np.uint32), generic.view(np.uint32))
