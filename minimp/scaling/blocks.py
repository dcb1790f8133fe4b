"""Block scaling: a scale for every few dozen values instead of one per tensor.

One outlier sets a per-tensor scale for the whole tensor, and every value far
below it loses its bits or flushes to zero. Giving each block of consecutive
values along the reduction axis (the K of a matmul) its own scale confines the
damage to one block, and lets 4- and 6-bit elements work at all. One mechanism
covers the layouts in use; they differ only in the data of a :class:`BlockFormat`:

- OCP Microscaling (MX) v1.0: 32 values share an E8M0 scale, a bare power of
  two 2^e. The spec's rule (sec. 6.3): e = floor(log2(amax)) - emax_elem, where
  emax_elem is the exponent of the element format's largest normal (E4M3 8, E5M2
  15, E2M3 2, E3M2 4, E2M1 2), clamped to E8M0's range [-127, 127]; each element
  is value / 2^e rounded to nearest even and saturated to the element's max.
  The largest value lands in the element's top binade, so it can exceed max
  (E4M3: amax/2^e up to 2^9 > 448) and saturate: the price of a power-of-two scale.
- NVFP4 (NVIDIA Blackwell): 16 values of E2M1 share an E4M3 scale, and a float32
  scale per tensor maps the block scales into E4M3's range (two levels).
- DeepSeek-V3 (arXiv 2412.19437, sec. 3.3.2): E4M3 elements with a float32
  scale amax / 448 from the current values of each 1x128 activation tile or
  128x128 weight block. (Sec. 3.3.4 restricts some scales to powers of two; the
  general rule, used here, does not.)

Edge cases (minimp's choices where the spec leaves them to the implementation,
following the OCP reference code, microsoft/microxcaling): a block of zeros gets
the smallest scale (2^-127 in MX) and stays zero; a block holding a NaN or an
infinity gets a NaN scale (E8M0's 0xFF), and all its values read back as NaN,
as the spec says of a NaN scale. (gfloat, the test oracle, clamps an infinite
block's scale to 2^127 instead; the tests check that case against this rule.)

Everything returned is float32 and exact: every element value times its MX scale
is a float32 number (subnormals included), so a matmul on the dequantized values
sees exactly what the block format holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from minimp.formats import (
    FLOAT4_E2M1FN,
    FLOAT6_E2M3FN,
    FLOAT6_E3M2FN,
    FLOAT8_E4M3FN,
    FLOAT8_E5M2,
    FLOAT8_E8M0FNU,
    FLOAT32,
    Format,
    round_in_range,
    round_to,
)

__all__ = [
    "BLOCK_FORMATS",
    "BLOCK_RECIPES",
    "DEEPSEEK_ACTIVATIONS",
    "DEEPSEEK_FP8",
    "DEEPSEEK_WEIGHTS",
    "MXFP4",
    "MXFP6_E2M3",
    "MXFP6_E3M2",
    "MXFP8",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "NVFP4",
    "NVFP4_RECIPE",
    "BlockFormat",
    "BlockScaling",
    "Quantized",
    "block_matmul",
    "dequantize",
    "quantize",
]

ScaleRule = Literal["power_of_two", "amax"]


@dataclass(frozen=True)
class BlockFormat:
    """A block-scaled format: the element format, the block shape and how its scale is chosen.

    ``block = (k, n)``: k consecutive values along the reduction axis times n along
    the other axis share one scale (MX: (32, 1); DeepSeek weights: (128, 128)).
    ``scale_rule``: ``"power_of_two"`` (MX, 2^(floor(log2 amax) - emax_elem)) or
    ``"amax"`` (amax / element max, rounded to ``scale_format``: E4M3 for NVFP4,
    float32 for DeepSeek). ``tensor_scale``: a second, float32 per-tensor level that
    maps the block scales into ``scale_format``'s range (NVFP4).
    """

    name: str
    element: Format
    block: tuple[int, int]
    scale_format: Format
    scale_rule: ScaleRule
    tensor_scale: bool = False

    def __post_init__(self) -> None:
        if not all(isinstance(b, int) and b >= 1 for b in self.block):
            raise ValueError(f"{self.name}: block must be two ints >= 1, got {self.block!r}")
        if self.scale_rule not in ("power_of_two", "amax"):
            raise ValueError(
                f"{self.name}: scale_rule must be 'power_of_two' or 'amax', got {self.scale_rule!r}"
            )
        if (self.scale_rule == "power_of_two") != (self.scale_format == FLOAT8_E8M0FNU):
            raise ValueError(f"{self.name}: an E8M0 scale is a power of two, and only it")

    @property
    def block_size(self) -> int:
        """Values that share one scale."""
        return self.block[0] * self.block[1]

    @property
    def bits_per_value(self) -> float:
        """Storage per value, the block scale included (the per-tensor scale, 32 bits for
        a whole tensor, is left out): MXFP8 8 + 8/32 = 8.25, NVFP4 4 + 8/16 = 4.5."""
        return self.element.bits + self.scale_format.bits / self.block_size

    @property
    def bytes_per_value(self) -> float:
        return self.bits_per_value / 8


def _mx(name: str, element: Format) -> BlockFormat:
    return BlockFormat(name, element, (32, 1), FLOAT8_E8M0FNU, "power_of_two")


MXFP8_E4M3 = _mx("mxfp8_e4m3", FLOAT8_E4M3FN)
MXFP8_E5M2 = _mx("mxfp8_e5m2", FLOAT8_E5M2)
MXFP6_E2M3 = _mx("mxfp6_e2m3", FLOAT6_E2M3FN)
MXFP6_E3M2 = _mx("mxfp6_e3m2", FLOAT6_E3M2FN)
MXFP4 = _mx("mxfp4", FLOAT4_E2M1FN)
NVFP4 = BlockFormat("nvfp4", FLOAT4_E2M1FN, (16, 1), FLOAT8_E4M3FN, "amax", tensor_scale=True)
DEEPSEEK_ACTIVATIONS = BlockFormat("deepseek_1x128", FLOAT8_E4M3FN, (128, 1), FLOAT32, "amax")
DEEPSEEK_WEIGHTS = BlockFormat("deepseek_128x128", FLOAT8_E4M3FN, (128, 128), FLOAT32, "amax")

BLOCK_FORMATS: tuple[BlockFormat, ...] = (
    MXFP8_E4M3, MXFP8_E5M2, MXFP6_E2M3, MXFP6_E3M2, MXFP4, NVFP4,
    DEEPSEEK_ACTIVATIONS, DEEPSEEK_WEIGHTS,
)  # fmt: skip

# E8M0's exponents: 2^-127 .. 2^127 (0xFF is NaN)
_MIN_E8M0, _MAX_E8M0 = -127, 127


@dataclass(frozen=True)
class Quantized:
    """What a block quantizer returns.

    ``values``: the dequantized float32 array, the shape of the input: what a matmul
    consumes, ``elements * scales * tensor_scale``. ``elements``: the element values,
    float32, the shape of the input. ``scales``: the stored block scales (values of
    ``format.scale_format``, as float32), one per block: the input's shape with the
    blocked axis (and for 2-d blocks the other one) divided by the block's extent.
    ``tensor_scale``: NVFP4's per-tensor decode scale, or 1.0.
    """

    values: np.ndarray
    scales: np.ndarray
    elements: np.ndarray
    tensor_scale: float
    format: BlockFormat


def _blocks(x: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """``x`` (rows, K) zero-padded to whole blocks and shaped (R, n, C, k): block (r, c) is
    ``[r, :, c, :]``. Zeros do not change a block's amax, so padding is harmless."""
    k, n = block
    rows, cols = x.shape
    padded = np.zeros((-(-rows // n) * n, -(-cols // k) * k), dtype=x.dtype)
    padded[:rows, :cols] = x
    r, c = padded.shape[0] // n, padded.shape[1] // k
    return padded.reshape(r, n, c, k), (rows, cols)


def _block_amax(blocks: np.ndarray) -> np.ndarray:
    """Largest |x| per block (R, C); NaN where the block holds a NaN or an infinity."""
    magnitude = np.abs(blocks).max(axis=(1, 3))  # NaN propagates through max
    return np.where(np.isinf(magnitude), np.nan, magnitude).astype(np.float32)


def _saturate(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Round to ``fmt`` with overflow clipped to +-max (the MX rule, TE's satfinite), as
    float32: ``round_to(clip(x))`` bit for bit, on the float64 bits (``round_in_range``:
    the block casts are most of a block-scaled step)."""
    with np.errstate(invalid="ignore"):
        x = np.clip(np.asarray(x, dtype=np.float64), -fmt.max, fmt.max)  # NaN stays NaN
    if not fmt.subnormals:  # e8m0: no zero to round to, the generic rule knows
        return round_to(x, fmt)
    return round_in_range(x, fmt).astype(np.float32)


def _power_of_two_scales(amax: np.ndarray, element: Format) -> np.ndarray:
    """2^(floor(log2(amax)) - emax_elem), clamped to E8M0; 2^-127 for amax 0; NaN stays."""
    finite = np.where(np.isnan(amax), 1.0, amax)
    _, e = np.frexp(finite)  # amax = f * 2^e, f in [0.5, 1): floor(log2(amax)) = e - 1, exactly
    exponent = np.where(finite > 0, e - 1 - element.max_exponent, _MIN_E8M0)
    exponent = np.clip(exponent, _MIN_E8M0, _MAX_E8M0)
    return np.where(np.isnan(amax), np.nan, np.ldexp(1.0, exponent))  # float64, exact


@np.errstate(invalid="ignore", divide="ignore", over="ignore")
def quantize(array: Any, fmt: BlockFormat, axis: int = -1) -> Quantized:
    """Quantize a float32 ``array`` to ``fmt`` with blocks along ``axis`` (the reduction axis).

    A 1-d block shape (n = 1) works on any number of dimensions; a 2-d one (DeepSeek's
    128x128 weights) needs a matrix, whose other axis carries the n. Algorithm, per
    block of values v (amax = max |v|)::

        power_of_two:  s = 2^clamp(floor(log2 amax) - emax_elem, -127, 127)
        amax:          s = round(amax / elem_max, scale_format)        (1.0 if amax is 0)
        NVFP4:         t = 448 * 6 / tensor_amax; s = round(amax / 6 * t, e4m3) / t
        elements = round(clip(v / s, -elem_max, elem_max), element)    (nearest even)
        values   = elements * s
    """
    x = np.asarray(array)
    if x.dtype != np.float32:
        raise TypeError(
            f"quantize({fmt.name}): takes a float32 array, got {x.dtype}: convert with "
            ".astype(np.float32)"
        )
    if x.ndim == 0:
        raise ValueError(
            f"quantize({fmt.name}): needs an array with an axis to block, got a scalar"
        )
    axis = axis % x.ndim
    if fmt.block[1] > 1 and x.ndim != 2:
        raise ValueError(
            f"quantize({fmt.name}): a {fmt.block[0]}x{fmt.block[1]} block needs a matrix, "
            f"got shape {x.shape}"
        )
    moved = np.moveaxis(x, axis, -1)
    matrix = moved.reshape(-1, moved.shape[-1]) if x.ndim != 2 else moved
    blocks, (rows, cols) = _blocks(matrix, fmt.block)
    amax = _block_amax(blocks)
    element, tensor_decode = fmt.element, 1.0
    if fmt.scale_rule == "power_of_two":
        scales = _power_of_two_scales(amax, element)
    else:
        decode = amax / np.float32(element.max)  # float32, as the GPU kernels compute it
        if fmt.tensor_scale:
            # NVFP4's second level: t maps the largest block scale (tensor_amax / 6) onto
            # E4M3's max, so no block scale overflows and few flush to zero.
            tensor_amax = float(np.nanmax(np.where(np.isnan(amax), 0, amax), initial=0))
            t = np.float32(fmt.scale_format.max * element.max / tensor_amax) if tensor_amax else 1
            tensor_decode = float(np.float32(1) / np.float32(t))
            scales = _saturate(decode * np.float32(t), fmt.scale_format).astype(np.float64)
        else:
            scales = np.where(amax == 0, 1.0, round_to(decode, fmt.scale_format)).astype(np.float64)
    # Elements from the exact quotient (float64 holds it: a block scale has at most 24
    # significant bits, the tensor scale is a float32), rounded once to the element.
    divisor = (scales * tensor_decode)[:, None, :, None]
    elements = _saturate(blocks / np.where(divisor == 0, 1.0, divisor), element)
    elements = np.where(divisor == 0, 0.0, elements)  # an E4M3 block scale of 0: nothing survives
    elements = np.where(np.isnan(divisor), np.nan, elements).astype(np.float32)
    # element * block scale is exact (<= 4 + 24 significant bits, and for MX a power of
    # two whose product stays above float32's smallest subnormal: 2^-16 * 2^-127 >= 2^-149);
    # NVFP4's tensor scale then rounds once in float32, as the dequantizing epilogue does.
    values = (elements.astype(np.float64) * scales[:, None, :, None]).astype(np.float32)
    if tensor_decode != 1.0:
        values = values * np.float32(tensor_decode)

    def unblock(b: np.ndarray) -> np.ndarray:
        flat = b.reshape(blocks.shape[0] * blocks.shape[1], -1)[:rows, :cols]
        return np.moveaxis(flat.reshape(moved.shape), -1, axis)

    scale_shape = (*moved.shape[:-1], scales.shape[1]) if fmt.block[1] == 1 else scales.shape
    return Quantized(
        values=unblock(values),
        scales=np.moveaxis(scales.astype(np.float32).reshape(scale_shape), -1, axis),
        elements=unblock(elements),
        tensor_scale=tensor_decode,
        format=fmt,
    )


def dequantize(
    elements: Any, scales: Any, fmt: BlockFormat, axis: int = -1, tensor_scale: float = 1.0
) -> np.ndarray:
    """The float32 values that stored ``elements`` and block ``scales`` stand for: the
    ``values`` of the :class:`Quantized` they came from, bit for bit. It is what a GEMM's
    operand loader does, and what lets backward keep only the narrow copy."""
    e = np.asarray(elements).astype(np.float32)
    s = np.asarray(scales).astype(np.float64)
    axis = axis % e.ndim
    s = np.repeat(s, fmt.block[0], axis=axis)
    if fmt.block[1] > 1:  # a 2-d block: the matrix's other axis shares the scale too
        s = np.repeat(s, fmt.block[1], axis=1 - axis)
    s = s[tuple(slice(0, n) for n in e.shape)]  # the padding of the last block, dropped
    values = (e.astype(np.float64) * s).astype(np.float32)  # exact, as in quantize
    return values * np.float32(tensor_scale) if tensor_scale != 1.0 else values


def block_matmul(
    a: Any, b: Any, fmt_a: BlockFormat, fmt_b: BlockFormat, accumulator: Any = None
) -> np.ndarray:
    """``a @ b`` with each operand block-quantized along its reduction axis: ``a`` (M, K)
    along K (axis 1), ``b`` (K, N) along K (axis 0).

    That is what the block-scaled GEMMs do, so a weight used as ``x @ W.T`` forward
    (blocks along W's axis 1) and ``g @ W`` backward (blocks along W's axis 0) is
    quantized twice, differently, unless its blocks are square (DeepSeek's 128x128).
    The products accumulate in float32 (one rounding, as BLAS does), or as
    ``accumulator`` says (a :class:`minimp.scaling.accumulate.Accumulator` or its name).
    """
    aq = quantize(np.asarray(a, dtype=np.float32), fmt_a, axis=1).values
    bq = quantize(np.asarray(b, dtype=np.float32), fmt_b, axis=0).values
    if aq.ndim != 2 or bq.ndim != 2 or aq.shape[1] != bq.shape[0]:
        raise ValueError(f"block_matmul: shapes {aq.shape} and {bq.shape} do not multiply")
    if accumulator is None:
        return aq @ bq
    from minimp.scaling.accumulate import matmul

    return matmul(aq, bq, accumulator)


@dataclass(frozen=True)
class BlockScaling:
    """A block-scaled training recipe: the :class:`BlockFormat` of each GEMM operand role.

    ``input`` for the activations x, ``weight`` for W, ``grad`` for the output gradient;
    each operand of each of a linear layer's three GEMMs is quantized along that GEMM's
    reduction axis (forward x @ W.T along K, dgrad g @ W along N, wgrad g.T @ x along
    the batch). ``accumulator``: how the GEMMs sum their products
    (:mod:`minimp.scaling.accumulate`; None is float32, rounded once, as BLAS does).
    ``quantize_head``: whether the model's last linear layer (the classifier head) is
    quantized too; the recipes in use keep it in higher precision (DeepSeek-V3 sec.
    3.3.1 keeps the output head in BF16; NVIDIA's NVFP4 recipe keeps the last layers
    in BF16), and here it stays float32.
    """

    name: str
    input: BlockFormat
    weight: BlockFormat
    grad: BlockFormat
    accumulator: Any = None
    quantize_head: bool = False

    def __post_init__(self) -> None:
        for role in ("input", "weight", "grad"):
            if not isinstance(getattr(self, role), BlockFormat):
                raise TypeError(
                    f"BlockScaling {self.name!r}: {role} must be a BlockFormat (MXFP8_E4M3, "
                    f"NVFP4, ...), got {getattr(self, role)!r}"
                )
        if self.accumulator is not None:
            from minimp.scaling.accumulate import get_accumulator

            object.__setattr__(self, "accumulator", get_accumulator(self.accumulator))

    @property
    def label(self) -> str:
        """How the policy table names the recipe."""
        return f"{self.name}, a scale per {self.weight.block_size}"

    @property
    def bytes_per_value(self) -> float:
        """Storage of a forward operand, block scales included (input and weight alike here)."""
        return max(self.input.bytes_per_value, self.weight.bytes_per_value)


# OCP MX training: E4M3 forward, E5M2 for gradients (the hybrid split of the fp8 regime).
MXFP8 = BlockScaling("mxfp8", MXFP8_E4M3, MXFP8_E4M3, MXFP8_E5M2)
# NVFP4 for every operand (NVIDIA's recipe adds random Hadamard transforms, 16x16 weight
# blocks and stochastic rounding of gradients; minimp shows the format alone).
NVFP4_RECIPE = BlockScaling("nvfp4", NVFP4, NVFP4, NVFP4)
# DeepSeek-V3 sec. 3.3: 1x128 activation and gradient tiles, 128x128 weight blocks, E4M3.
DEEPSEEK_FP8 = BlockScaling(
    "deepseek", DEEPSEEK_ACTIVATIONS, DEEPSEEK_WEIGHTS, DEEPSEEK_ACTIVATIONS
)
BLOCK_RECIPES: tuple[BlockScaling, ...] = (MXFP8, NVFP4_RECIPE, DEEPSEEK_FP8)
