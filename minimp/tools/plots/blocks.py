"""Block scaling and accumulation (lesson 11): what a scale per block keeps that one
scale per tensor flushes, how a dot product's error grows with its length in each
accumulator, and how delayed and current scales meet a spike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from minimp.tools.plots.palette import LINESTYLES, WIDE, color_of, log2_axis


def outlier_blocks(
    x: Any,
    dequantized: Mapping[str, Any],
    outlier: int,
    block: int = 32,
    figsize: tuple[float, float] = WIDE,
) -> Figure:
    """Left: |x| (grey) around one outlier and, per scheme, the values it flushed to zero
    (marked at the bottom); right: each scheme's share of flushed values and its relative
    RMS error against float32, the outlier left out. ``dequantized[name]`` is the float32
    array the scheme hands a matmul."""
    x = np.asarray(x, dtype=np.float64)
    keep = np.arange(x.size) != outlier
    fig = Figure(figsize=figsize, layout="constrained")
    ax_x, ax_bar = fig.subplots(1, 2, width_ratios=(3, 2))
    lo, hi = max(outlier // block * block - 2 * block, 0), outlier // block * block + 3 * block
    idx = np.arange(lo, min(hi, x.size))
    ax_x.semilogy(idx, np.abs(x[idx]) + 1e-30, ".", color="0.6", ms=3, label="|x|, float32")
    ax_x.axvspan(outlier // block * block, outlier // block * block + block, color="0.9")
    for i, (name, q) in enumerate(dequantized.items()):
        flushed = idx[(np.asarray(q)[idx] == 0) & (x[idx] != 0)]
        level = np.full(flushed.size, np.abs(x[idx][x[idx] != 0]).min() / 4 ** (i + 1))
        ax_x.plot(flushed, level, "|", color=color_of(name, i), ms=8, label=f"flushed: {name}")
    ax_x.set_xlabel(f"index (shaded: the outlier's block of {block})")
    ax_x.set_ylabel("|x|")
    ax_x.legend(fontsize=7, loc="upper right")
    names = list(dequantized)
    flushed_share = [((np.asarray(dequantized[n]) == 0) & (x != 0))[keep].mean() for n in names]
    errors = [
        np.sqrt(np.mean((np.asarray(dequantized[n], np.float64) - x)[keep] ** 2))
        / np.sqrt(np.mean(x[keep] ** 2))
        for n in names
    ]
    pos = np.arange(len(names))
    colors = [color_of(n, i) for i, n in enumerate(names)]
    ax_bar.barh(pos - 0.2, flushed_share, 0.4, color=colors, label="flushed to zero")
    ax_bar.barh(pos + 0.2, errors, 0.4, color=colors, alpha=0.45, hatch="//",
                label="relative RMS error")  # fmt: skip
    ax_bar.set_yticks(pos, names, fontsize=8)
    ax_bar.invert_yaxis()
    ax_bar.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax_bar.set_xlabel("share of the other values")
    ax_bar.legend(fontsize=7, loc="lower right")
    fig.suptitle("One outlier: one scale per tensor against one per block")
    return fig


def accumulation_error(
    lengths: Sequence[int],
    errors: Mapping[str, Sequence[float]],
    figsize: tuple[float, float] = WIDE,
) -> Figure:
    """Relative error of a K-long dot product against K, one line per accumulator (log-log;
    a zero error is drawn at the axis floor)."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    floor = min((e for errs in errors.values() for e in errs if e > 0), default=1e-9) / 4
    for i, (name, errs) in enumerate(errors.items()):
        ax.loglog(lengths, np.maximum(errs, floor), marker="o", ms=3, color=color_of(name, i),
                  linestyle=LINESTYLES.get(name, "-"), label=name)  # fmt: skip
    log2_axis(ax.xaxis)
    ax.set_xlabel("K, terms of the dot product")
    ax.set_ylabel("relative error (median over rows)")
    ax.set_title("The accumulator: a running sum rounded after every addition")
    ax.legend(fontsize=8)
    return fig


def spike_scaling(
    steps: Sequence[int],
    amax: Sequence[float],
    saturated: Mapping[str, Sequence[float]],
    underflow: Mapping[str, Sequence[float]],
    figsize: tuple[float, float] = WIDE,
) -> Figure:
    """Top: the tensor's amax, cast by cast; below, per recipe, the share of its values
    clipped to the format's max (saturated) and flushed to zero."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax_amax, ax_sat, ax_under = fig.subplots(3, 1, sharex=True)
    ax_amax.semilogy(steps, amax, color="0.3")
    ax_amax.set_ylabel("amax")
    for i, name in enumerate(saturated):
        style = {"color": color_of(name, i), "linestyle": LINESTYLES.get(name, "-")}
        ax_sat.plot(steps, saturated[name], label=name, **style)
        ax_under.plot(steps, underflow[name], label=name, **style)
    for ax, what in ((ax_sat, "saturated"), (ax_under, "flushed")):
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel(what)
    ax_sat.legend(fontsize=8)
    ax_under.set_xlabel("cast (training step)")
    fig.suptitle("A spike: delayed scaling misses it, current scaling fits it")
    return fig
