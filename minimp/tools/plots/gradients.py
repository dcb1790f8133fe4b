"""Gradients against what float16 holds: the paper's Figure 3 and underflow per layer
(lessons 2 and 6)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter
from matplotlib.transforms import blended_transform_factory

from minimp.formats import Format, count_categories, get_format
from minimp.tools.plots.palette import (
    COLORS,
    FALLBACK,
    WIDE,
    as_percent,
    as_pow2,
    color_of,
    short_name,
)


def underflow_histogram(
    values: np.ndarray,
    fmt: Format | str = "float16",
    scales: Sequence[float] = (1.0,),
    title: str | None = None,
    scale_window: tuple[float, float] | None = None,
    settled_scale: float | None = None,
    *,
    window_share: float | None = None,
    figsize: tuple[float, float] = (8.0, 5.5),
) -> Figure:
    """Histogram of log2 |v| of the nonzero ``values``, once per loss scale S (v x S),
    over the range of ``fmt``: the paper's Figure 3 (Micikevicius et al. 2018, sec. 3.2).

    The format's range is shaded (subnormals light, normals darker), with lines at
    its smallest subnormal, smallest normal and largest value (2^-24, 2^-14 and
    65504 for fp16). Only what lies left of *half* the smallest subnormal (2^-25 for
    fp16, a dotted line) is flushed to zero by the cast: values in [2^-25, 2^-24)
    round up to 2^-24 (2^-25 itself is a tie and goes to even, 0). Multiplying the
    loss by S shifts every gradient by log2 S to the right,
    into the range, at no cost until the right tail passes max and overflows. The
    legend says, for each S, the share of nonzero values flushed to zero and the
    share that overflows, counted by ``formats.count_categories(values * S, fmt)``.

    ``scale_window=(low, high)``: the loss scales that keep a given share
    (``window_share``, e.g. 0.99) of the values representable, drawn as a bracket:
    where the median |v x S| can be moved to. ``settled_scale``: where a dynamic
    scaler settled, marked on the same bracket.
    """
    fmt = get_format(fmt)
    values = np.asarray(values)
    flat = values.ravel()
    nonzero_finite = np.abs(flat[np.isfinite(flat) & (flat != 0)]).astype(np.float64)
    logs = np.log2(nonzero_finite)
    shifts = [math.log2(s) for s in scales]
    sub, norm, top = (math.log2(v) for v in (fmt.min_subnormal, fmt.min_normal, fmt.max))

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    c = color_of(fmt.name)
    ax.axvspan(sub, norm, color=c, alpha=0.08, lw=0)
    ax.axvspan(norm, top, color=c, alpha=0.18, lw=0)
    for x in (sub, norm, top):
        ax.axvline(x, color=c, lw=1, ls="--")
    flush = sub - 1  # log2 of half the smallest subnormal: round-to-nearest's 0 boundary
    ax.axvline(flush, color=c, lw=1, ls=":")

    lo = math.floor(min([sub - 6, *(logs.min() + s for s in shifts)] if logs.size else [sub - 6]))
    hi = math.ceil(max([top + 8, *(logs.max() + s for s in shifts)] if logs.size else [top + 8]))
    edges = np.arange(lo, hi + 1, 1.0)
    peak = 0.0
    handles = []
    for i, (s, shift) in enumerate(zip(scales, shifts, strict=True)):
        color = ("#000000", *FALLBACK)[i % (len(FALLBACK) + 1)]
        with np.errstate(over="ignore"):
            counts = count_categories(values * s, fmt)
        nonzero = max(values.size - counts["zero"], 1)
        flushed = counts["flushed_to_zero"] / nonzero
        overflow = counts["overflow"] / nonzero
        if logs.size:
            share, _ = np.histogram(logs + shift, edges)
            share = share / logs.size
            peak = max(peak, share.max())
            ax.stairs(share, edges, color=color, lw=1.8, fill=False)
        label = (
            f"S = {as_pow2(s)}: {as_percent(flushed)} flushed to zero, "
            f"{as_percent(overflow)} overflow"
        )
        handles.append(Line2D([], [], color=color, lw=1.8, label=label))

    ax.set_yscale("log")
    floor = 0.5 / max(logs.size, 1)
    ax.set_ylim(floor, max(peak, floor) * 30)
    ax.set_xlim(lo, hi)
    # Region names along the top, where the histogram leaves room (one decade of headroom).
    top_of = blended_transform_factory(ax.transData, ax.transAxes)
    for start, end, name in (
        (lo, flush, "flushed\nto zero"),
        (sub, norm, "sub-\nnormal"),
        (norm, top, "normal"),
        (top, hi, "over-\nflow"),
    ):
        if end - start >= 0.06 * (hi - lo):  # else the top tick labels say it alone
            ax.text(
                (start + end) / 2, 0.97, name, transform=top_of, ha="center", va="top",
                fontsize=9, color="0.25",
            )  # fmt: skip
    # The three limits as tick labels on top, clear of the data.
    limits = ax.secondary_xaxis("top")
    limits.set_ticks(
        [sub, norm, top],
        [
            f"{as_pow2(fmt.min_subnormal)}\nmin subnormal",
            f"{as_pow2(fmt.min_normal)}\nmin normal",
            f"{fmt.max:g}\nmax",
        ],
        fontsize=8.5,
    )
    limits.tick_params(colors=c)
    # Subnormals may span only a few binades: the two labels lean away from each other.
    for label, ha in zip(limits.get_xticklabels(), ("right", "left", "center"), strict=True):
        label.set_horizontalalignment(ha)

    med = float(np.median(logs)) if logs.size else 0.0
    bracket_y = 0.8
    if scale_window is not None:
        a, b = (math.log2(s) for s in scale_window)
        ax.annotate(
            "",
            xy=(med + a, bracket_y),
            xytext=(med + b, bracket_y),
            xycoords=top_of,
            arrowprops={"arrowstyle": "|-|", "color": "0.2", "lw": 1.4, "shrinkA": 0, "shrinkB": 0},
        )
        share_text = f" keep ≥{100 * window_share:g}% representable" if window_share else ""
        ax.text(
            med + (a + b) / 2,
            bracket_y + 0.03,
            "median |v·S| for usable S",
            transform=top_of,
            ha="center",
            va="bottom",
            fontsize=8.5,
            color="0.2",
        )
        handles.append(
            Line2D(
                [],
                [],
                color="0.2",
                marker="|",
                markersize=10,
                lw=1.4,
                label=f"scales {as_pow2(scale_window[0])} … {as_pow2(scale_window[1])}{share_text}",
            )
        )
    if settled_scale is not None:
        ax.plot(
            [med + math.log2(settled_scale)],
            [bracket_y],
            marker="v",
            markersize=9,
            color=COLORS["dynamic"],
            transform=top_of,
            ls="none",
        )
        handles.append(
            Line2D(
                [],
                [],
                marker="v",
                markersize=9,
                color=COLORS["dynamic"],
                ls="none",
                label=f"dynamic scaler settled at S = {as_pow2(settled_scale)} (median |v·S|)",
            )
        )
    ax.set_xlabel("log2 |value × S|   (bins one binade wide)")
    ax.set_ylabel("fraction of nonzero values (log scale)")
    ax.set_title(
        title
        or f"Gradient magnitudes vs the {short_name(fmt)} range: scaling by S shifts them right",
        fontsize=11,
    )
    fig.legend(handles=handles, loc="outside lower center", fontsize=9, frameon=False)
    return fig


def layer_labels(layers: Sequence[str]) -> dict[str, str]:
    """``layers.0, layers.2, layers.4`` -> ``layer 1 (input), layer 2, layer 3 (output)``."""

    def index(name: str) -> tuple[int, str]:
        m = re.search(r"(\d+)$", name)
        return (int(m.group(1)) if m else 10**9, name)

    ordered = sorted(layers, key=index)
    labels = {}
    for i, name in enumerate(ordered):
        role = " (input)" if i == 0 else " (output)" if i == len(ordered) - 1 else ""
        labels[name] = f"layer {i + 1}{role}" if re.search(r"\d+$", name) else name
    return dict(sorted(labels.items(), key=lambda kv: index(kv[0])))


def layer_underflow(
    records: list[dict],
    title: str | None = None,
    *,
    fmt: Format | str = "float16",
    figsize: tuple[float, float] = WIDE,
) -> Figure:
    """Share of nonzero gradients a cast to ``fmt`` flushes to zero, per layer, over
    training: activation gradients (left) and weight gradients (right).

    ``records`` as ``minimp.inspect.GradientRecorder.records``. Gradients shrink as
    the loss falls, so the flushed share grows during training, and it differs by
    layer: this is the measurement behind loss scaling (Micikevicius et al. 2018,
    sec. 3.2, Figure 3), resolved by layer and step.
    """
    fmt = get_format(fmt)
    labels = layer_labels(list(dict.fromkeys(r["layer"] for r in records)))
    kinds = [k for k in ("activation", "weight") if any(r["kind"] == k for r in records)]
    kinds += sorted({r["kind"] for r in records} - set(kinds))
    kinds = kinds or ["activation", "weight"]
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
    markers = "osD^vP"
    for ax, kind in zip(axes, kinds, strict=True):
        for i, (layer, label) in enumerate(labels.items()):
            rows = sorted(
                (r["step"], r["flushed_of_nonzero"])
                for r in records
                if r["kind"] == kind and r["layer"] == layer
            )
            if rows:
                steps, flushed = zip(*rows, strict=True)
                ax.plot(
                    steps,
                    flushed,
                    color=FALLBACK[i % len(FALLBACK)],
                    marker=markers[i % len(markers)],
                    markersize=4,
                    lw=1.6,
                    label=label,
                )
        ax.set_title(
            {"activation": "activation gradients (dL/d output)", "weight": "weight gradients"}.get(
                kind, f"{kind} gradients"
            ),
            fontsize=10,
        )
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"nonzero gradients flushed to zero in {short_name(fmt)}")
    axes[0].yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0].set_ylim(bottom=0)
    if records:
        fig.legend(
            handles=axes[0].get_legend_handles_labels()[0]
            or axes[-1].get_legend_handles_labels()[0],
            loc="outside lower center",
            ncols=min(len(labels), 5),
            fontsize=9,
            frameon=False,
        )
    fig.suptitle(
        title
        or f"Gradient underflow per layer: share of nonzero gradients that {short_name(fmt)} "
        "rounds to 0",
        fontsize=11,
    )
    return fig
