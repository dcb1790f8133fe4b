"""FP8 training simulated by rounding: the matmul and the layer of Transformer Engine.

The recipe is TE's ``Format.HYBRID``: e4m3 (more precision) for the forward
operands, x and W, and e5m2 (more range) for the output gradient, each with its
own per-tensor scale (:mod:`minimp.scaling`). Only the GEMMs see fp8 values; they
multiply them exactly and accumulate in float32, as fp8 tensor cores do.
Everything else stays float32: the master weights the optimizer updates, the
bias, the activations between layers, the bias gradient. That is why
:func:`to_fp8` wants a float32 model.

The module sits beside ``nn`` (it wraps ``nn.Linear``), above ``amp``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minimp import nn
from minimp.formats import FLOAT8_E4M3FN, FLOAT8_E5M2
from minimp.scaling import DelayedScaling, TensorScaling, decode
from minimp.tensor import Tensor, float32, ieee, is_grad_enabled

__all__ = ["DelayedScaling", "Fp8Linear", "TensorScaling", "fp8_linear", "to_fp8"]


def _check_float32(op: str, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype != float32:
            raise TypeError(
                f"{op}: {name} is {t.dtype}; fp8 simulation takes float32 tensors (float32 master "
                "weights, float32 activations, only the GEMM operands rounded to fp8): "
                "convert with .float()"
            )
    devices = {t.device for t in tensors.values() if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{op}: tensors on different devices ({' and '.join(sorted(devices))})")


@ieee()
def fp8_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    input_scaling: TensorScaling,
    weight_scaling: TensorScaling,
    grad_scaling: TensorScaling,
) -> Tensor:
    """``x @ weight.T + bias`` with both GEMM operands cast to fp8, as TE's ``Linear``.

    Forward: x and W through their (e4m3) scalings, product accumulated in float32,
    bias added in float32. Backward: the output gradient through ``grad_scaling``
    (e5m2), then dx = gq @ Wq and dW = gq.T @ xq on the fp8 operands saved by the
    forward; db = sum of the unquantized gradient, in float32, as TE computes it.
    Each call under autograd advances the three scalings; under ``no_grad`` (an
    evaluation) the scales are used but not updated, so how often a run evaluates
    does not change how it trains. Autocast does not apply: the dtypes here are
    the recipe's.
    """
    _check_float32("fp8_linear", x=x, weight=weight, bias=bias)
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"fp8_linear: input {x.shape} does not fit weight {weight.shape} (out, in)"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"fp8_linear: bias {bias.shape} does not fit weight {weight.shape}")
    training = is_grad_enabled()
    # Kept for backward as fp8 arrays (1 byte a value, as TE keeps them), so that a
    # memory report counts what fp8 training holds.
    (x8, x_scale), (w8, w_scale) = (
        input_scaling.cast(x.data, update=training),
        weight_scaling.cast(weight.data, update=training),
    )
    xq, wq = decode(x8, FLOAT8_E4M3FN) / x_scale, decode(w8, FLOAT8_E4M3FN) / w_scale
    out = xq @ wq.T
    if bias is not None:
        out += bias.data

    def backward(g):
        xq, wq = decode(x8, FLOAT8_E4M3FN) / x_scale, decode(w8, FLOAT8_E4M3FN) / w_scale
        g2 = g.reshape(-1, g.shape[-1])
        gq = grad_scaling.quantize(g) if x.requires_grad or weight.requires_grad else None
        grads = (
            gq @ wq if x.requires_grad else None,
            gq.reshape(g2.shape).T @ xq.reshape(-1, x.shape[-1]) if weight.requires_grad else None,
            g2.sum(axis=0, dtype=np.float32) if bias is not None and bias.requires_grad else None,
        )
        return grads if bias is not None else grads[:2]

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(out, parents, backward, (x8, w8))


_ROLES = ("input", "weight", "grad")


class Fp8Linear(nn.Module):
    """An ``nn.Linear`` whose GEMMs run in fp8: the same weight and bias Tensors (shared,
    so an optimizer built on the original model updates this one), plus one
    :class:`TensorScaling` per role: ``input_scaling`` and ``weight_scaling`` (e4m3),
    ``grad_scaling`` for the output gradient (e5m2)."""

    def __init__(self, linear: nn.Linear, recipe: DelayedScaling | None = None) -> None:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Fp8Linear wraps an nn.Linear, got {type(linear).__name__}")
        _check_float32("Fp8Linear", weight=linear.weight, bias=linear.bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.recipe = recipe if recipe is not None else DelayedScaling()
        self.input_scaling = TensorScaling(FLOAT8_E4M3FN, self.recipe)
        self.weight_scaling = TensorScaling(FLOAT8_E4M3FN, self.recipe)
        self.grad_scaling = TensorScaling(FLOAT8_E5M2, self.recipe)

    def forward(self, x: Tensor) -> Tensor:
        return fp8_linear(
            x, self.weight, self.bias, self.input_scaling, self.weight_scaling, self.grad_scaling
        )

    def _scalings(self) -> dict[str, TensorScaling]:
        return {role: getattr(self, f"{role}_scaling") for role in _ROLES}

    def scaling_state(self) -> dict[str, Any]:
        """Plain NumPy arrays and floats, by name ("input.scale", "grad.amax_history", ...),
        for a checkpoint: the parameters are in ``state_dict()``, the scales here."""
        return {
            f"{role}.{key}": value
            for role, scaling in self._scalings().items()
            for key, value in scaling.state_dict().items()
        }

    def load_scaling_state(self, state: dict[str, Any]) -> None:
        """Load what ``scaling_state`` saved; all of it is checked before anything changes."""
        expected = set(self.scaling_state())
        if set(state) != expected:
            raise KeyError(
                f"load_scaling_state: missing {sorted(expected - set(state))}, "
                f"unexpected {sorted(set(state) - expected)}"
            )
        checked = {
            role: scaling._checked({k: state[f"{role}.{k}"] for k in ("amax_history", "scale")})
            for role, scaling in self._scalings().items()
        }
        for role, scaling in self._scalings().items():
            scaling.amax_history, scaling.scale = checked[role]

    def __repr__(self) -> str:
        return f"Fp8Linear({self.in_features}, {self.out_features}, {self.recipe})"


def to_fp8(model: nn.Sequential, recipe: DelayedScaling | None = None) -> nn.Sequential:
    """A new Sequential whose Linear layers are :class:`Fp8Linear` sharing their parameters.

    Other layers are kept (the same objects); nested Sequentials are converted too.
    The model must be float32: fp8 training keeps float32 master weights and runs
    only the GEMMs in fp8, as TE does with its higher-precision parameters.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"to_fp8 converts an nn.Sequential, got {type(model).__name__}")
    for name, p in model.named_parameters():
        if p.dtype != float32:
            raise TypeError(
                f"to_fp8: parameter {name} is {p.dtype}; fp8 simulation needs a float32 model "
                "(float32 master weights, only the GEMMs in fp8): convert it with model.float()"
            )
    recipe = recipe if recipe is not None else DelayedScaling()
    layers = []
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            layer = Fp8Linear(layer, recipe)
        elif isinstance(layer, nn.Sequential):
            layer = to_fp8(layer, recipe)
        layers.append(layer)
    return nn.Sequential(*layers)
