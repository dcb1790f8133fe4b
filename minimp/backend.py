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
    "array_module",
    "cuda_available",
    "device_of",
    "lowp_matmul",
    "to_device",
    "to_numpy",
]

DEVICES = ("cpu", "cuda")


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


def lowp_matmul(a: Any, b: Any) -> Any:
    """``a @ b`` for two arrays of one 16-bit dtype, accumulated in float32, rounded once.

    This is what a tensor core does (Micikevicius et al. 2018, sec. 3.3). On the
    GPU, cuBLAS does exactly that for float16. On the CPU we get the same rule
    from float32 BLAS: the product of two 11-bit (or 8-bit) significands has at
    most 22 bits, so every product is exact in float32; the sum is accumulated in
    float32 and the result rounded once to the input dtype. NumPy's own float16
    matmul has no BLAS and is 250-300x slower, so it is never called.
    """
    xp = array_module(a)
    if xp is not np and a.dtype == np.float16:
        return a @ b
    return (a.astype(np.float32) @ b.astype(np.float32)).astype(a.dtype)
