"""Where an array lives: NumPy on the CPU, CuPy on an NVIDIA GPU.

Everything above this module works on "an array" and asks this module which
array library (``xp``) holds it. It also holds the one array-level operation
whose speed depends on the device: the low-precision matrix multiply.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

try:  # CuPy is optional: without it (or without a GPU) minimp runs on NumPy alone.
    import cupy as _cupy
except ImportError:  # pragma: no cover - depends on the machine
    _cupy = None

__all__ = [
    "DEVICES",
    "arithmetic",
    "array_module",
    "cuda_available",
    "device_of",
    "lowp_matmul",
    "matmul_operand",
    "narrow",
    "to_device",
    "to_numpy",
    "unscale",
    "use_cupy",
    "widen",
]

DEVICES = ("cpu", "cuda")


def use_cupy(module: ModuleType | None) -> ModuleType | None:
    """Make ``module`` the array library of device "cuda" (returns the previous one).

    The one seam for a stand-in: the tests install a NumPy-backed, counting CuPy
    (tests/fake_cupy.py) here, so every CuPy branch runs without a GPU. ``None``
    means no CuPy.
    """
    global _cupy
    previous, _cupy = _cupy, module
    return previous


def cuda_available() -> bool:
    """True when CuPy is installed and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy without a driver raises CUDARuntimeError
        return False


def array_module(array: Any) -> ModuleType:
    """``numpy`` or ``cupy``: the library that holds ``array``."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy
    return np


def device_of(array: Any) -> str:
    return "cuda" if array_module(array) is not np else "cpu"


def check_device(device: str) -> str:
    """Validate a device name, and that the device can actually be used."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cuda" and not cuda_available():
        why = "CuPy is not installed" if _cupy is None else "CuPy finds no CUDA GPU"
        raise RuntimeError(
            f"device 'cuda' requested but {why}. Install minimp[cuda12] or minimp[cuda13] "
            "on a machine with an NVIDIA GPU, or use device='cpu'."
        )
    return device


def to_device(array: Any, device: str) -> Any:
    """The same values on ``device`` (no copy when they are already there)."""
    check_device(device)
    if device_of(array) == device:
        return array
    if device == "cuda":
        if array.dtype.kind == "V" or array.dtype.name == "bfloat16":
            raise TypeError(
                "bfloat16 arrays (ml_dtypes) cannot move to CuPy; keep bfloat16 tensors on the CPU"
            )
        return _cupy.asarray(array)
    return _cupy.asnumpy(array)


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy array with the same values (copied from the GPU when needed)."""
    return np.asarray(array) if array_module(array) is np else _cupy.asnumpy(array)


# A float16 has only 65,536 values, so widening one is a table lookup: exact by
# construction, and about 2x faster than NumPy's cast (10x on subnormals).
_FLOAT16_AS_FLOAT32 = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)


def widen(array: Any) -> Any:
    """The same values as float32 (exact: every 16-bit value is a float32)."""
    if array.dtype == np.float16 and array_module(array) is np:
        if array.ndim == 2 and array.flags.f_contiguous and not array.flags.c_contiguous:
            # a transposed matrix (w.T in a matmul): look it up in memory order, 3x
            # faster than gathering across rows; BLAS takes the transposed result as is
            return widen(array.T).T
        # mode="clip" skips the bounds check: every uint16 is an index of the table
        return np.take(_FLOAT16_AS_FLOAT32, array.view(np.uint16), mode="clip")
    return array.astype(np.float32, copy=False)


def unscale(array: Any, inv_scale: np.float32) -> tuple[Any, Any]:
    """``(widen(array) * inv_scale, whether every value of array is finite)``: a master
    gradient made from a scaled 16-bit one, and the check PyTorch's unscale kernel makes
    (on the values before unscaling). The flag stays on the device, unread.

    One pass where the device allows. On the CPU a float16 array is unscaled by one
    lookup in the widening table multiplied by inv_scale (each of the 65,536 products
    rounded once to float32: the bits of widening, then multiplying) and checked on its
    bits (an exponent of all ones is an inf or a NaN), 2x faster than widen, check,
    multiply. On the GPU the cast happens inside the product's kernel."""
    xp = array_module(array)
    if xp is not np:
        return xp.multiply(array, inv_scale, dtype=np.float32), xp.isfinite(array).all()
    if array.dtype != np.float16:
        return widen(array) * inv_scale, np.isfinite(array).all()
    bits = array.view(np.uint16)
    finite = np.bitwise_and(bits, 0x7C00).max(initial=0) != 0x7C00
    with np.errstate(invalid="ignore", over="ignore"):  # the table holds NaNs and infs
        table = _FLOAT16_AS_FLOAT32 * inv_scale
    return np.take(table, bits, mode="clip"), finite


def arithmetic(op: Any, a: Any, b: Any) -> Any:
    """``op(a, b)`` for + - * / (``operator.add``, ...), computed in float32, for the
    caller to round once to the operands' dtype.

    On the CPU on widened copies (NumPy's float16 arithmetic converts element by
    element). On the GPU two float16 arrays go to CuPy's own float16 kernel, one launch
    instead of widen, widen, op, narrow: CuPy's float16 type converts to float for
    every operation and rounds the result once, to nearest even (its float16.cuh), the
    same bits. A scalar operand is widened instead: CuPy would round it to float16
    first, where minimp (and PyTorch) compute with it in float32."""
    xp = array_module(a)
    if xp is not np and isinstance(b, xp.ndarray) and a.dtype == b.dtype == np.float16:
        return op(a, b)
    return op(widen(a), widen(b))


def narrow(array: Any, dtype: Any) -> Any:
    """Round a float32 array to ``dtype``, nearest-even, as the hardware stores it.

    NumPy rounds float32 to a float16 subnormal about 25x slower than to a normal
    value (it raises the underflow flag element by element). In mixed precision
    small gradients are exactly such values, so on the CPU, when more than a few
    values fall in the subnormal range, they are rounded first, in float32: below
    2^-14 float16's spacing is the constant 2^-24, so rint(x * 2^24) * 2^-24 is the
    nearest-even float16 value, exactly, and the cast that follows has nothing left
    to round. (A handful are cheaper left to the cast: the copy costs more.)
    A full reduction hands over a NumPy scalar, which cannot be assigned into: it is
    taken as the 0-d array it stands for.
    """
    if dtype == np.float16 and array_module(array) is np and array.dtype == np.float32:
        array = np.asarray(array)
        contiguous = array.flags.c_contiguous
        if not contiguous:  # a copy, so that its bits can be viewed
            array = array.copy()
        # nonzero and below 2^-14, read off the bits: |x| - 1 wraps around for zeros
        with np.errstate(over="ignore"):  # the wrap is the point (NumPy warns on 0-d)
            tiny = (array.view(np.uint32) & 0x7FFF_FFFF) - np.uint32(1) < np.uint32(0x387F_FFFF)
        if np.count_nonzero(tiny) > array.size // 64:  # a few are cheaper left to the cast
            if contiguous:  # never round the caller's array in place
                array = array.copy()
            array[tiny] = np.rint(array[tiny] * np.float32(2.0**24)) * np.float32(2.0**-24)
    return array.astype(dtype, copy=False)


def matmul_operand(array: Any) -> Any:
    """``array`` as this device's matmul takes it: on the CPU widened to float32 (BLAS
    multiplies only float32, and lowp_matmul takes float32 arrays of 16-bit values as
    they are), on the GPU as stored (cuBLAS multiplies 16-bit arrays). An operand used
    by two matmuls, a weight in forward and backward, is widened once this way."""
    return widen(array) if array_module(array) is np else array


def lowp_matmul(a: Any, b: Any, dtype: Any, bias: Any = None) -> Any:
    """``a @ b (+ bias)`` for arrays holding ``dtype`` (16-bit) values: products
    accumulated in float32, the result rounded once to ``dtype``.

    This is what a tensor core does (Micikevicius et al. 2018, sec. 3.3). On the
    CPU we get the same rule from float32 BLAS: the product of two 11-bit (or
    8-bit) significands has at most 22 bits, so every product is exact in float32;
    the sum and the bias are accumulated in float32 and rounded once, as cuBLAS's
    fused bias epilogue does. NumPy's own float16 matmul has no BLAS and is
    250-300x slower, so it is never called. The operands may already be float32
    arrays holding 16-bit values (a gradient, say): they are used as they are.

    On the GPU, cuBLAS multiplies float16 with float32 accumulation; the bias is
    then added in float16, a second rounding (at most one ulp from the CPU result).
    """
    if array_module(a) is not np:
        out = a.astype(dtype, copy=False) @ b.astype(dtype, copy=False)
        return out if bias is None else out + bias.astype(dtype, copy=False)
    acc = widen(a) @ widen(b)
    if bias is not None:
        acc += widen(bias)
    return narrow(acc, dtype)
