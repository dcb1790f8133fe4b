"""Narrow-format training simulated by rounding: the linear layers whose GEMMs run in fp8
(one scale per tensor, Transformer Engine's recipe) or in a block-scaled format (MX,
NVFP4, DeepSeek-V3's tiles: one scale per block of values along each GEMM's reduction
axis, :class:`BlockLinear`).

The recipe is TE's ``Format.HYBRID``: e4m3 (more precision) for the forward
operands, x and W, and e5m2 (more range) for the output gradient, each with its
own per-tensor scale (:mod:`minimp.scaling`). Only the GEMMs see fp8 values; they
multiply them exactly and accumulate in float32, as fp8 tensor cores do.
Everything else stays float32: the master weights the optimizer updates, the
bias, the activations between layers, the bias gradient. That is why
:func:`to_fp8` wants a float32 model.

The block-scaled layer lives here too, not in :mod:`minimp.scaling`, because it is a
module with autograd and ``scaling`` knows nothing of modules: it holds the formats,
the quantizers and the recipes as data. The module sits beside ``nn`` (it wraps
``nn.Linear``), above ``amp``.
"""

from __future__ import annotations

import copy as _copy
from typing import Any

import numpy as np

from minimp import nn
from minimp.formats import FLOAT8_E4M3FN, FLOAT8_E5M2
from minimp.scaling import (
    BlockFormat,
    BlockScaling,
    CurrentScaling,
    DelayedScaling,
    TensorScaling,
    decode,
    dequantize,
    quantize,
)
from minimp.scaling.accumulate import matmul as accumulated_matmul
from minimp.tensor import Tensor, float32, ieee, is_grad_enabled

__all__ = [
    "BlockLinear",
    "BlockScaling",
    "DelayedScaling",
    "Fp8Linear",
    "TensorScaling",
    "block_linear",
    "fp8_linear",
    "to_fp8",
]


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


def to_fp8(
    model: nn.Module, recipe: DelayedScaling | CurrentScaling | BlockScaling | None = None
) -> nn.Module:
    """The model with its Linear layers running their GEMMs as ``recipe`` says, sharing
    their parameters: :class:`Fp8Linear` for a per-tensor recipe (``DelayedScaling``,
    ``CurrentScaling``), :class:`BlockLinear` for a :class:`BlockScaling` one, whose
    last Linear (the head: the MLP's output layer, the GPT's ``lm_head``) stays as it is
    unless ``recipe.quantize_head``.

    Any module converts: a Sequential (the digits MLP) or the GPT. Each module that holds
    a converted layer is a shallow copy with it swapped in; modules without one are kept
    (the same objects). The model must be float32: narrow-format training keeps float32
    master weights and runs only the GEMMs narrow, as TE does with its
    higher-precision parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_fp8 converts an nn.Module, got {type(model).__name__}")
    for name, p in model.named_parameters():
        if p.dtype != float32:
            raise TypeError(
                f"to_fp8: parameter {name} is {p.dtype}; fp8 simulation needs a float32 model "
                "(float32 master weights, only the GEMMs in fp8): convert it with model.float()"
            )
    recipe = recipe if recipe is not None else DelayedScaling()
    if type(recipe) not in _LAYERS:
        raise TypeError(
            f"to_fp8: recipe must be a DelayedScaling, CurrentScaling or BlockScaling, got "
            f"{type(recipe).__name__}"
        )
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = linears[-1] if linears and not getattr(recipe, "quantize_head", True) else None
    return _converted(model, lambda layer: _LAYERS[type(recipe)](layer, recipe), head)


def _converted(module: nn.Module, make: Any, head: nn.Module | None) -> nn.Module:
    if isinstance(module, nn.Linear):
        return module if module is head else make(module)
    swapped = {}
    for name, value in vars(module).items():
        if isinstance(value, nn.Module):
            new = _converted(value, make, head)
            if new is not value:
                swapped[name] = new
        elif isinstance(value, list | tuple) and any(isinstance(v, nn.Module) for v in value):
            items = [_converted(v, make, head) if isinstance(v, nn.Module) else v for v in value]
            if any(n is not v for n, v in zip(items, value, strict=True)):
                swapped[name] = type(value)(items)
    if not swapped:
        return module
    copy = _copy.copy(module)
    for name, value in swapped.items():
        setattr(copy, name, value)
    return copy


def _check_blocks(op: str, operand: str, shape: tuple[int, ...], axis: int, fmt: BlockFormat,
                  gemm: str) -> None:  # fmt: skip
    """A block-scaled GEMM needs whole blocks along the reduction axis (and, for 2-d blocks,
    along the other axis too): the kernels have no partial blocks, so neither does minimp."""
    k, n = fmt.block
    for ax, extent in ((axis, k), (1 - axis, n)) if n > 1 else ((axis, k),):
        if shape[ax] % extent:
            raise ValueError(
                f"{op}: {gemm} quantizes {operand} {shape} in {fmt.name} blocks of {extent} "
                f"along axis {ax}, and {shape[ax]} is not a multiple of {extent}: choose sizes "
                "(features, batch) that are multiples of the block, or keep this layer in "
                "float32 (as to_fp8 keeps the head)"
            )


def _mm(a: np.ndarray, b: np.ndarray, accumulator: Any) -> np.ndarray:
    return a @ b if accumulator is None else accumulated_matmul(a, b, accumulator)


@ieee()
def block_linear(x: Tensor, weight: Tensor, bias: Tensor | None, recipe: BlockScaling) -> Tensor:
    """``x @ weight.T + bias`` with every GEMM operand block-quantized along that GEMM's
    reduction axis, as MX and NVFP4 training (and DeepSeek-V3's fp8) do::

        forward  y  = Q_in(x, K)  @ Q_w(W, K).T      x (M, K), W (N, K): blocks along K
        dgrad    dx = Q_g(g, N)   @ Q_w(W, N)         blocks along N: W's other axis
        wgrad    dW = Q_g(g, M).T @ Q_in(x, M)        blocks along the batch M
        db = sum of the unquantized g, in float32

    So W is quantized twice, along different axes (the same blocks only for DeepSeek's
    square 128x128 ones), and so is g; x and W's backward copies are made in the
    forward, from the float32 values, and saved in their narrow form (elements in the
    element format, one byte each; scales in the scale format), as TE saves its
    column-wise MXFP8 copies. Products accumulate as ``recipe.accumulator`` says.
    Leading axes of x are batch (M is their product). No state: every scale comes from
    the current values.
    """
    _check_float32("block_linear", x=x, weight=weight, bias=bias)
    if weight.device != "cpu":
        raise ValueError(
            "block_linear: the block quantizer is NumPy code, so block-scaled layers run on "
            f"the CPU; the weight is on {weight.device}: use device='cpu'"
        )
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"block_linear: input {x.shape} does not fit weight {weight.shape} (out, in)"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"block_linear: bias {bias.shape} does not fit weight {weight.shape}")
    x2 = x.data.reshape(-1, x.shape[-1])
    needs_dx = is_grad_enabled() and x.requires_grad
    needs_dw = is_grad_enabled() and weight.requires_grad
    _check_blocks("block_linear", "x", x2.shape, 1, recipe.input, "the forward GEMM")
    _check_blocks("block_linear", "W", weight.shape, 1, recipe.weight, "the forward GEMM")
    if needs_dw:
        _check_blocks("block_linear", "x", x2.shape, 0, recipe.input, "the wgrad GEMM")
        _check_blocks("block_linear", "g", (*x2.shape[:1], weight.shape[0]), 0, recipe.grad,
                      "the wgrad GEMM")  # fmt: skip
    if needs_dx:
        _check_blocks("block_linear", "W", weight.shape, 0, recipe.weight, "the dgrad GEMM")
        _check_blocks("block_linear", "g", (*x2.shape[:1], weight.shape[0]), 1, recipe.grad,
                      "the dgrad GEMM")  # fmt: skip
    acc = recipe.accumulator
    xq = quantize(x2, recipe.input, axis=1).values
    wq = quantize(weight.data, recipe.weight, axis=1).values
    out = _mm(xq, wq.T, acc).reshape(*x.shape[:-1], weight.shape[0])
    if bias is not None:
        out += bias.data

    def narrow(array: np.ndarray, fmt: BlockFormat) -> tuple[np.ndarray, np.ndarray, float]:
        """The column-wise (axis 0) copy backward reads, stored as the format stores it."""
        q = quantize(array, fmt, axis=0)
        return (
            q.elements.astype(fmt.element.dtype),
            q.scales.astype(fmt.scale_format.dtype),
            (q.tensor_scale),
        )

    x_col = narrow(x2, recipe.input) if needs_dw else None
    w_col = narrow(weight.data, recipe.weight) if needs_dx else None

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        dx = dw = None
        if x.requires_grad:
            gq = quantize(g2, recipe.grad, axis=1).values
            wc = dequantize(*w_col[:2], recipe.weight, 0, w_col[2])
            dx = _mm(gq, wc, acc).reshape(x.shape)
        if weight.requires_grad:
            gq = quantize(g2, recipe.grad, axis=0).values
            xc = dequantize(*x_col[:2], recipe.input, 0, x_col[2])
            dw = _mm(gq.T, xc, acc)
        db = g2.sum(axis=0, dtype=np.float32) if bias is not None and bias.requires_grad else None
        return (dx, dw, db) if bias is not None else (dx, dw)

    parents = (x, weight) if bias is None else (x, weight, bias)
    saved = [*(x_col[:2] if x_col else ()), *(w_col[:2] if w_col else ())]
    return Tensor.from_op(out, parents, backward, tuple(saved))


class BlockLinear(nn.Module):
    """An ``nn.Linear`` whose GEMMs run block-scaled (:func:`block_linear`): the same weight
    and bias Tensors (shared, so an optimizer built on the original model updates this
    one) and a :class:`BlockScaling` recipe. Stateless: every block's scale comes from
    its current values, so there is nothing to checkpoint beyond the parameters."""

    def __init__(self, linear: nn.Linear, recipe: BlockScaling) -> None:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"BlockLinear wraps an nn.Linear, got {type(linear).__name__}")
        if not isinstance(recipe, BlockScaling):
            raise TypeError(
                f"BlockLinear takes a BlockScaling recipe (MXFP8, NVFP4_RECIPE, ...), got "
                f"{type(recipe).__name__}"
            )
        _check_float32("BlockLinear", weight=linear.weight, bias=linear.bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.recipe = recipe

    def forward(self, x: Tensor) -> Tensor:
        return block_linear(x, self.weight, self.bias, self.recipe)

    def __repr__(self) -> str:
        return f"BlockLinear({self.in_features}, {self.out_features}, {self.recipe.name})"


_LAYERS = {DelayedScaling: Fp8Linear, CurrentScaling: Fp8Linear, BlockScaling: BlockLinear}
"""Which layer each kind of recipe makes (:func:`to_fp8`): one scale per tensor, or per block."""
