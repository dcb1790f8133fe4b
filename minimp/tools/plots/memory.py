"""Memory per regime, by category (lesson 6)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from minimp.tools.plots.palette import (
    CATEGORY_COLORS,
    CATEGORY_ORDER,
    FALLBACK,
    WIDE,
)


def _unit(nbytes: float) -> tuple[float, str]:
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if nbytes >= 1024**power:
            return 1024.0**power, unit
    return 1.0, "bytes"


def _amount(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def memory_bars(
    memory: Mapping[str, Mapping[str, int]],
    *,
    title: str | None = None,
    figsize: tuple[float, float] = WIDE,
) -> Figure:
    """Training memory per regime, stacked by what it holds, total on top.

    Mixed precision halves what scales with the model's dtype (parameters,
    gradients, activations) but adds float32 master weights (Micikevicius et al.
    2018, sec. 3.1): a net saving only where activations dominate. The unit (bytes,
    KiB, MiB or GiB) is chosen from the largest total; each total is also given
    relative to fp32 when fp32 is among the regimes.
    """
    regimes = list(memory)
    categories = [c for c in CATEGORY_ORDER if any(c in memory[r] for r in regimes)]
    categories += sorted({c for r in regimes for c in memory[r]} - set(categories))
    totals = np.array([sum(memory[r].values()) for r in regimes], dtype=np.float64)
    divisor, unit = _unit(totals.max() if len(totals) else 0)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(regimes))
    bottom = np.zeros(len(regimes))
    for i, category in enumerate(categories):
        heights = np.array([memory[r].get(category, 0) for r in regimes]) / divisor
        ax.bar(
            x,
            heights,
            0.6,
            bottom=bottom,
            label=category,
            color=CATEGORY_COLORS.get(category, FALLBACK[i % len(FALLBACK)]),
            edgecolor="white",
            lw=0.8,
        )
        bottom += heights
    reference = totals[regimes.index("fp32")] if "fp32" in regimes else None
    for xi, r, total in zip(x, regimes, totals, strict=True):
        text = f"{_amount(total / divisor)} {unit}"
        if reference and r != "fp32":
            text += f"\n{total / reference:.2f}× fp32"
        ax.text(xi, total / divisor, text, ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, regimes)
    ax.set_ylim(0, (totals.max() / divisor if len(totals) else 1) * 1.22)
    ax.set_ylabel(f"memory ({unit})")
    ax.set_xlabel("regime")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(loc="outside lower center", fontsize=9, ncols=min(len(categories), 5), frameon=False)
    ax.set_title(
        title or "Training memory by category: float32 masters vs 16-bit parameters",
        fontsize=11,
    )
    return fig
