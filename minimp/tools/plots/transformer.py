"""The transformer in every regime: validation loss, and its activation gradients (lesson 10)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from minimp.formats import FLOAT16
from minimp.tools.plots.palette import FALLBACK, LINESTYLES, WIDE, color_of


def transformer_regimes(
    histories: Mapping[str, Mapping[str, Any]],
    gradients: Mapping[str, np.ndarray],
    scale: float,
    *,
    figsize: tuple[float, float] = WIDE,
) -> Figure:
    """Left: each regime's validation loss over training (a run that became NaN ends
    where it did). Right: log2 of the magnitudes of the attention and MLP output
    gradients (``gradients[layer]``, unscaled float32 values), with float16's smallest
    subnormal 2^-24, below which a float16 gradient without scaling is zero, and the
    same line moved down by the settled loss scale ``scale``."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax_loss, ax_hist = fig.subplots(1, 2)
    for i, (name, h) in enumerate(histories.items()):
        steps, loss = np.asarray(h["eval_step"]), np.asarray(h["test_loss"], float)
        finite = np.isfinite(loss)
        label = name if finite.all() else f"{name} (NaN from step {steps[~finite][0]})"
        ax_loss.plot(
            steps[finite], loss[finite], color=color_of(name, i), ls=LINESTYLES.get(name, "-"),
            lw=2.6 if name == "fp32" else 1.6, marker="o", ms=3, label=label,
        )  # fmt: skip
    ax_loss.set(xlabel="step", ylabel="validation loss (nats per character)")
    ax_loss.set_title("The regimes on the transformer")
    ax_loss.legend(fontsize=8)
    tiny = np.log2(FLOAT16.min_subnormal)
    bins = np.arange(-50, 2, 1.0)
    for j, (layer, values) in enumerate(gradients.items()):
        v = np.abs(np.asarray(values, np.float64))
        v = v[v > 0]
        ax_hist.hist(np.log2(v), bins=bins, histtype="step", lw=1.4, label=layer, color=FALLBACK[j])
    ax_hist.axvline(tiny, color=color_of("mixed-noscale"), ls="--", label="float16 min subnormal")
    ax_hist.axvline(
        tiny - np.log2(scale), color=color_of("mixed-dynamic"), ls="-",
        label=f"... with loss scale 2^{np.log2(scale):.0f}",
    )  # fmt: skip
    ax_hist.set(xlabel="log2 |activation gradient|", ylabel="count")
    ax_hist.set_title("Attention and MLP output gradients")
    ax_hist.legend(fontsize=7)
    return fig


__all__: Sequence[str] = ["transformer_regimes"]
