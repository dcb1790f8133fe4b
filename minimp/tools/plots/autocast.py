"""Autocast: where float16 breaks the ops PyTorch's policy keeps in float32, and what
each layout of mixed precision stores (lesson 5)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from minimp.formats import FLOAT16
from minimp.tools.plots.palette import CATEGORY_COLORS, CATEGORY_ORDER, COLORS, WIDE

EXP_OVERFLOW = math.log(FLOAT16.max)
"""Above ln(65504), about 11.09, exp of a value is beyond float16's max."""


def autocast_overview(
    logits: np.ndarray,
    memory: Mapping[str, Mapping[str, int]],
    *,
    figsize: tuple[float, float] = WIDE,
) -> Figure:
    """Left: the measured logits on a linear axis, with the line above which exp
    overflows float16 (why autocast runs exp, softmax and the losses in float32).
    Right: the bytes each layout stores, stacked by category (``memory_report``'s
    dicts, one per layout, keyed by regime name so each bar has its regime's colour
    as its edge)."""
    values = np.asarray(logits, dtype=np.float64).ravel()
    fig = Figure(figsize=figsize, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1.4, 1))
    top = max(float(values.max()), EXP_OVERFLOW) + 1
    bins = np.linspace(float(values.min()), top, 60)
    left.hist(values, bins=bins, color=COLORS["float32"], alpha=0.7)
    left.axvspan(EXP_OVERFLOW, top, color=COLORS["float16"], alpha=0.15, lw=0)
    left.axvline(EXP_OVERFLOW, color=COLORS["float16"], ls="--", lw=1.2)
    share = float(np.mean(values > EXP_OVERFLOW))
    left.text(
        EXP_OVERFLOW,
        0.97,
        f" exp > 65504: inf in float16\n {share:.1%} of the logits",
        transform=left.get_xaxis_transform(),
        va="top",
        fontsize=9,
        color=COLORS["float16"],
    )
    left.set_xlabel("logit")
    left.set_ylabel("count")
    left.set_title("Logits of a trained digits MLP", fontsize=11)
    names = list(memory)
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for category in CATEGORY_ORDER:
        heights = np.array([memory[n].get(category, 0) for n in names], dtype=np.float64) / 1024
        if not heights.any():
            continue
        right.bar(
            x, heights, 0.6, bottom=bottom, label=category, color=CATEGORY_COLORS[category],
            edgecolor=[COLORS.get(n, "0.3") for n in names], lw=1.5,
        )  # fmt: skip
        bottom += heights
    for xi, total in zip(x, bottom, strict=True):
        right.text(xi, total, f"{total:,.0f} KiB", ha="center", va="bottom", fontsize=9)
    right.set_xticks(x, names)
    right.set_ylim(0, bottom.max() * 1.2)
    right.set_ylabel("stored bytes of one step (KiB)")
    right.set_title("What each layout stores", fontsize=11)
    right.legend(fontsize=8, loc="upper left")
    return fig
