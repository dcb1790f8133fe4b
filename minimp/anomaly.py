"""Where the inf came from: the first op whose result became inf or NaN.

When a loss scaler skips a step, the gradients held an inf or a NaN, but not where it
was born. ``detect_anomaly`` watches every op while it is active, like
``torch.autograd.detect_anomaly``, but in both directions::

    with detect_anomaly(model) as found:
        loss = model(x)...; loss.backward()
    print(found.first)   # forward: linear in layers.2 made inf, shape (3, 2), float16, ...

forward: an op whose output holds a non-finite value although its inputs are
finite (an overflow, 0/0, inf - inf); backward: an op whose backward rule hands
a parent a non-finite gradient although the gradient it received was finite
(rounding the gradient to the parent's dtype included: a float16 gradient above
65504 becomes inf there). Only the first is kept: everything after it is its
consequence. Each record names the op (the minimp.functional function), the
module that ran it (when a model is given), the tensor's shape and dtype, and
the largest finite magnitude among the op's inputs (forward) or of the gradient
it received (backward): the number that says how far from the format's limit
the op started.

Off, it costs one ``is not None`` test per op (the hook in ``Tensor.from_op`` and
``Tensor.backward``); on, one finiteness check per op and per gradient.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from minimp import backend, nn
from minimp.tensor import Tensor

__all__ = ["Anomaly", "detect_anomaly"]

_tensor = sys.modules["minimp.tensor"]  # the module: the package's ``tensor`` is the function


@dataclass(frozen=True)
class Anomaly:
    """The first non-finite value: where (phase, op, module) and what (shape, dtype)."""

    phase: str  # "forward" (an op's output) or "backward" (a gradient an op handed on)
    op: str
    module: str  # the model's module that ran the op ("" when unknown)
    shape: tuple[int, ...]
    dtype: str
    kind: str  # "inf" or "nan"
    largest_finite_input: float  # of the op's inputs (forward) or incoming gradient
    inputs_finite: bool  # False: the op received a non-finite input (from outside the graph)

    def __str__(self) -> str:
        where = f" in {self.module}" if self.module else ""
        what = "output" if self.phase == "forward" else "gradient for its input"
        return (
            f"{self.phase}: {self.op}{where} made {self.kind} in its {what}, shape "
            f"{self.shape}, {self.dtype}; largest finite "
            f"{'input' if self.phase == 'forward' else 'incoming gradient'} "
            f"{self.largest_finite_input:.6g}"
            + ("" if self.inputs_finite else " (an input was already non-finite)")
        )


def _kind(data: Any) -> str | None:
    """'nan', 'inf' or None for an all-finite array."""
    xp = backend.array_module(data)
    values = xp.asarray(data, dtype=np.float32)
    if bool(xp.isfinite(values).all()):
        return None
    return "nan" if bool(xp.isnan(values).any()) else "inf"


def _largest_finite(arrays: list[Any]) -> float:
    largest = 0.0
    for a in arrays:
        v = np.abs(backend.to_numpy(a).astype(np.float32))
        v = v[np.isfinite(v)]
        if v.size:
            largest = max(largest, float(v.max()))
    return largest


def _op_name(frame: Any) -> str:
    """The first public function up the stack: the op (``linear``, not ``_result``)."""
    while frame is not None:
        name = frame.f_code.co_name
        if not name.startswith("_") and name not in ("from_op", "forward"):
            return name
        frame = frame.f_back
    return "?"


class detect_anomaly:
    """Context manager: record the first inf/NaN made inside it (``.first``, an
    ``Anomaly``, or None). Give the model to have the module named. The ops in
    ``masks`` fill with -inf by design (attention's causal mask): in their output only
    a NaN is an anomaly."""

    def __init__(
        self, model: nn.Module | None = None, masks: tuple[str, ...] = ("masked_fill",)
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(
                f"detect_anomaly(model=...) takes a minimp.nn.Module, got {type(model).__name__}"
            )
        self.first: Anomaly | None = None
        self.masks = masks  # ops that write -inf on purpose (a causal mask): only NaN counts
        self._modules = {id(m): name for name, m in model.named_modules()} if model else {}
        self._origin: dict[int, tuple[Tensor, str, str]] = {}  # id(out): (out, op, module)

    def __enter__(self) -> detect_anomaly:
        self._previous = _tensor.set_anomaly_hook(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _tensor.set_anomaly_hook(self._previous)
        self._origin.clear()

    def _module(self, frame: Any) -> str:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if owner is not None and id(owner) in self._modules:
                return self._modules[id(owner)]
            frame = frame.f_back
        return ""

    def forward(self, out: Tensor, parents: tuple[Tensor, ...]) -> None:
        if self.first is not None:
            return
        frame = sys._getframe(2)  # the op that called Tensor.from_op
        op, module = _op_name(frame), self._module(frame)
        if out.requires_grad:  # named for a backward anomaly later
            self._origin[id(out)] = (out, op, module)
        kind = _kind(out.data)
        if kind is None or (kind == "inf" and op in self.masks):
            return
        inputs = [p.data for p in parents]
        self.first = Anomaly(
            "forward", op, module, out.shape, str(out.dtype), kind,
            _largest_finite(inputs), all(_kind(a) is None for a in inputs),
        )  # fmt: skip

    def backward(self, node: Tensor, grad: Any, parent: Tensor, g: Any) -> None:
        if self.first is not None:
            return
        kind = _kind(g)
        if kind is None:
            return
        origin = self._origin.get(id(node))
        op = origin[1] if origin else node._backward.__qualname__.split(".")[0]
        module = origin[2] if origin else ""
        self.first = Anomaly(
            "backward", op, module, tuple(g.shape), str(parent.dtype), kind,
            _largest_finite([grad]), _kind(grad) is None,
        )  # fmt: skip
