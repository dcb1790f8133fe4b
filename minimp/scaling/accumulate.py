"""Accumulation precision: in what format a matmul or a sum keeps its running total.

A dot product of K terms rounds its running sum K times. In float32 (24
significant bits, what tensor cores do for 16-bit inputs, Micikevicius et al.
2018 sec. 3.3) the error grows slowly; in float16 or bfloat16 a running sum stops
growing once the terms fall below half an ulp of it (a bfloat16 sum of ones
stops at 256, a float16 one at 2048). Between the two sits Hopper's fp8 tensor
core: DeepSeek-V3 (arXiv 2412.19437, sec. 3.3.2) measured that it keeps about 14
bits, and promotes each partial sum to float32 on the CUDA cores every N = 128
products, so the long sum is float32 and only the 128-term pieces are short.

An :class:`Accumulator` names the running sum's format and how often it is
promoted. The emulation is exact: each product is formed in float64 (exact for
operands of up to 26 significant bits, so for every 16-bit and 8-bit value), each
addition is rounded to the accumulator's format (nearest even, with its overflow
to inf), and, with promotion, each partial sum is added into a float32 total
with float32's own rounding. Sums of terms with at most 24 significant bits are
exact in float64 or differ from the larger term by less than 2^-29 of it, so
rounding the float64 sum once more is the correctly rounded sum. (float32
operands give 48-bit products, whose float64 sum may round twice.) The work is
vectorised over the output: the Python loop runs over the K terms of one sum
(over the N terms of a partial sum, all partial sums at once, then the K / N
promotions), never over elements.

The float32 setting is not emulated: it is today's matmul, float32 BLAS rounded
once (:func:`minimp.backend.lowp_matmul`), the order of its additions BLAS's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from minimp import backend
from minimp.formats import BFLOAT16, FLOAT16, FLOAT32, Format, get_format, round_to

__all__ = [
    "ACCUMULATORS",
    "BFLOAT16_SUM",
    "FLOAT16_SUM",
    "FLOAT22_E8M13",
    "FLOAT32_BLAS",
    "FP8_TENSOR_CORE",
    "FP8_TENSOR_CORE_PROMOTED",
    "Accumulator",
    "get_accumulator",
    "matmul",
    "running_sum",
]

# About 14 significant bits (13 stored) with float32's exponent: the width DeepSeek-V3
# measured in Hopper's fp8 tensor-core accumulator. Emulated with nearest-even rounding.
FLOAT22_E8M13 = Format("float22_e8m13", 8, 13, 127, True, np.float32)


@dataclass(frozen=True)
class Accumulator:
    """A running sum kept in ``format``, added into a float32 total every ``promote_every``
    terms (None: never, the whole sum stays in ``format``)."""

    name: str
    format: Format
    promote_every: int | None = None

    def __post_init__(self) -> None:
        n = self.promote_every
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise ValueError(f"{self.name}: promote_every must be an int >= 1 or None, got {n!r}")


FLOAT32_BLAS = Accumulator("float32", FLOAT32)
FLOAT16_SUM = Accumulator("float16", FLOAT16)
BFLOAT16_SUM = Accumulator("bfloat16", BFLOAT16)
FP8_TENSOR_CORE = Accumulator("e8m13", FLOAT22_E8M13)
FP8_TENSOR_CORE_PROMOTED = Accumulator("e8m13_promote128", FLOAT22_E8M13, promote_every=128)

ACCUMULATORS: dict[str, Accumulator] = {
    acc.name: acc
    for acc in (FLOAT32_BLAS, FLOAT16_SUM, BFLOAT16_SUM, FP8_TENSOR_CORE, FP8_TENSOR_CORE_PROMOTED)
}


def get_accumulator(acc: Accumulator | str) -> Accumulator:
    """An :class:`Accumulator`, or the one named (``"float32"``, ``"bfloat16"``, ...)."""
    if isinstance(acc, Accumulator):
        return acc
    if isinstance(acc, str) and acc in ACCUMULATORS:
        return ACCUMULATORS[acc]
    raise ValueError(f"unknown accumulator {acc!r}: use one of {', '.join(ACCUMULATORS)}")


def _round(x: np.ndarray, fmt: Format) -> np.ndarray:
    """float64 ``x`` rounded to the IEEE format ``fmt`` (nearest even, overflow to inf), as
    float64: ``round_to`` for one addition's worth of values, 4x faster (the tests check
    the sums against ``round_to`` itself). Normal range: round the float64 bit pattern at
    the format's last mantissa bit (a carry into the exponent is the correct result);
    below fmt.min_normal the spacing is the constant min_subnormal, so rint does it."""
    shift = np.uint64(52 - fmt.mantissa_bits)
    bits = x.view(np.uint64)
    ties_to_even = ((bits >> shift) & np.uint64(1)) + np.uint64(
        (1 << (52 - fmt.mantissa_bits - 1)) - 1
    )
    rounded = ((bits + ties_to_even) & ~np.uint64((1 << (52 - fmt.mantissa_bits)) - 1)).view(
        np.float64
    )
    spacing = fmt.min_subnormal
    rounded = np.where(np.abs(x) < fmt.min_normal, np.rint(x / spacing) * spacing, rounded)
    return np.where(np.abs(rounded) > fmt.max, np.copysign(np.inf, x), rounded)


def _accumulate(
    term: Callable[[int], np.ndarray], count: int, fmt: Format, promote: bool
) -> np.ndarray:
    """Sum ``term(0), ..., term(count - 1)`` (float64 arrays) left to right, rounding to
    ``fmt`` after every addition. With ``promote``, each term's first axis indexes the
    runs of a promoted accumulator (all summed at once): their sums are then added one
    by one into a float32 total. Returns float32."""
    partial = np.zeros_like(term(0))
    for j in range(count):
        partial = _round(partial + term(j), fmt)
    partial = partial.astype(np.float32)
    if not promote:
        return partial
    total = np.zeros(partial.shape[1:], dtype=np.float32)
    for run in partial:  # promotion: a float32 addition, rounded as float32 rounds
        total = total + run
    return total


def _runs(length: int, acc: Accumulator) -> tuple[int, int]:
    """(number of runs, terms per run): one run of all terms without promotion."""
    n = acc.promote_every
    return (1, length) if n is None else (-(-length // n), n)


@np.errstate(over="ignore", invalid="ignore")  # an accumulator that overflows holds inf
def running_sum(terms: Any, accumulator: Accumulator | str, axis: int = 0) -> np.ndarray:
    """The sum of ``terms`` along ``axis``, in the order given, as ``accumulator`` keeps it.

    The terms are taken as they are (exactly, in float64); the result is float32.
    With ``promote_every = N``: the terms split into runs of N, each run summed in the
    accumulator's format, the run sums added one by one into a float32 total.
    """
    acc = get_accumulator(accumulator)
    x = np.moveaxis(np.asarray(backend.to_numpy(terms), dtype=np.float64), axis, -1)
    runs, n = _runs(x.shape[-1], acc)
    # zero terms pad the last run: adding 0 leaves a sum unchanged (and rounds nothing)
    padded = np.zeros((*x.shape[:-1], runs * n), dtype=np.float64)
    padded[..., : x.shape[-1]] = x
    by_run = np.moveaxis(padded.reshape(*x.shape[:-1], runs, n), -2, 0)  # (runs, ..., n)
    if acc.promote_every is None:
        return _accumulate(lambda j: by_run[0, ..., j], n, acc.format, promote=False)
    return _accumulate(lambda j: by_run[..., j], n, acc.format, promote=True)


@np.errstate(over="ignore", invalid="ignore")
def matmul(a: Any, b: Any, accumulator: Accumulator | str = FLOAT32_BLAS, dtype: Any = None) -> Any:
    """``a @ b`` (matrices) with its K products summed, in order, as ``accumulator`` keeps them.

    Returns float32, or, given ``dtype``, the result rounded once to it. The float32
    setting is exactly today's matmul: ``backend.lowp_matmul`` (float32 BLAS, then one
    rounding to ``dtype``) or, without a dtype, ``widen(a) @ widen(b)``.
    """
    acc = get_accumulator(accumulator)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not multiply")
    if acc == FLOAT32_BLAS:
        if dtype is not None:
            return backend.lowp_matmul(a, b, dtype)
        return backend.widen(a) @ backend.widen(b)
    (m, k), cols = a.shape, b.shape[1]
    runs, n = _runs(k, acc)
    a64 = np.zeros((m, runs * n), dtype=np.float64)
    b64 = np.zeros((runs * n, cols), dtype=np.float64)
    a64[:, :k] = backend.to_numpy(a)
    b64[:k] = backend.to_numpy(b)
    a3, b3 = a64.reshape(m, runs, n).transpose(1, 0, 2), b64.reshape(runs, n, cols)

    def product(j: int) -> np.ndarray:
        """The j-th product of every run, (runs, M, N): exact in float64 (<= 2 x 24 bits)."""
        return a3[:, :, j, None] * b3[:, None, j, :]

    if acc.promote_every is None:
        out = _accumulate(lambda j: product(j)[0], n, acc.format, promote=False)
    else:
        out = _accumulate(product, n, acc.format, promote=True)
    if dtype is None:
        return out
    fmt = get_format(dtype)
    return round_to(out, fmt).astype(fmt.dtype)
