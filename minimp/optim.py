"""Optimizers: ``SGD`` (momentum, weight decay) and ``Adam``, with PyTorch's update rules.

An optimizer updates its parameters in their own dtype. Every new value (a
moment, a parameter) is computed in float32 from the stored values and rounded
once to the parameter's dtype, as a fused GPU optimizer kernel does. So a
float16 parameter keeps float16 moments and loses any update smaller than half
its ulp, about 2^-11 of its magnitude (Micikevicius et al. 2018, sec. 3.1):
that is the failure FP32 master weights exist to prevent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from minimp import backend
from minimp.tensor import Tensor, compute, ieee, round_to_dtype

__all__ = ["SGD", "Adam", "Optimizer"]


class Optimizer:
    """Holds ``param_groups`` (PyTorch's layout: a list of dicts with "params" and settings)
    and per-parameter ``state``."""

    def __init__(self, params: Iterable[Tensor], defaults: dict[str, Any]) -> None:
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for p in params:
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError(
                    "optimizer parameters must be Tensors with requires_grad=True "
                    "(pass model.parameters())"
                )
        if defaults["lr"] < 0:
            raise ValueError(f"learning rate must be >= 0, got {defaults['lr']}")
        self.defaults = defaults
        self.param_groups = [{"params": params, **defaults}]
        self.state: dict[int, dict[str, Any]] = {}  # keyed by id(parameter)

    def zero_grad(self) -> None:
        """Drop the gradients (set them to None, PyTorch's default)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: settings per group (params as indices) and state by index.
        Arrays come back as NumPy copies; counters as Python ints."""
        params = [p for group in self.param_groups for p in group["params"]]
        index = {id(p): i for i, p in enumerate(params)}
        groups = [
            {
                **{k: v for k, v in group.items() if k != "params"},
                "params": [index[id(p)] for p in group["params"]],
            }
            for group in self.param_groups
        ]
        state = {
            index[id(p)]: {
                k: v if isinstance(v, int) else backend.to_numpy(v).copy()
                for k, v in self.state[id(p)].items()
            }
            for p in params
            if id(p) in self.state
        }
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what ``state_dict`` returned, for the same parameters; checks the
        structure, shapes and dtypes before changing anything."""
        params = [p for group in self.param_groups for p in group["params"]]
        groups = state_dict.get("param_groups")
        if groups is None or "state" not in state_dict:
            raise KeyError("optimizer state dict needs 'param_groups' and 'state'")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("optimizer state dict is for a different set of parameters")
        new_state = {}
        for i, values in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(
                    f"optimizer state dict has state for parameter {i}, of {len(params)}"
                )
            p = params[i]
            for key, value in values.items():
                if not isinstance(value, int) and (
                    value.shape != p.shape or value.dtype != p.dtype
                ):
                    raise ValueError(
                        f"optimizer state {key!r} of parameter {i} is "
                        f"{value.dtype}{list(value.shape)}, "
                        f"the parameter is {p.dtype}{list(p.shape)}"
                    )
            new_state[id(p)] = {
                k: v if isinstance(v, int) else backend.to_device(np.array(v, copy=True), p.device)
                for k, v in values.items()
            }
        for group, saved in zip(self.param_groups, groups, strict=True):
            group.update(
                {
                    k: (tuple(v) if isinstance(v, list) else v)
                    for k, v in saved.items()
                    if k != "params"
                }
            )
        self.state = new_state

    def step(self) -> None:
        with ieee():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, group, self.state.setdefault(id(p), {}))

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """p <- p - lr * v, with v = momentum * v + (g + weight_decay * p) (PyTorch's SGD)."""

    def __init__(
        self, params: Iterable[Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        if momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}"
            )
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        g = compute(p.grad.data)
        if group["weight_decay"]:
            g = g + group["weight_decay"] * compute(p.data)
        if group["momentum"]:
            if "momentum_buffer" in state:
                g = group["momentum"] * compute(state["momentum_buffer"]) + g
            state["momentum_buffer"] = round_to_dtype(g, p.dtype)
        p.data = round_to_dtype(compute(p.data) - group["lr"] * g, p.dtype)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` computes it, bias correction included."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        g = compute(p.grad.data)
        if group["weight_decay"]:
            g = g + group["weight_decay"] * compute(p.data)
        if not state:
            state["step"] = 0
            xp = backend.array_module(p.data)
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        m = compute(state["exp_avg"])
        m = m + (1 - beta1) * (g - m)
        v = beta2 * compute(state["exp_avg_sq"]) + (1 - beta2) * g * g
        state["exp_avg"] = m = round_to_dtype(m, p.dtype)
        state["exp_avg_sq"] = v = round_to_dtype(v, p.dtype)
        step_size = group["lr"] / (1 - beta1 ** state["step"])
        denom = (
            backend.array_module(v).sqrt(compute(v)) / math.sqrt(1 - beta2 ** state["step"])
            + group["eps"]
        )
        p.data = round_to_dtype(compute(p.data) - step_size * (compute(m) / denom), p.dtype)
