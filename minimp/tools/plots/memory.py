"""Memory per regime, by category, and how the balance moves with the batch (lesson 6)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from minimp.tools.plots.palette import (
    CATEGORY_COLORS,
    CATEGORY_ORDER,
    FALLBACK,
    WIDE,
    color_of,
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
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    _bars(ax, memory)
    n_categories = len({c for r in memory for c in memory[r]})
    fig.legend(loc="outside lower center", fontsize=9, ncols=min(n_categories, 5), frameon=False)
    ax.set_title(
        title or "Training memory by category: float32 masters vs 16-bit parameters",
        fontsize=11,
    )
    return fig


def memory_compared(
    memory: Mapping[str, Mapping[str, int]],
    by_batch: Mapping[str, Mapping[int, Mapping[str, float]]],
    *,
    batch: int,
    title: str | None = None,
    figsize: tuple[float, float] = (11.0, 4.6),
) -> Figure:
    """Left: the bars of :func:`memory_bars` at one batch size. Right: each regime's
    total relative to fp32's at several batch sizes, ``by_batch[regime][batch]`` holding
    "stored" (``memory_report``: the arrays' own sizes) and "peak" (``measure_peak``:
    the allocator's high-water mark of a step), stored solid, peak dashed.

    Weights do not grow with the batch and activations do, so the mixed regimes, which
    add float32 masters but halve activations, cross below fp32 once activations
    dominate: the paper's "memory roughly halves" (Micikevicius et al. 2018, sec. 3.1)
    is a large-batch, large-activation statement."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax_bars, ax_ratio = fig.subplots(1, 2, width_ratios=(1.25, 1))
    _bars(ax_bars, memory)
    ax_bars.set_title(f"Stored by one step at batch {batch}, by category", fontsize=10)
    for i, (name, batches) in enumerate(by_batch.items()):
        sizes = sorted(batches)
        color = color_of(name, i)
        for key, ls in (("stored", "-"), ("peak", "--")):
            ratio = [batches[b][key] for b in sizes]
            ax_ratio.plot(sizes, ratio, ls, marker="o", color=color, label=f"{name}, {key}")
            if key == "stored":
                for b, r in zip(sizes, ratio, strict=True):
                    ax_ratio.annotate(f"{r:.2f}×", (b, r), textcoords="offset points",
                                      xytext=(4, 4), fontsize=8, color=color)  # fmt: skip
    ax_ratio.axhline(1.0, color="black", lw=1.0)
    ax_ratio.set_xscale("log", base=2)
    ax_ratio.set_xlabel("batch size")
    ax_ratio.set_ylabel("bytes ÷ fp32's at the same batch")
    ax_ratio.set_title("The balance tips as activations grow", fontsize=10)
    ax_ratio.grid(alpha=0.3)
    ax_ratio.legend(fontsize=8, frameon=False)
    handles, labels = ax_bars.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=9,
               ncols=min(len(labels), 5), frameon=False)  # fmt: skip
    fig.suptitle(title or "Training memory per regime: stored (solid) and peak (dashed)",
                 fontsize=11)  # fmt: skip
    return fig


def _bars(ax, memory: Mapping[str, Mapping[str, int]]) -> None:
    regimes = list(memory)
    categories = [c for c in CATEGORY_ORDER if any(c in memory[r] for r in regimes)]
    categories += sorted({c for r in regimes for c in memory[r]} - set(categories))
    totals = np.array([sum(memory[r].values()) for r in regimes], dtype=np.float64)
    divisor, unit = _unit(totals.max() if len(totals) else 0)
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
    ax.set_xticks(x, regimes, rotation=20, ha="right")
    ax.set_ylim(0, (totals.max() / divisor if len(totals) else 1) * 1.22)
    ax.set_ylabel(f"memory ({unit})")
    ax.set_xlabel("regime")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
