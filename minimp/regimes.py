"""The precision regimes: each one a policy, all of them in one table.

A regime says, as data, everything precision changes in a training run, in the
spirit of jmp's ``Policy(param_dtype, compute_dtype, output_dtype)``:

- ``param_dtype``: the weights the forward pass reads (the model's parameters);
- ``compute_dtype``: activations, matmuls and the gradients flowing back. When it
  is narrower than ``param_dtype`` the forward runs under :class:`~minimp.amp.autocast`
  (PyTorch AMP's layout: float32 parameters, a 16-bit copy per op, cached);
- ``loss_dtype``: the logits are cast to it before the loss (float32 in the
  paper's recipe, sec. 3.3; pure float16 stays float16);
- ``master_weights``: float32 copies the optimizer updates (sec. 3.1; Apex O2);
- ``loss_scaling``: ``None``, ``"static"`` or ``"dynamic"`` (sec. 3.2);
- ``update_rounding``: how the optimizer stores new 16-bit weights (``"nearest"``,
  ``"stochastic"``, ``"kahan"``: Gupta et al. 2015, Zamirai et al. 2020);
- ``matmul``: the recipe of the GEMMs in a narrow format: fp8 with per-tensor scales
  (:class:`~minimp.scaling.DelayedScaling` or :class:`~minimp.scaling.CurrentScaling`),
  or block-scaled (:class:`~minimp.scaling.BlockScaling`: MXFP8, NVFP4), or ``None`` for
  GEMMs in ``compute_dtype``. ``minimp.fp8.to_fp8`` makes the layer each recipe asks for.
- ``autocast_float32``: under autocast, whether the ops on PyTorch's float32 list
  (softmax, layer_norm, the losses, ...) run in float32 (True, PyTorch's behaviour) or,
  like everything else, in ``compute_dtype`` (False: what the list protects against).

The training loop (:class:`minimp.train.Run`) reads these fields and nothing
else, so a new regime is one entry below (and its colour in the palette).
``python -m minimp policies`` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from minimp.scaling import MXFP8, NVFP4_RECIPE, BlockScaling, CurrentScaling, DelayedScaling
from minimp.tensor import as_dtype, bfloat16, float16, float32

__all__ = [
    "ALL_REGIMES",
    "AUTOCAST_LISTS",
    "BEYOND_FP16",
    "REGIMES",
    "Regime",
    "get_regime",
    "regime_table",
]

LOSS_SCALING = (None, "static", "dynamic")
UPDATE_ROUNDING = ("nearest", "stochastic", "kahan")


@dataclass(frozen=True)
class Regime:
    """One precision policy: see the module docstring for what each field means."""

    name: str
    description: str
    param_dtype: Any
    compute_dtype: Any
    loss_dtype: Any
    master_weights: bool = False
    loss_scaling: str | None = None
    update_rounding: str = "nearest"
    matmul: DelayedScaling | CurrentScaling | BlockScaling | None = None
    autocast_float32: bool = True

    def __post_init__(self) -> None:
        for field in ("param_dtype", "compute_dtype", "loss_dtype"):
            object.__setattr__(self, field, as_dtype(getattr(self, field)))
        problems = []
        if self.loss_scaling not in LOSS_SCALING:
            problems.append(
                f"loss_scaling must be one of {LOSS_SCALING}, got {self.loss_scaling!r}"
            )
        if self.update_rounding not in UPDATE_ROUNDING:
            problems.append(
                f"update_rounding must be one of {UPDATE_ROUNDING}, got {self.update_rounding!r}"
            )
        if self.master_weights and not (self.param_dtype == self.compute_dtype != float32):
            problems.append(
                "master_weights keep float32 copies of 16-bit parameters: param_dtype and "
                "compute_dtype must be the same 16-bit dtype (with float32 parameters the "
                "parameters are the masters, as in PyTorch AMP)"
            )
        if self.autocast and self.param_dtype != float32:
            problems.append(
                "a compute_dtype other than param_dtype means autocast, which casts "
                "float32 parameters: param_dtype must be float32"
            )
        if not self.autocast_float32 and not self.autocast:
            problems.append(
                "autocast_float32=False changes autocast's float32 list: it needs autocast "
                "(float32 param_dtype, 16-bit compute_dtype)"
            )
        if self.matmul is not None and not self.param_dtype == self.compute_dtype == float32:
            problems.append(
                "fp8 matmuls and block-scaled ones (matmul=...) run on a float32 model: use "
                "float32 dtypes"
            )
        updates_16_bit = self.param_dtype != float32 and not self.master_weights
        if self.update_rounding != "nearest" and not updates_16_bit:
            problems.append(
                f"update_rounding={self.update_rounding!r} rounds updates to 16-bit weights: "
                "it needs 16-bit parameters without master weights"
            )
        if self.loss_scaling is not None and self.updated_dtype == float16:
            problems.append(
                "loss scaling unscales the gradients of the weights the optimizer updates, "
                "and GradScaler refuses float16 ones (as PyTorch does): keep float32 masters"
            )
        if problems:
            raise ValueError(f"regime {self.name!r}: " + "; ".join(problems))

    @property
    def autocast(self) -> bool:
        """Whether the forward runs under autocast (16-bit compute on float32 parameters)."""
        return self.compute_dtype != self.param_dtype

    @property
    def updated_dtype(self) -> np.dtype:
        """The dtype of the weights the optimizer updates: float32 masters, or the parameters."""
        return float32 if self.master_weights else self.param_dtype


def _regimes(*regimes: Regime) -> dict[str, Regime]:
    return {r.name: r for r in regimes}


# The 2018 recipe, step by step (Micikevicius et al.), and bf16 beside it.
REGIMES: dict[str, Regime] = _regimes(
    Regime("fp32", "float32 everywhere: the baseline", float32, float32, float32),
    Regime("fp16", "pure float16: weights, gradients and updates", float16, float16, float16),
    Regime("mixed-noscale", "float16 compute, float32 masters", float16, float16, float32,
           master_weights=True),
    Regime("mixed-static", "... plus a constant loss scale", float16, float16, float32,
           master_weights=True, loss_scaling="static"),
    Regime("mixed-dynamic", "... plus a dynamic loss scale", float16, float16, float32,
           master_weights=True, loss_scaling="dynamic"),
    Regime("bf16", "bfloat16 compute, float32 masters", bfloat16, bfloat16, float32,
           master_weights=True),
)  # fmt: skip

# What came after: PyTorch AMP's layout (float32 parameters, autocast casting per op);
# 16-bit weights with no float32 copy at all, saved by how the update is rounded
# (Gupta et al. 2015; Zamirai et al. 2020); and fp8 matmuls with a scale per tensor
# (Micikevicius et al. 2022; Transformer Engine's delayed scaling), or with a scale per
# block of 32 or 16 values (OCP MX v1.0; NVIDIA's NVFP4). The pure bf16
# regimes compute their loss in bfloat16, like pure fp16: nothing in them is float32.
BEYOND_FP16: dict[str, Regime] = _regimes(
    Regime("amp", "PyTorch AMP: float32 weights, autocast float16, dynamic scale",
           float32, float16, float32, loss_scaling="dynamic"),
    Regime("fp8", "fp8 matmuls, delayed per-tensor scales", float32, float32, float32,
           matmul=DelayedScaling()),
    Regime("fp8-unscaled", "fp8 matmuls, every scale 1", float32, float32, float32,
           matmul=DelayedScaling(scaling=False)),
    Regime("mxfp8", "MXFP8 matmuls: a power-of-two scale per 32 values", float32, float32,
           float32, matmul=MXFP8),
    Regime("nvfp4", "NVFP4 matmuls: 4-bit values, an e4m3 scale per 16", float32, float32,
           float32, matmul=NVFP4_RECIPE),
    Regime("bf16-pure", "pure bfloat16, updates rounded to nearest",
           bfloat16, bfloat16, bfloat16),
    Regime("bf16-sr", "pure bfloat16, stochastic rounding", bfloat16, bfloat16, bfloat16,
           update_rounding="stochastic"),
    Regime("bf16-kahan", "pure bfloat16, Kahan-compensated", bfloat16, bfloat16, bfloat16,
           update_rounding="kahan"),
)  # fmt: skip

# What autocast's float32 list is for: the same layout as "amp", but softmax,
# layer_norm and the loss in float16 too (shown on the transformer, lesson 10).
AUTOCAST_LISTS: dict[str, Regime] = _regimes(
    Regime("fp16-everywhere", "float16 everywhere but the masters, softmax, LayerNorm and "
           "loss included", float32, float16, float16, loss_scaling="dynamic",
           autocast_float32=False),
)  # fmt: skip

ALL_REGIMES: dict[str, Regime] = {**REGIMES, **BEYOND_FP16, **AUTOCAST_LISTS}


def get_regime(regime: str | Regime) -> Regime:
    """A regime by name (from ``REGIMES`` or ``BEYOND_FP16``), or the regime itself."""
    if isinstance(regime, Regime):
        return regime
    if regime not in ALL_REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose from {', '.join(ALL_REGIMES)}")
    return ALL_REGIMES[regime]


def regime_table(regimes: dict[str, Regime] | None = None) -> str:
    """The regimes' policies as a Markdown table, one row per regime."""
    regimes = ALL_REGIMES if regimes is None else regimes
    columns = ("regime", "params", "compute", "loss", "masters", "loss scale", "update", "matmuls")
    rows = [columns, tuple("---" for _ in columns)]
    for r in regimes.values():
        compute = str(r.compute_dtype) + (" (autocast)" * r.autocast)
        if not r.autocast_float32:
            compute = f"{r.compute_dtype} (autocast, no float32 list)"
        matmuls = r.matmul.label if r.matmul is not None else str(r.compute_dtype)
        rows.append((
            f"`{r.name}`", str(r.param_dtype), compute,
            str(r.loss_dtype), "float32" if r.master_weights else "-", r.loss_scaling or "-",
            r.update_rounding, matmuls,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]  # fmt: skip
    lines[1] = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join(lines)
