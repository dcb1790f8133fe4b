"""``Tensor``: an array with an explicit dtype, a gradient, and the graph behind it.

A float16 tensor holds a real float16 array; nothing is widened behind the
reader's back. Arithmetic on 16-bit data is *computed* in float32 and rounded
once to the tensor's dtype, which for + - * / gives exactly the IEEE float16
(or bfloat16) result: float32 has 24 significant bits, at least 2 * 11 + 2, so
rounding twice (to float32, then to float16) cannot differ from rounding once.
That is also what GPUs do for 16-bit pointwise kernels (PyTorch's "opmath").

Autograd is micrograd's, over arrays: every op attaches to its output a closure
that maps the output's gradient to its inputs' gradients, and declares the arrays
that closure saves for backward (what a memory report counts). The closure gets
the gradient as stored, in the output's dtype, and widens it to float32 only
where it computes with it (an op that only moves or selects values, like reshape
or relu, passes the 16-bit array on untouched). This module owns what is common
to every op: the order of the backward walk, summing gradients over broadcast
axes, casting each gradient to the dtype of the tensor it belongs to (which is
where a float16 gradient underflows), and accumulating it there.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from minimp import backend

__all__ = [
    "Tensor",
    "as_dtype",
    "bfloat16",
    "float16",
    "float32",
    "is_grad_enabled",
    "no_grad",
    "tensor",
]

float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
bfloat16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float16": float16, "bfloat16": bfloat16, "float32": float32}
_ALIASES = {"half": float16, "float": float32, "fp16": float16, "fp32": float32, "bf16": bfloat16}

Backward = Callable[[Any], Sequence[Any]]


def as_dtype(dtype: Any) -> np.dtype:
    """The minimp dtype named by ``dtype`` (a dtype, a NumPy type or a name like "float16")."""
    if isinstance(dtype, str):
        found = DTYPES.get(dtype, _ALIASES.get(dtype))
    else:
        try:
            found = np.dtype(dtype)
        except TypeError:
            found = None
    if found not in DTYPES.values():
        raise ValueError(f"unknown dtype {dtype!r}: minimp tensors are {', '.join(DTYPES)}")
    return found


def compute(array: Any) -> Any:
    """The float32 array an op computes with (exact: every 16-bit value is a float32)."""
    return backend.widen(array)


def round_to_dtype(array: Any, dtype: np.dtype) -> Any:
    """Round a result once, to nearest-even, as the hardware stores it. A 16-bit array
    goes through float32 (exact), so widening to float32 is the table lookup and a
    16-bit array already in ``dtype`` comes back as it is."""
    if array.dtype == dtype:
        return array
    if array.dtype in (float16, bfloat16):
        array = compute(array)
        if dtype == float32:
            return array
    return backend.narrow(array, dtype)


# IEEE semantics, silently: in mixed precision, overflow to inf and 0/0 = NaN are
# expected events (the loss scaler looks for them), not bugs to warn about.
def ieee() -> np.errstate:
    return np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")


class _GradMode(threading.local):
    """Whether ops record the graph: per thread, as PyTorch's grad mode is, so an
    evaluation under no_grad() in one thread never stops another thread's training."""

    enabled = True


_grad_mode = _GradMode()


# The check of minimp.anomaly.detect_anomaly while one is active: ``forward(out, parents)``
# sees every op's output, ``backward(node, grad, parent, g)`` every gradient handed on.
_anomaly_hook: Any = None


def set_anomaly_hook(hook: Any) -> Any:
    """Install minimp.anomaly's check (None: off); returns the one it replaces."""
    global _anomaly_hook
    previous, _anomaly_hook = _anomaly_hook, hook
    return previous


def is_grad_enabled() -> bool:
    return _grad_mode.enabled


class no_grad:
    """Ops inside record no graph (evaluation, optimizer updates). A context manager,
    or, as in PyTorch, a decorator: ``@no_grad()`` or ``@no_grad``."""

    def __new__(cls, func: Callable | None = None):
        if func is None:
            return super().__new__(cls)
        return cls()(func)  # used bare, as @no_grad

    def __call__(self, func: Callable) -> Callable:
        @functools.wraps(func)
        def without_grad(*args: Any, **kwargs: Any) -> Any:
            with no_grad():  # a fresh one per call: safe across threads and recursion
                return func(*args, **kwargs)

        return without_grad

    def __enter__(self) -> None:
        self._previous = _grad_mode.enabled
        _grad_mode.enabled = False

    def __exit__(self, *exc: object) -> None:
        _grad_mode.enabled = self._previous


def _freed_graph(grad: Any) -> Sequence[Any]:
    raise RuntimeError(
        "backward() went through a graph whose saved arrays were already freed by an "
        "earlier backward(); pass retain_graph=True to the first backward() to keep them"
    )


class Tensor:
    """An array (NumPy or CuPy) of dtype float16, bfloat16 or float32, with autograd.

    ``.grad`` is a Tensor of the same dtype and shape, as in PyTorch: a float16
    parameter gets a float16 gradient.
    """

    __slots__ = (
        "_backward", "_parents", "_retains_grad", "_saved", "data", "grad", "requires_grad",
    )  # fmt: skip
    __array_ufunc__ = None  # ``ndarray * tensor`` defers to Tensor.__rmul__

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        if not hasattr(data, "dtype") or data.dtype not in DTYPES.values():
            raise TypeError(
                f"Tensor needs a float16, bfloat16 or float32 array, got "
                f"{getattr(data, 'dtype', type(data).__name__)}; use minimp.tensor(data, dtype=...)"
            )
        self.data = data
        self.requires_grad = requires_grad
        self.grad: Tensor | None = None
        self._parents: tuple[Tensor, ...] = ()
        self._backward: Backward | None = None
        self._saved: tuple[Any, ...] = ()
        self._retains_grad = False

    @staticmethod
    def from_op(
        data: Any, parents: tuple[Tensor, ...], backward: Backward, saved: tuple[Any, ...]
    ) -> Tensor:
        """The output of an op: records the graph only if some input needs a gradient.

        ``saved`` lists the arrays ``backward`` keeps for later (None entries are
        skipped): what PyTorch's autograd would save for this op, and what
        ``minimp.memory`` counts as activations.
        """
        out = Tensor(data)
        if _grad_mode.enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward
            out._saved = tuple(a for a in saved if a is not None)
        if _anomaly_hook is not None:  # minimp.anomaly; off: this one test per op
            _anomaly_hook.forward(out, parents)
        return out

    # ---- what it is -------------------------------------------------------------
    dtype = property(lambda self: self.data.dtype)
    shape = property(lambda self: tuple(self.data.shape))
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._backward is None)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        device = ", device='cuda'" if self.device == "cuda" else ""
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{device}{grad})"

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (the tensor's own array on the CPU: no copy)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(
                f"item() needs a tensor with one element, this one has shape {self.shape}"
            )
        return float(self.numpy().reshape(()))

    def detach(self) -> Tensor:
        """The same array, cut from the graph."""
        return Tensor(self.data)

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this intermediate tensor too (to look at activation gradients)."""
        self._retains_grad = True
        return self

    # ---- the differentiable cast ------------------------------------------------
    def to(self, target: Any) -> Tensor:
        """A copy in another dtype or on another device; the gradient flows back converted.

        ``x.to(float16)`` rounds to nearest-even. In backward, the gradient arriving
        in float16 is cast back to x's dtype: a float32 parameter used as float16
        receives a float32 gradient holding float16 values, underflow included.
        """
        if isinstance(target, str) and target in backend.DEVICES:
            source = self.device
            if backend.check_device(target) == source:
                return self
            moved = backend.to_device(self.data, target)
            return Tensor.from_op(moved, (self,), lambda g: (backend.to_device(g, source),), ())
        dtype = as_dtype(target)
        if dtype == self.dtype:
            return self
        with ieee():
            data = round_to_dtype(compute(self.data), dtype)
        return Tensor.from_op(data, (self,), lambda g: (g,), ())

    def half(self) -> Tensor:
        return self.to(float16)

    def float(self) -> Tensor:
        return self.to(float32)

    def bfloat16(self) -> Tensor:
        return self.to(bfloat16)

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def cpu(self) -> Tensor:
        return self.to("cpu")

    # ---- backward ---------------------------------------------------------------
    def backward(self, gradient: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        Each gradient is held in the dtype of the tensor it belongs to: a
        contribution is summed over broadcast axes in float32, rounded once to that
        dtype, and added to what the tensor already received in that dtype, as
        PyTorch's autograd engine does. Nothing is accumulated until the whole walk
        has succeeded: a graph freed by an earlier backward() is found before any
        leaf receives a gradient.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: create the leaves "
                "with requires_grad=True (nn.Linear parameters already are)"
            )
        xp = backend.array_module(self.data)
        if gradient is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar, this tensor has shape "
                    f"{self.shape}: reduce it first (.sum(), .mean(), a loss) or pass gradient="
                )
            seed = xp.ones(self.data.shape, dtype=self.dtype)
        else:
            seed = gradient.data if isinstance(gradient, Tensor) else xp.asarray(gradient)
            if tuple(seed.shape) != self.shape:
                raise ValueError(
                    f"backward(gradient=...) has shape {tuple(seed.shape)}, "
                    f"the tensor has shape {self.shape}"
                )
            seed = round_to_dtype(seed, self.dtype)

        order = self._topological_order()
        if any(node._backward is _freed_graph for node in order):
            _freed_graph(None)
        grads: dict[int, Any] = {id(self): seed}
        arrived: list[tuple[Tensor, Any]] = []  # (leaf or retained tensor, its gradient)
        with ieee():
            for node in reversed(order):
                grad = grads.pop(id(node), None)
                if grad is None:
                    continue
                if node._backward is None or node._retains_grad:
                    arrived.append((node, grad))
                if node._backward is None:
                    continue
                parent_grads = node._backward(grad)  # as stored: the rule widens it if need be
                for parent, g in zip(node._parents, parent_grads, strict=True):
                    if g is None or not parent.requires_grad:
                        continue
                    g = round_to_dtype(_sum_to_shape(g, parent.shape), parent.dtype)
                    if _anomaly_hook is not None:
                        _anomaly_hook.backward(node, grad, parent, g)
                    previous = grads.get(id(parent))
                    grads[id(parent)] = g if previous is None else _add(previous, g)
                if not retain_graph:  # free the saved arrays, as PyTorch does
                    node._parents, node._backward, node._saved = (), _freed_graph, ()
            for node, grad in arrived:
                node._accumulate(grad)

    def _accumulate(self, grad: Any) -> None:
        if self.grad is None:  # its own array: a rule may hand on a broadcast view
            self.grad = Tensor(backend.array_module(grad).ascontiguousarray(grad))
        else:
            self.grad = Tensor(_add(self.grad.data, grad))

    def _topological_order(self) -> list[Tensor]:
        """Every tensor this one depends on, each after its inputs (iterative DFS)."""
        order: list[Tensor] = []
        visited: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, inputs_done = stack.pop()
            if inputs_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if p.requires_grad)
        return order


def _sum_to_shape(grad: Any, shape: tuple[int, ...]) -> Any:
    """Undo broadcasting: sum the gradient over the axes the forward op broadcast."""
    if tuple(grad.shape) == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1
    )
    return compute(grad).sum(axis=axes, dtype=np.float32).reshape(shape)


def _add(a: Any, b: Any) -> Any:
    """``a + b`` for two arrays of one dtype, rounded once to it (float16 addition)."""
    if a.dtype == np.float32:
        return a + b
    return round_to_dtype(compute(a) + compute(b), a.dtype)


def tensor(
    data: Any, dtype: Any = None, requires_grad: bool = False, device: str | None = None
) -> Tensor:
    """A new leaf tensor from a list, a scalar, a NumPy or a CuPy array.

    Python floats and float64 arrays become float32 (minimp's default dtype, as in
    PyTorch) unless ``dtype`` says otherwise; converting to float16 rounds to
    nearest-even. Integer or boolean data needs an explicit ``dtype``.
    """
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.array_module(data)
    array = data if hasattr(data, "dtype") else np.asarray(data)
    if array.dtype.kind not in "fiub" and array.dtype not in DTYPES.values():
        raise TypeError(f"tensor() needs numbers, got data of dtype {array.dtype}")
    if dtype is None:
        if array.dtype.kind != "f" and array.dtype not in DTYPES.values():
            raise TypeError(
                f"tensor() got {array.dtype} data; minimp tensors hold floating point. "
                "Pass dtype=minimp.float32 (or float16, bfloat16) to convert it"
            )
        dtype = array.dtype if array.dtype in DTYPES.values() else float32
    dtype = as_dtype(dtype)
    with ieee():
        array = xp.array(array, dtype=dtype, copy=True)
    if device is not None:
        array = backend.to_device(array, device)
    return Tensor(array, requires_grad=requires_grad)
