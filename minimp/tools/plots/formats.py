"""The formats on one number line (lesson 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator
from matplotlib.transforms import blended_transform_factory

from minimp.formats import Format, get_format
from minimp.tools.plots.palette import (
    COLORS,
    color_of,
    short_name,
)

# The formats lessons 1-8 train with (the MX element formats and e8m0 join in lesson 10).
NUMBER_LINE_FORMATS = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")


def number_line(
    formats: Sequence[Format | str] = NUMBER_LINE_FORMATS,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (8.0, 4.2),
) -> Figure:
    """Where each format can hold a number: its magnitudes on a log2 axis.

    One band per format: subnormals [min_subnormal, min_normal) light (fewer
    significant bits the smaller they get), normals [min_normal, max] solid, and
    the overflow beyond max hatched (inf, or NaN for a format without inf, such
    as fp8 e4m3fn). The relative precision eps = 2^-m is written at the right.
    fp16's limits, 2^-24 and 65504, are called out: everything a gradient or a
    weight does in fp16 training must fit between them, which is why the paper
    needs loss scaling and bf16 (fp32's range, fewer bits) does not
    (Micikevicius et al. 2018, sec. 3.1-3.2).
    """
    fmts = [get_format(f) for f in formats]
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    overflow_width = 6.0
    lows, highs = [], []
    for row, fmt in enumerate(fmts):
        y = len(fmts) - 1 - row
        c = color_of(fmt.name, row)
        sub, norm, top = (math.log2(v) for v in (fmt.min_subnormal, fmt.min_normal, fmt.max))
        lows.append(sub)
        highs.append(top)
        ax.barh(y, norm - sub, left=sub, height=0.5, color=c, alpha=0.3, edgecolor=c, lw=1)
        ax.barh(y, top - norm, left=norm, height=0.5, color=c, edgecolor="black", lw=0.6)
        ax.barh(
            y, overflow_width, left=top, height=0.5, color="white", edgecolor=c, hatch="////", lw=1
        )
        ax.text(
            top + overflow_width + 1,
            y,
            "inf" if fmt.has_inf else ("max" if fmt.saturates else "NaN"),
            va="center",
            fontsize=9,
        )
        ax.text(
            1.01,
            y,
            rf"$\epsilon = 2^{{-{fmt.mantissa_bits}}}$",
            transform=blended_transform_factory(ax.transAxes, ax.transData),
            va="center",
            fontsize=10,
        )
    ax.set_yticks(
        range(len(fmts)),
        [
            f"{short_name(f)}\n{f.exponent_bits} exp, {f.mantissa_bits} frac bits"
            for f in reversed(fmts)
        ],
    )
    ax.tick_params(axis="y", length=0)
    left = 16 * math.floor((min(lows) - 2) / 16)
    right = max(highs) + overflow_width + 16
    ax.set_xlim(left, right)
    # Labels every 32 (every 16 would collide at README size), ticks every 8.
    ax.xaxis.set_major_locator(FixedLocator(np.arange(32 * math.ceil(left / 32), right, 32)))
    ax.xaxis.set_minor_locator(FixedLocator(np.arange(left, right, 8)))
    ax.set_ylim(-0.6, len(fmts) - 0.4 + 0.9)
    ax.set_xlabel("log2 |x|   (a tick at k marks |x| = 2^k)")
    ax.axvline(0, color="0.6", lw=0.8, zorder=0)

    # fp16's two limits, across every band, so the other formats compare with them.
    fp16 = get_format("float16")
    top_y = len(fmts) - 0.4 + 0.85
    for x, text, ha in (
        (math.log2(fp16.min_subnormal), "fp16 min subnormal\n$2^{-24}$ ≈ 6.0e-8 ", "right"),
        (math.log2(fp16.max), " fp16 max\n 65504 ≈ $2^{16}$", "left"),
    ):
        ax.axvline(x, color=COLORS["float16"], ls=":", lw=1.2, zorder=0)
        ax.text(x, top_y, text, ha=ha, va="top", fontsize=9, color=COLORS["float16"])
    ax.legend(
        handles=[
            Patch(facecolor="0.5", alpha=0.3, edgecolor="0.5", label="subnormal"),
            Patch(facecolor="0.5", edgecolor="black", lw=0.6, label="normal"),
            Patch(facecolor="white", edgecolor="0.4", hatch="////", label="overflow"),
        ],
        loc="lower left",
        fontsize=9,
        title="range",
        title_fontsize=9,
    )
    ax.set_title(
        title
        or "Representable magnitudes: fp16 and fp8 span a few decades, bf16 keeps fp32's range",
        fontsize=11,
    )
    return fig
