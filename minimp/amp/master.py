"""FP32 master weights for a 16-bit model (Micikevicius et al. 2018, sec. 3.1).

A float16 weight w cannot take an update u smaller than half its ulp, about
|u| < 2^-11 |w|: w + u rounds back to w. Late in training most updates are that
small, so a float16 model stops learning. The fix is a float32 copy of every
weight, the master: the optimizer updates the masters, which accumulate the
small updates, and the float16 model is refreshed from them before each forward.

    forward and backward in float16 (model)
    masters.copy_grads_to_masters()     # float16 grads -> float32 (exact)
    optimizer.step()                    # the optimizer holds the masters
    masters.copy_masters_to_model()     # round each master to float16

PyTorch's autocast hides this (its float32 parameters are the masters, cast to
float16 per region); here both copies are objects you can look at after any step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from minimp import backend
from minimp.tensor import Tensor, compute, float32, ieee, round_to_dtype

__all__ = ["MasterWeights"]


class MasterWeights:
    """A float32 master copy of each parameter of a (16-bit) model."""

    def __init__(self, model: Any) -> None:
        """``model``: anything with ``named_parameters()`` (an ``nn.Module``)."""
        named = list(model.named_parameters())
        if not named:
            raise ValueError("MasterWeights: the model has no parameters")
        self.names = [name for name, _ in named]
        self.model_params = [p for _, p in named]
        self.masters = [
            Tensor(compute(p.data).copy(), requires_grad=True) for p in self.model_params
        ]

    def parameters(self) -> list[Tensor]:
        """The float32 masters: give these to the optimizer."""
        return self.masters

    def copy_grads_to_masters(self, inv_scale: Any = None) -> list[Any]:
        """Widen each model gradient to float32 (exact: zeros that underflowed stay zero).
        A master's gradient is always a new array, never the model's own.

        With ``inv_scale`` (1/S, a float32) each is unscaled in the same pass and the
        list returned says, per gradient, whether it was all finite (flags left on the
        device): what ``GradScaler.unscale_(optimizer, masters=self)`` calls."""
        finite = []
        for p, master in zip(self.model_params, self.masters, strict=True):
            if p.grad is None:
                master.grad = None
            elif inv_scale is not None:
                g, ok = backend.unscale(p.grad.data, inv_scale)
                master.grad = Tensor(g)
                finite.append(ok)
            else:
                g = p.grad.data
                master.grad = Tensor(g.copy() if g.dtype == np.float32 else compute(g))
        return finite

    def copy_masters_to_model(self) -> None:
        """Round each master to its model parameter's dtype, nearest-even."""
        with ieee():
            for p, master in zip(self.model_params, self.masters, strict=True):
                p.data = round_to_dtype(master.data, p.dtype)

    def zero_grad(self) -> None:
        for p, master in zip(self.model_params, self.masters, strict=True):
            p.grad = master.grad = None

    def pairs(self) -> Iterator[tuple[str, Tensor, Tensor]]:
        """(name, model parameter, master) for each parameter."""
        yield from zip(self.names, self.model_params, self.masters, strict=True)

    def distance(self) -> dict[str, dict[str, float]]:
        """How far each model parameter is from its master: the largest absolute
        difference, and the fraction of elements where the two differ."""
        out = {}
        for name, p, master in self.pairs():
            diff = backend.to_numpy(abs(master.data - compute(p.data)))
            out[name] = {
                "max_abs": float(diff.max()),
                "fraction_differing": float(np.mean(diff > 0)),
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            name: backend.to_numpy(m.data).copy()
            for name, m in zip(self.names, self.masters, strict=True)
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load masters saved by ``state_dict``; checks everything before changing anything."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"MasterWeights.load_state_dict: missing {missing}")
        for name, master in zip(self.names, self.masters, strict=True):
            array = np.asarray(state[name])
            if array.shape != master.shape or array.dtype != float32:
                raise ValueError(
                    f"MasterWeights.load_state_dict: {name} is {array.dtype}{list(array.shape)}, "
                    f"expected float32{list(master.shape)}"
                )
        device = self.masters[0].device
        for name, master in zip(self.names, self.masters, strict=True):
            master.data = backend.to_device(np.array(state[name], dtype=np.float32), device)
        self.copy_masters_to_model()
