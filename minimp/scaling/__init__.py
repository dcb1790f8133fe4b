"""Scales that fit a tensor into a narrow format before it is rounded.

A narrow format (fp8, and below it the fp6 and fp4 element formats) has too few
binades for the values a network produces, so each value is multiplied by a scale
before rounding and divided by it after. Who shares one scale is the choice:
a whole tensor (:mod:`minimp.scaling.per_tensor`, fp8 with Transformer Engine's
delayed or current scaling) or a block of consecutive values along the reduction axis
(:mod:`minimp.scaling.blocks`: the OCP MX formats, NVFP4, DeepSeek-V3's tiles).
"""

from minimp.scaling.blocks import (
    BLOCK_FORMATS,
    BLOCK_RECIPES,
    DEEPSEEK_ACTIVATIONS,
    DEEPSEEK_FP8,
    DEEPSEEK_WEIGHTS,
    MXFP4,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8,
    MXFP8_E4M3,
    MXFP8_E5M2,
    NVFP4,
    NVFP4_RECIPE,
    BlockFormat,
    BlockScaling,
    block_matmul,
    dequantize,
    quantize,
)
from minimp.scaling.per_tensor import (
    FP8_FORMATS,
    CurrentScaling,
    DelayedScaling,
    TensorScaling,
    decode,
    encode,
    saturation_by_step,
)

__all__ = [
    "BLOCK_FORMATS",
    "BLOCK_RECIPES",
    "DEEPSEEK_ACTIVATIONS",
    "DEEPSEEK_FP8",
    "DEEPSEEK_WEIGHTS",
    "FP8_FORMATS",
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
    "CurrentScaling",
    "DelayedScaling",
    "TensorScaling",
    "block_matmul",
    "decode",
    "dequantize",
    "encode",
    "quantize",
    "saturation_by_step",
]
