"""A strict, counting stand-in for CuPy, backed by NumPy: every CuPy branch runs in CI.

What makes it strict is what makes CuPy strict: its arrays are their own type, and
NumPy cannot take one implicitly (``np.asarray(device_array)`` raises TypeError, as
``cupy.ndarray.__array__`` does), nor can a device array be combined with a NumPy
array (CuPy raises "Unsupported type numpy.ndarray"). Code that forgets to ask
``backend.array_module`` for its library fails here as it would on a GPU.

What it counts, in ``Counters``, is what a GPU charges for:

- ``launches``: every elementwise op, reduction, matmul, cast, copy, fill or
  random draw on device arrays (one CUDA kernel each in CuPy; views such as
  ``reshape``, ``.T`` or a basic slice are free, as in CuPy);
- ``syncs``: every read of a device value by the host (``.item()``, ``float()``,
  ``int()``, ``bool()``, ``.get()``, ``.tolist()``, ``cupy.asnumpy``, iteration):
  the host waits for the GPU's queue to drain;
- ``h2d``: every host array (or Python scalar) made into a device array
  (``cupy.asarray`` / ``cupy.array`` of host data). A Python scalar *operand*
  (``x * 2.0``) is a kernel argument in CuPy, not a copy, and is not counted.

``install(monkeypatch)`` puts it where ``minimp.backend`` looks for CuPy (through
``backend.use_cupy``) and returns the module; ``module.counters`` then counts.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Counters:
    launches: int = 0
    syncs: int = 0
    h2d: int = 0

    def reset(self) -> None:
        self.launches = self.syncs = self.h2d = 0

    def snapshot(self) -> dict[str, int]:
        return {"launches": self.launches, "syncs": self.syncs, "h2d": self.h2d}


COUNTERS = Counters()

# Methods of an array that only make a new view of the same memory: no kernel.
_VIEWS = {"reshape", "view", "transpose", "swapaxes", "squeeze", "ravel_view"}
# Attributes read without touching the data.
_META = {"shape", "dtype", "ndim", "size", "itemsize", "nbytes", "strides", "flags"}


def _unwrap(x: Any) -> Any:
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(
            "Unsupported type <class 'numpy.ndarray'>: a NumPy array given to a CuPy "
            "operation (move it with cupy.asarray first)"
        )
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic) and not isinstance(x, np.dtype):
        return ndarray(np.asarray(x))  # CuPy reductions return 0-d device arrays
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _launch(fn, *args, **kwargs):
    COUNTERS.launches += 1
    return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))


class _Flags:
    def __init__(self, a: np.ndarray):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata


class ndarray:
    """A device array: a NumPy array the host may not read without a counted sync."""

    __array_priority__ = 100

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly."
        )

    # NumPy ufuncs called with a device array are kernels too (np.add(x, y) on
    # CuPy arrays dispatches to CuPy through __array_ufunc__).
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            return NotImplemented
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o) for o in kwargs["out"])
        return _launch(ufunc, *inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        return _launch(func, *args, **kwargs)

    # ---- metadata (free) ----
    def __getattr__(self, name: str) -> Any:
        if name in _META:
            value = getattr(self._a, name)
            return _Flags(self._a) if name == "flags" else value
        attr = getattr(self._a, name)
        if not callable(attr):
            raise AttributeError(name)
        if name in _VIEWS:
            return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))

        def method(*a, **k):
            if "out" in k and isinstance(k["out"], ndarray):
                k["out"] = k["out"]._a
            return _launch(attr, *a, **k)

        return method

    @property
    def T(self):
        return ndarray(self._a.T)

    def __len__(self) -> int:
        return len(self._a)

    @property
    def device(self) -> str:
        return "cuda:0 (fake)"

    # ---- host reads: each one a sync ----
    def get(self) -> np.ndarray:
        COUNTERS.syncs += 1
        return self._a.copy()

    def item(self):
        COUNTERS.syncs += 1
        return self._a.item()

    def tolist(self):
        COUNTERS.syncs += 1
        return self._a.tolist()

    def __float__(self) -> float:
        COUNTERS.syncs += 1
        return float(self._a)

    def __int__(self) -> int:
        COUNTERS.syncs += 1
        return int(self._a)

    def __index__(self) -> int:
        COUNTERS.syncs += 1
        return self._a.__index__()

    def __bool__(self) -> bool:
        COUNTERS.syncs += 1
        return bool(self._a)

    def __iter__(self):
        COUNTERS.syncs += 1
        return iter(ndarray(v) if isinstance(v, np.ndarray) else ndarray(np.asarray(v))
                    for v in self._a)  # fmt: skip

    def __repr__(self) -> str:
        return f"fake_cupy.ndarray({self._a!r})"

    # ---- indexing ----
    def __getitem__(self, key):
        key = _unwrap(key)
        basic = all(
            isinstance(k, (int, slice, type(None), type(Ellipsis)))
            for k in (key if isinstance(key, tuple) else (key,))
        )
        if not basic:
            COUNTERS.launches += 1
        return _wrap(np.asarray(self._a[key]))

    def __setitem__(self, key, value):
        COUNTERS.launches += 1
        if isinstance(value, np.ndarray):
            _unwrap(value)  # raises, as CuPy does
        self._a[_unwrap(key)] = _unwrap(value)

    def copy(self, order="C"):
        COUNTERS.launches += 1
        return ndarray(self._a.copy(order=order))

    def astype(self, dtype, copy=True, **kwargs):
        if not copy and np.dtype(dtype) == self._a.dtype:
            return self
        COUNTERS.launches += 1
        return ndarray(self._a.astype(dtype, **kwargs))


def _binary(name):
    def op(self, other):
        return _launch(getattr(np.ndarray, name), self, other)

    return op


for _name in [
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
    "__rtruediv__", "__floordiv__", "__rfloordiv__", "__pow__", "__rpow__", "__mod__",
    "__rmod__", "__matmul__", "__rmatmul__", "__lt__", "__le__", "__gt__", "__ge__",
    "__eq__", "__ne__", "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__",
    "__lshift__", "__rshift__",
]:  # fmt: skip
    setattr(ndarray, _name, _binary(_name))


def _inplace(name):
    def op(self, other):
        COUNTERS.launches += 1
        getattr(self._a, name)(_unwrap(other))
        return self

    return op


for _name in ["__iadd__", "__isub__", "__imul__", "__itruediv__", "__iand__", "__ior__"]:
    setattr(ndarray, _name, _inplace(_name))


def _unary(name):
    def op(self):
        return _launch(getattr(np.ndarray, name), self)

    return op


for _name in ["__neg__", "__pos__", "__abs__", "__invert__"]:
    setattr(ndarray, _name, _unary(_name))

ndarray.__hash__ = None  # arrays with __eq__ are unhashable, as in NumPy and CuPy


def _host_to_device(a: Any, dtype: Any = None, copy: bool = True, **_: Any) -> ndarray:
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a._a.dtype:
            if copy:
                COUNTERS.launches += 1
                return ndarray(a._a.copy())
            return a
        COUNTERS.launches += 1
        return ndarray(a._a.astype(dtype))
    COUNTERS.h2d += 1
    host = np.array(a, dtype=dtype, copy=True)
    if host.dtype.kind == "V" or host.dtype.name == "bfloat16":
        raise TypeError(f"Unsupported dtype {host.dtype}")  # CuPy has no ml_dtypes bfloat16
    return ndarray(host)


def asnumpy(a: Any) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


class _Generator:
    """``cupy.random.Generator``: the draws are kernels on the device."""

    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        fn = getattr(self._g, name)
        return lambda *a, **k: _launch(fn, *a, **k)


class _Module(types.ModuleType):
    """``cupy`` itself: NumPy's functions, run as kernels on device arrays."""

    ndarray = ndarray
    counters = COUNTERS
    __version__ = "fake"

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        if isinstance(value, (type, np.dtype, float, int)) or not callable(value):
            return value  # dtypes (cupy.float32 is numpy.float32), constants
        return lambda *a, **k: _launch(value, *a, **k)

    asarray = staticmethod(lambda a, dtype=None: _host_to_device(a, dtype, copy=False))
    array = staticmethod(lambda a, dtype=None, copy=True: _host_to_device(a, dtype, copy=copy))
    asnumpy = staticmethod(asnumpy)
    ascontiguousarray = staticmethod(lambda a, dtype=None: _host_to_device(a, dtype, copy=False))

    def get_default_memory_pool(self):
        raise NotImplementedError("the fake CuPy has no memory pool")


def _make() -> _Module:
    cupy = _Module("cupy")
    cupy.random = types.SimpleNamespace(default_rng=_Generator, Generator=_Generator)
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Device=lambda *a: types.SimpleNamespace(synchronize=lambda: None, id=0),
    )
    return cupy


def _scatter_add(target, indices, values):
    COUNTERS.launches += 1
    np.add.at(target._a, _unwrap(indices), _unwrap(values))


def install(monkeypatch) -> _Module:
    """Make ``minimp.backend`` take the stand-in for CuPy (undone by ``monkeypatch``)."""
    from minimp import backend

    cupy = _make()
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = _scatter_add
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setattr(backend, "_cupy", backend._cupy)  # restored on teardown
    backend.use_cupy(cupy)
    COUNTERS.reset()
    return cupy
