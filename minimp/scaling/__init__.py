"""Scales that fit a tensor into a narrow format before it is rounded.

A narrow format (fp8, and below it the fp6 and fp4 element formats) has too few
binades for the values a network produces, so each value is multiplied by a scale
before rounding and divided by it after. Who shares one scale is the choice:
a whole tensor (:mod:`minimp.scaling.per_tensor`, fp8 with Transformer Engine's
delayed scaling) or, where per-block scaling joins it, a block of consecutive
values along the reduction axis (the OCP MX formats, NVFP4, DeepSeek-V3's tiles).
"""

from minimp.scaling.per_tensor import FP8_FORMATS, DelayedScaling, TensorScaling, decode, encode

__all__ = ["FP8_FORMATS", "DelayedScaling", "TensorScaling", "decode", "encode"]
