"""What precision does to a run: gradient statistics measured during training.

A float16 gradient that underflowed is simply 0: looking at it cannot tell a
flushed value from a true zero. So the statistics here are taken from the
float32 values *before* the cast: at a recorded step, the same batch is run
through a float32 twin of the model (the master weights, or the weights
widened), and its activation and weight gradients, multiplied by the run's loss
scale, are classified against the target format (``formats.classify``): zero,
flushed to zero, subnormal, normal, overflow. That is the measurement of the
paper's Figure 3 (Micikevicius et al. 2018, sec. 3.2).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minimp import formats, nn
from minimp import functional as F
from minimp.fp8 import Fp8Linear
from minimp.tensor import Tensor, compute, tensor

__all__ = ["GradientRecorder", "float32_gradients", "log2_histogram", "loss_scale_window"]


def float32_gradients(
    model: nn.Sequential, weights: list[Tensor], inputs: np.ndarray, targets: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Each Linear layer's activation gradient (d loss / d output) and weight gradient,
    computed in float32 on one batch, unscaled, by a float32 twin of ``model`` whose
    parameters hold ``weights`` (in ``model.parameters()`` order) widened to float32.
    """
    if any(isinstance(layer, Fp8Linear) for layer in model.layers):
        raise TypeError(
            "float32_gradients: this model's matmuls run in fp8 (Fp8Linear layers); its "
            "gradients are float32 already, and what fp8 does to them is in each layer's "
            "grad_scaling (last_underflow, last_saturated, amax_history)"
        )
    twin = copy.deepcopy(model)
    for p, w in zip(twin.parameters(), weights, strict=True):
        p.data, p.grad = compute(w.data), None
    h = tensor(inputs, dtype="float32")
    outputs = []
    for i, layer in enumerate(twin.layers):
        h = layer(h)
        if isinstance(layer, nn.Linear):
            outputs.append((f"layers.{i}", layer, h.retain_grad()))
    F.cross_entropy(h, targets).backward()
    return {
        name: {"activation": out.grad.numpy(), "weight": layer.weight.grad.numpy()}
        for name, layer, out in outputs
    }


def log2_histogram(values: np.ndarray, edges: np.ndarray | None = None) -> dict[str, Any]:
    """Counts of log2 |v| over the nonzero finite values, the zeros counted apart (they
    have no logarithm): the data of the paper's Figure 3."""
    values = np.asarray(values, np.float64).ravel()
    finite = values[np.isfinite(values)]
    nonzero = np.abs(finite[finite != 0])
    if edges is None:
        edges = np.arange(-64, 17)
    counts, edges = np.histogram(np.log2(nonzero), bins=edges)
    return {"edges": edges, "counts": counts, "zeros": int(finite.size - nonzero.size)}


@dataclass
class GradientRecorder:
    """A training hook: at each recorded step, what a cast to ``fmt`` does to every
    layer's activation and weight gradients at the run's loss scale.

    ``records`` holds one dict per (step, layer, kind) with the fraction of values in
    each category of ``formats.CATEGORIES``, among all values and among the nonzero ones
    ("flushed_of_nonzero": the share of real gradient signal the cast destroys).
    """

    fmt: Any = "float16"
    records: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, info: Any) -> None:
        weights = info.masters.parameters() if info.masters else info.model.parameters()
        grads = float32_gradients(info.model, weights, info.inputs, info.targets)
        for layer, kinds in grads.items():
            for kind, values in kinds.items():
                counts = formats.count_categories(values * np.float32(info.scale), self.fmt)
                nonzero = values.size - counts["zero"]
                self.records.append(
                    {
                        "step": info.step,
                        "layer": layer,
                        "kind": kind,
                        "scale": info.scale,
                        **{k: v / values.size for k, v in counts.items()},
                        "flushed_of_nonzero": counts["flushed_to_zero"] / nonzero
                        if nonzero
                        else 0.0,
                    }
                )

    def select(self, kind: str, key: str = "flushed_of_nonzero") -> dict[str, np.ndarray]:
        """``{layer: values of key over the recorded steps}`` for one kind of gradient."""
        out: dict[str, list[float]] = {}
        for r in self.records:
            if r["kind"] == kind:
                out.setdefault(r["layer"], []).append(r[key])
        return {layer: np.array(v) for layer, v in out.items()}


# ---- the loss-scale advisor -------------------------------------------------------


def loss_scale_window(
    gradients: Sequence[np.ndarray], keep: float = 0.99, fmt: Any = "float16"
) -> tuple[float, float]:
    """The powers of two S that make the loss scale ``gradients`` need (sec. 3.2).

    Scaling the loss by S scales every gradient by S. ``low`` is the smallest S for
    which a share ``keep`` of the nonzero values satisfies |g| S >= the format's
    smallest subnormal (so at most 1 - keep of the signal flushes to zero); ``high``
    is the largest S for which max |g| S <= the format's max (nothing overflows).
    ``low > high`` means no single scale does both: the values span more binades
    than the format has. Pass float32 gradients of a real step (all layers, both
    activation and weight gradients: one scale multiplies them all).
    """
    fmt = formats.get_format(fmt)
    magnitudes = np.concatenate([np.abs(np.asarray(g, np.float64)).ravel() for g in gradients])
    magnitudes = magnitudes[(magnitudes > 0) & np.isfinite(magnitudes)]
    if magnitudes.size == 0:
        raise ValueError("loss_scale_window: every gradient is zero or non-finite")
    may_flush = math.floor((1.0 - keep) * magnitudes.size)  # values allowed to vanish
    smallest_kept = np.partition(magnitudes, may_flush)[may_flush]
    low = 2.0 ** math.ceil(math.log2(fmt.min_subnormal / smallest_kept))
    high = 2.0 ** math.floor(math.log2(fmt.max / magnitudes.max()))
    return low, high
