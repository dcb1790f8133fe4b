"""Every figure: measured data in, a matplotlib ``Figure`` out.

The functions take plain data (dicts and arrays, as ``minimp.train``,
``minimp.inspect`` and ``GradScaler.history_arrays()`` produce them), so this
module knows nothing of training, and save nothing: the caller does
``fig.savefig(path)``. Figures are built on ``matplotlib.figure.Figure``
directly, never through pyplot, so no display and no global state are involved.

One colour per precision regime and format, the same in every figure
(:data:`COLORS`, from the colour-blind-safe Okabe-Ito palette), plus one line
style per regime (:data:`LINESTYLES`) so the regimes stay apart in grey scale.
Sizes are for the README: about 8 inches wide at 100-150 dpi.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    NullFormatter,
    PercentFormatter,
)
from matplotlib.transforms import blended_transform_factory

from minimp.formats import Format, count_categories, get_format

__all__ = [
    "CATEGORY_COLORS",
    "CATEGORY_ORDER",
    "COLORS",
    "FP8_ROLE_FORMATS",
    "LINESTYLES",
    "OKABE_ITO",
    "PURE16_STYLES",
    "fp8_scaling",
    "layer_underflow",
    "loss_scale_trace",
    "master_weights",
    "memory_bars",
    "number_line",
    "one_weight_rounding",
    "pure16",
    "regimes_compared",
    "underflow_histogram",
]

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}
"""Okabe & Ito (2008), "Color universal design": eight colours told apart with any
common form of colour blindness."""

_O = OKABE_ITO
COLORS: dict[str, str] = {
    # the regimes of minimp.train
    "fp32": _O["black"],
    "fp16": _O["vermillion"],
    "mixed-noscale": _O["orange"],
    "mixed-static": _O["sky blue"],
    "mixed-dynamic": _O["blue"],
    "bf16": _O["bluish green"],
    "fp8": _O["reddish purple"],  # fp8's colour: the format its forward pass uses
    "fp8-unscaled": _O["yellow"],
    # Okabe-Ito has eight colours and minimp twelve regimes: the rest from Paul Tol's
    # colour-blind-safe "muted" scheme, the pure-bfloat16 family in greens beside bf16
    "amp": "#332288",  # indigo: AMP computes what mixed-dynamic (blue) computes
    "bf16-pure": "#117733",
    "bf16-sr": "#44AA99",
    "bf16-kahan": "#999933",
    # the formats of minimp.formats: a format has its regime's colour
    "float32": _O["black"],
    "float16": _O["vermillion"],
    "bfloat16": _O["bluish green"],
    "float8_e4m3fn": _O["reddish purple"],
    "float8_e5m2": _O["yellow"],
    # short names a caller may use for scaler runs and weights
    "static": _O["sky blue"],
    "dynamic": _O["blue"],
    "master": _O["black"],
    "skipped": _O["vermillion"],
}
"""One colour per precision regime and per format, in every figure."""

LINESTYLES: dict[str, Any] = {
    "fp32": "-",
    "fp16": (0, (5, 2)),
    "mixed-noscale": "-.",
    "mixed-static": (0, (1, 1.5)),
    "mixed-dynamic": "-",
    "bf16": (0, (7, 2, 1.5, 2, 1.5, 2)),
    "fp8": "-",
    "fp8-unscaled": (0, (5, 2)),
    "static": (0, (1, 1.5)),
    "dynamic": "-",
}
"""One line style per regime, so a regime is named by style as well as colour."""

# Memory categories are not regimes: a sequential colour map, so none of them
# borrows a regime's colour (viridis is colour-blind safe and prints in grey).
CATEGORY_ORDER = ("parameters", "master weights", "gradients", "optimizer state", "activations")
CATEGORY_COLORS: dict[str, str] = {
    name: "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colormaps["viridis"](t)[:3]))
    for name, t in zip(CATEGORY_ORDER, (0.05, 0.3, 0.55, 0.78, 0.97), strict=True)
}
"""One colour per memory category of :func:`memory_bars`."""

_SHORT_NAMES = {
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "fp8 e4m3fn",
    "float8_e5m2": "fp8 e5m2",
}
_FALLBACK = [_O[k] for k in ("blue", "orange", "bluish green", "reddish purple", "sky blue")]
_WIDE = (8.0, 4.5)


def _color(name: str, index: int = 0) -> str:
    return COLORS.get(name, _FALLBACK[index % len(_FALLBACK)])


def _short(fmt: Format) -> str:
    return _SHORT_NAMES.get(fmt.name, fmt.name)


def _pow2(x: float) -> str:
    """``x`` as mathtext ``2^k`` when it is a power of two, else in %g notation."""
    if x > 0:
        k = math.log2(x)
        if k == round(k):
            return f"$2^{{{round(k)}}}$"
    return f"{x:g}"


def _percent(x: float) -> str:
    """A fraction as a percentage readable at any size: 0%, 0.0031%, 12.3%."""
    if x == 0:
        return "0%"
    if x < 0.001:
        return f"{100 * x:.2g}%"
    return f"{x:.1%}"


def _moving_average(y: Any, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values, ignoring NaN/inf (a skipped or diverged step);
    NaN where the window holds no finite value. The first values average what exists."""
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    total = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    count = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, len(y) + 1)
    lo = np.maximum(hi - max(int(window), 1), 0)
    n = count[hi] - count[lo]
    out = np.full(len(y), np.nan)
    np.divide(total[hi] - total[lo], n, out=out, where=n > 0)
    return out


def _seed_stats(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over axis 0 of the finite values (NaN where there are none)."""
    ok = np.isfinite(stack)
    n = ok.sum(axis=0)
    mean = np.full(stack.shape[1], np.nan)
    np.divide(np.where(ok, stack, 0.0).sum(axis=0), n, out=mean, where=n > 0)
    low = np.where(ok, stack, np.inf).min(axis=0)
    high = np.where(ok, stack, -np.inf).max(axis=0)
    low[n == 0] = high[n == 0] = np.nan
    return mean, low, high


def _log2_axis(axis: Any) -> None:
    """A log2 axis with ticks at powers of two written as 2^k."""
    axis.set_major_locator(LogLocator(base=2))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _pow2(v) if v > 0 else ""))
    axis.set_minor_formatter(NullFormatter())


# ---- 1. the formats on one axis ------------------------------------------------------


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
        c = _color(fmt.name, row)
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
            f"{_short(f)}\n{f.exponent_bits} exp, {f.mantissa_bits} frac bits"
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


# ---- 2. the paper's Figure 3 ----------------------------------------------------------


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
    65504 for fp16). Whatever lies left of the subnormals is flushed to zero by the
    cast; multiplying the loss by S shifts every gradient by log2 S to the right,
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
    c = _color(fmt.name)
    ax.axvspan(sub, norm, color=c, alpha=0.08, lw=0)
    ax.axvspan(norm, top, color=c, alpha=0.18, lw=0)
    for x in (sub, norm, top):
        ax.axvline(x, color=c, lw=1, ls="--")

    lo = math.floor(min([sub - 6, *(logs.min() + s for s in shifts)] if logs.size else [sub - 6]))
    hi = math.ceil(max([top + 8, *(logs.max() + s for s in shifts)] if logs.size else [top + 8]))
    edges = np.arange(lo, hi + 1, 1.0)
    peak = 0.0
    handles = []
    for i, (s, shift) in enumerate(zip(scales, shifts, strict=True)):
        color = ("#000000", *_FALLBACK)[i % (len(_FALLBACK) + 1)]
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
            f"S = {_pow2(s)}: {_percent(flushed)} flushed to zero, {_percent(overflow)} overflow"
        )
        handles.append(Line2D([], [], color=color, lw=1.8, label=label))

    ax.set_yscale("log")
    floor = 0.5 / max(logs.size, 1)
    ax.set_ylim(floor, max(peak, floor) * 30)
    ax.set_xlim(lo, hi)
    # Region names along the top, where the histogram leaves room (one decade of headroom).
    top_of = blended_transform_factory(ax.transData, ax.transAxes)
    for start, end, name in (
        (lo, sub, "flushed\nto zero"),
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
            f"{_pow2(fmt.min_subnormal)}\nmin subnormal",
            f"{_pow2(fmt.min_normal)}\nmin normal",
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
                label=f"scales {_pow2(scale_window[0])} … {_pow2(scale_window[1])}{share_text}",
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
                label=f"dynamic scaler settled at S = {_pow2(settled_scale)} (median |v·S|)",
            )
        )
    ax.set_xlabel("log2 |value × S|   (bins one binade wide)")
    ax.set_ylabel("fraction of nonzero values (log scale)")
    ax.set_title(
        title or f"Gradient magnitudes vs the {_short(fmt)} range: scaling by S shifts them right",
        fontsize=11,
    )
    fig.legend(handles=handles, loc="outside lower center", fontsize=9, frameon=False)
    return fig


# ---- 3. underflow per layer over training ----------------------------------------------


def _layer_labels(layers: Sequence[str]) -> dict[str, str]:
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
    figsize: tuple[float, float] = _WIDE,
) -> Figure:
    """Share of nonzero gradients a cast to ``fmt`` flushes to zero, per layer, over
    training: activation gradients (left) and weight gradients (right).

    ``records`` as ``minimp.inspect.GradientRecorder.records``. Gradients shrink as
    the loss falls, so the flushed share grows during training, and it differs by
    layer: this is the measurement behind loss scaling (Micikevicius et al. 2018,
    sec. 3.2, Figure 3), resolved by layer and step.
    """
    fmt = get_format(fmt)
    labels = _layer_labels(list(dict.fromkeys(r["layer"] for r in records)))
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
                    color=_FALLBACK[i % len(_FALLBACK)],
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
    axes[0].set_ylabel(f"nonzero gradients flushed to zero in {_short(fmt)}")
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
        or f"Gradient underflow per layer: share of nonzero gradients that {_short(fmt)} "
        "rounds to 0",
        fontsize=11,
    )
    return fig


# ---- 4. the loss scale over training ----------------------------------------------------


def loss_scale_trace(
    history: Mapping[str, Any],
    title: str | None = None,
    *,
    figsize: tuple[float, float] = _WIDE,
) -> Figure:
    """The loss scale S at each step, on a log2 axis, with the skipped steps marked.

    ``history`` is ``GradScaler.history_arrays()`` ("step", "scale", "found_inf",
    "skipped"), or ``{run name: such a dict}`` for several runs on one axis. A
    dynamic scaler halves S when a gradient overflows (that step is skipped: x at
    the scale it used) and doubles it after a run of clean steps, so S hugs the
    largest value that does not overflow (Micikevicius et al. 2018, sec. 3.2).
    """
    runs = (
        dict(history)
        if history and all(isinstance(v, Mapping) for v in history.values())
        else {"": history}
    )
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.set_yscale("log", base=2)
    drawn, any_skipped = [], False
    for i, (name, h) in enumerate(runs.items()):
        step = np.asarray(h.get("step", []))
        scale = np.asarray(h.get("scale", []), dtype=np.float64)
        skipped = np.asarray(h.get("skipped", np.zeros(len(step), bool)), dtype=bool)
        if not len(step):
            continue
        n_skipped = int(skipped.sum())
        ax.step(
            step,
            scale,
            where="post",
            color=_color(name, i) if name else COLORS["dynamic"],
            lw=2.0,
            ls=LINESTYLES.get(name, "-"),
            label=f"{name + ': ' if name else ''}scale S "
            f"({n_skipped} skipped step{'' if n_skipped == 1 else 's'})",
        )
        drawn.append(scale)
        if n_skipped:
            any_skipped = True
            ax.plot(step[skipped], scale[skipped], "x", color=COLORS["skipped"], ms=7, mew=1.6)
    if drawn:
        all_scales = np.concatenate(drawn)
        ax.set_ylim(all_scales.min() / 2, all_scales.max() * 2)
        _log2_axis(ax.yaxis)
        handles, _ = ax.get_legend_handles_labels()
        if any_skipped:
            label = "skipped step (inf/NaN gradient), at the scale it used"
            handles.append(
                Line2D([], [], marker="x", color=COLORS["skipped"], ls="none", mew=1.6, label=label)
            )
        ax.legend(handles=handles, loc="best", fontsize=9)
    else:
        message = "no scale history (loss scaling disabled)"
        ax.text(0.5, 0.5, message, ha="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss scale S (log2 axis)")
    ax.grid(alpha=0.3, which="major")
    ax.set_title(
        title or "Loss scale over training: halved on each overflow (×), grown after clean steps",
        fontsize=11,
    )
    return fig


# ---- 5. master weights --------------------------------------------------------------


def master_weights(
    trace: Mapping[str, Any],
    lost: Mapping[str, Any] | None = None,
    *,
    smooth: int = 50,
    zoom: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Why the weights are kept in fp32 (Micikevicius et al. 2018, sec. 3.1).

    Left: one weight fed many small updates. The float16 weight updated in float16
    stalls flat: each update is below half its ulp (|u/w| < 2^-11) and rounds away.
    The float32 master follows the exact (float64) line, and the float16 copy taken
    from it moves in float16-sized stairs, lagging by less than one ulp (shown in an
    inset of the first steps with ``zoom``).

    Right (with ``lost``): the share of weight updates rounded away at each step of
    a real run, one line per regime, smoothed by a ``smooth``-step trailing moving
    average (skipped steps, NaN, left out). ``lost`` maps regime -> array, with an
    optional "step" array (else the index).
    """
    panels = 2 if lost else 1
    fig = Figure(figsize=figsize or ((8.0, 4.2) if panels == 2 else _WIDE), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    step = np.asarray(trace["step"])
    lines = (
        ("exact", "exact (float64)", {"color": "0.7", "lw": 5, "solid_capstyle": "butt"}),
        ("master", "float32 master", {"color": COLORS["master"], "lw": 1.4}),
        (
            "float16_copy",
            "float16 copy of master",
            {"color": COLORS["mixed-noscale"], "lw": 1.6, "ls": "--", "drawstyle": "steps-post"},
        ),
        ("float16", "float16 weight, fp16 updates", {"color": COLORS["fp16"], "lw": 2.2}),
    )
    for key, label, style in lines:
        if key in trace:
            ax.plot(step, np.asarray(trace[key], dtype=np.float64), label=label, **style)
    ax.set_xlabel("update step")
    ax.set_ylabel("weight value")
    ax.set_title("One weight, many small updates", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8.5)
    if zoom and "float16_copy" in trace and len(step) > 40:
        # The copy's stairs are one float16 ulp high: invisible at full scale.
        changes = np.flatnonzero(np.diff(np.asarray(trace["float16_copy"], np.float64)))
        end = int(changes[3] * 1.3) + 2 if len(changes) > 3 else len(step) // 20
        inset = ax.inset_axes((0.55, 0.1, 0.42, 0.36))
        for key, _, style in lines:
            if key in trace:
                inset.plot(step[:end], np.asarray(trace[key], np.float64)[:end], **style)
        inset.set_title(f"first {end} steps", fontsize=8, pad=2)
        inset.tick_params(labelsize=7)
        inset.ticklabel_format(axis="y", useOffset=False)
        ax.indicate_inset_zoom(inset, edgecolor="0.4")

    if lost:
        ax = axes[1]
        for i, (name, values) in enumerate((k, v) for k, v in lost.items() if k != "step"):
            values = np.asarray(values, dtype=np.float64)
            x = np.asarray(lost["step"]) if "step" in lost else np.arange(len(values))
            ax.plot(
                x,
                _moving_average(values, smooth),
                color=_color(name, i),
                ls=LINESTYLES.get(name, "-"),
                lw=2.2 if name == "fp32" else 1.6,
                label=name,
            )
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("training step")
        ax.set_ylabel(f"updates lost ({smooth}-step moving average)")
        ax.set_title("Weight updates rounded away, per regime", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8.5)
    fig.suptitle(
        title or "FP32 master weights keep the updates a float16 weight rounds away", fontsize=11
    )
    return fig


# ---- 6. the regimes side by side ------------------------------------------------------


def regimes_compared(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    smooth: int = 50,
    title: str | None = None,
    figsize: tuple[float, float] = _WIDE,
) -> Figure:
    """Training loss (left, log scale) and test accuracy (right) of each regime.

    ``histories[regime]`` holds one history per seed ("step", "loss", "eval_step",
    "test_accuracy"). Lines are the mean over seeds, bands the min-max over
    seeds; the loss is first smoothed per seed by a ``smooth``-step trailing moving
    average. fp32 (thick black) is the reference the mixed regimes must match
    (Micikevicius et al. 2018, sec. 4). A seed whose loss became NaN/inf is left
    out from there on, and the legend says how many seeds did.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    n_seeds = max((len(runs) for runs in histories.values()), default=0)
    for i, (name, runs) in enumerate(histories.items()):
        if not runs:
            continue
        style = {
            "color": _color(name, i),
            "ls": LINESTYLES.get(name, "-"),
            "lw": 2.6 if name == "fp32" else 1.6,
            "zorder": 2 if name == "fp32" else 3,
        }
        n = min(len(r["loss"]) for r in runs)
        stack = np.array([_moving_average(np.asarray(r["loss"][:n], float), smooth) for r in runs])
        stack[stack <= 0] = np.nan
        mean, low, high = _seed_stats(stack)
        step = np.asarray(runs[0]["step"][:n])
        broken = sum(not np.all(np.isfinite(np.asarray(r["loss"], float))) for r in runs)
        label = name + (f" (NaN/inf loss in {broken} of {len(runs)} seeds)" if broken else "")
        ax_loss.plot(step, mean, label=label, **style)
        ax_loss.fill_between(step, low, high, color=style["color"], alpha=0.15, lw=0)

        m = min(len(r["test_accuracy"]) for r in runs)
        acc = np.array([np.asarray(r["test_accuracy"][:m], float) for r in runs])
        mean, low, high = _seed_stats(acc)
        eval_step = np.asarray(runs[0]["eval_step"][:m])
        ax_acc.plot(eval_step, mean, **style)
        ax_acc.fill_between(eval_step, low, high, color=style["color"], alpha=0.15, lw=0)
    ax_loss.set_yscale("log")
    if not any(np.isfinite(line.get_ydata()).any() for line in ax_loss.lines):
        ax_loss.set_ylim(1e-2, 1e1)  # every run diverged: keep the log axis drawable
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("training loss (cross-entropy, log scale)")
    ax_loss.set_title(f"Training loss, {smooth}-step moving average", fontsize=10)
    ax_acc.set_xlabel("training step")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    ax_acc.set_title("Test accuracy", fontsize=10)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3, which="major")
    fig.legend(
        loc="outside lower center",
        ncols=min(max(len(histories), 1), 3),
        fontsize=9,
        frameon=False,
    )
    seeds = f"mean of {n_seeds} seeds, band = min–max" if n_seeds > 1 else "one seed"
    fig.suptitle(
        title or f"Precision regimes on the same task ({seeds}); fp32 is the reference",
        fontsize=11,
    )
    return fig


# ---- 7. memory -------------------------------------------------------------------------


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
    figsize: tuple[float, float] = _WIDE,
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
            color=CATEGORY_COLORS.get(category, _FALLBACK[i % len(_FALLBACK)]),
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


# ---- lesson 7: fp8 per-tensor scaling ---------------------------------------------------

FP8_ROLE_FORMATS: dict[str, str] = {
    "input": "float8_e4m3fn",
    "weight": "float8_e4m3fn",
    "grad": "float8_e5m2",
}
"""The fp8 format of each tensor role of an fp8 matmul (Transformer Engine's HYBRID recipe)."""

_FP8_ROLE_TITLES = {
    "input": "inputs x",
    "weight": "weights W",
    "grad": "output gradients dL/dy",
}


def fp8_scaling(
    scaled: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    unscaled: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]] | None = None,
    *,
    smooth: int = 20,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 6.4),
) -> Figure:
    """Per-tensor fp8 scaling over training: the scale follows each tensor's amax.

    ``scaled[layer][role]`` (role "input", "weight" or "grad", cast to the format
    of :data:`FP8_ROLE_FORMATS`) holds, per step, "step", "scale" (the scale that
    step's cast used), "amax" (the tensor's max |x|) and "underflow" (share of its
    nonzero values that became 0), as ``minimp.fp8.TensorScaling`` reports them.
    Top row, from ``scaled``: each tensor's amax (solid) and the largest magnitude
    its scale lets fp8 hold, fmt.max / scale (dashed): delayed scaling keeps the
    second just above the first, one step late (Micikevicius et al. 2022). The grey
    lines are what fp8 holds with no scale: fmt.max and the smallest subnormal.
    Bottom row: the share flushed to zero, ``smooth``-step moving average, with the
    scale (solid) and, from ``unscaled``, with every scale 1 (dotted).
    """
    roles = list(FP8_ROLE_FORMATS)
    # "(input)"/"(output)" would read as tensor roles here: name the layers by position
    labels = {
        k: v.replace("(input)", "(first)").replace("(output)", "(last)")
        for k, v in _layer_labels(list(scaled)).items()
    }
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(2, len(roles), sharex=True, squeeze=False)
    for col, role in enumerate(roles):
        fmt = get_format(FP8_ROLE_FORMATS[role])
        top, bottom = axes[0][col], axes[1][col]
        top.set_yscale("log", base=2)
        for i, layer in enumerate(labels):
            color = _FALLBACK[i % len(_FALLBACK)]
            t = scaled[layer][role]
            step = np.asarray(t["step"])
            amax = np.asarray(t["amax"], dtype=np.float64)
            ceiling = fmt.max / np.asarray(t["scale"], dtype=np.float64)
            shown = amax > 0
            top.plot(step[shown], amax[shown], color=color, lw=1.4)
            top.step(step, ceiling, where="post", color=color, lw=1.1, ls=(0, (4, 2)))
            bottom.plot(step, _moving_average(t["underflow"], smooth), color=color, lw=1.6)
            if unscaled is not None and layer in unscaled:
                u = unscaled[layer][role]
                bottom.plot(
                    np.asarray(u["step"]),
                    _moving_average(u["underflow"], smooth),
                    color=color,
                    lw=1.3,
                    ls=(0, (1.5, 1.5)),
                )
        on_axis = blended_transform_factory(top.transAxes, top.transData)
        for value, text, va in (
            (fmt.max, f"{_short(fmt)} max", "top"),
            (fmt.min_subnormal, "min subnormal", "bottom"),
        ):
            top.axhline(value, color="0.55", lw=1.0, ls=":", zorder=0)
            top.text(
                0.98, value, text, color="0.4", fontsize=8, ha="right", va=va, transform=on_axis
            )
        _log2_axis(top.yaxis)
        top.set_title(f"{_FP8_ROLE_TITLES[role]} ({_short(fmt)})", fontsize=10)
        bottom.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        bottom.set_ylim(-0.03, 1.03)
        bottom.set_xlabel("training step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="major")
    axes[0][0].set_ylabel("magnitude (log2 axis)")
    axes[1][0].set_ylabel(f"nonzero values flushed to 0\n({smooth}-step mean)")
    handles = [
        Line2D([], [], color=_FALLBACK[i % len(_FALLBACK)], lw=2, label=label)
        for i, label in enumerate(labels.values())
    ]
    handles += [
        Line2D([], [], color="0.3", lw=1.4, label="amax = max |x| (top)"),
        Line2D([], [], color="0.3", lw=1.1, ls=(0, (4, 2)), label="fmt.max / scale (top)"),
        Line2D([], [], color="0.3", lw=1.6, label="flushed, with the scale (bottom)"),
    ]
    if unscaled is not None:
        handles.append(
            Line2D([], [], color="0.3", lw=1.3, ls=(0, (1.5, 1.5)), label="flushed, scale 1")
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8.5, frameon=False)
    fig.suptitle(
        title or "fp8 with one delayed scale per tensor: the scale follows each tensor's amax",
        fontsize=11,
    )
    return fig


# ---- lesson 8: pure 16-bit training without master weights ---------------------------

PURE16_STYLES: dict[str, tuple[str, Any]] = {
    "fp32": (_O["black"], "-"),
    "bf16": (_O["bluish green"], (0, (7, 2, 1.5, 2, 1.5, 2))),
    "bf16-pure": (_O["vermillion"], (0, (5, 2))),
    "bf16-sr": (_O["orange"], "-."),
    "bf16-kahan": (_O["blue"], (0, (1, 1.5))),
}
"""Colour and line style of the runs and rounding rules of :func:`one_weight_rounding`
and :func:`pure16`: nearest in fp16's vermillion (it fails the same way)."""

_ROUNDING_REGIME = {
    "float32": "fp32",
    "nearest": "bf16-pure",
    "stochastic": "bf16-sr",
    "kahan": "bf16-kahan",
}


def one_weight_rounding(
    trace: Mapping[str, Any],
    ulp: float,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (8.0, 4.2),
) -> Figure:
    """One 16-bit weight fed many updates below half its ulp, stored three ways
    (Gupta et al. 2015; Zamirai et al. 2020).

    ``trace`` holds arrays over ``"step"``: ``"float32"`` (the reference),
    ``"nearest"``, ``"kahan"``, ``"stochastic"`` (steps x k: a few stochastically
    rounded weights), and ``"stochastic_mean"`` / ``"stochastic_std"`` over many
    of them. Left: the values. Right: each one's distance from float32 in units
    of ``ulp``, with the band of one standard deviation of the stochastic weights.
    Nearest never moves; a stochastic weight jumps a whole ulp now and then and is
    right on average; Kahan stays within about an ulp.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax_value, ax_error = fig.subplots(1, 2)
    step = np.asarray(trace["step"])
    reference = np.asarray(trace["float32"], np.float64)
    color = {k: PURE16_STYLES[v][0] for k, v in _ROUNDING_REGIME.items()}
    samples = np.asarray(trace["stochastic"], np.float64).reshape(len(step), -1)
    mean = np.asarray(trace["stochastic_mean"], np.float64)
    std = np.asarray(trace["stochastic_std"], np.float64)
    lines = (
        ("float32", "float32 weight", reference, {"lw": 5, "color": "0.75"}),
        ("nearest", "bf16, nearest", trace["nearest"], {"lw": 2.2}),
        ("stochastic_mean", "bf16, stochastic: mean", mean, {"lw": 1.6, "ls": "--"}),
        ("kahan", "bf16, Kahan", trace["kahan"], {"lw": 1.4, "drawstyle": "steps-post"}),
    )
    for j in range(samples.shape[1]):
        ax_value.plot(
            step,
            samples[:, j],
            color=color["stochastic"],
            lw=0.8,
            alpha=0.45,
            drawstyle="steps-post",
            label="bf16, stochastic: single weights" if j == 0 else None,
        )
    for key, label, values, style in lines:
        style = {"color": color.get(key, color["stochastic"]), **style}
        values = np.asarray(values, np.float64)
        ax_value.plot(step, values, label=label, **style)
        ax_error.plot(step, (values - reference) / ulp, **style)
    ax_error.fill_between(
        step,
        (mean - std - reference) / ulp,
        (mean + std - reference) / ulp,
        color=color["stochastic"],
        alpha=0.2,
        lw=0,
        label="stochastic: ± 1 std. of single weights",
    )
    ax_value.set_xlabel("update step")
    ax_value.set_ylabel("weight value")
    ax_value.set_title("One weight, many updates below half an ulp", fontsize=10)
    ax_value.legend(loc="upper left", fontsize=8)
    ax_error.set_xlabel("update step")
    ax_error.set_ylabel(f"distance from float32 (bf16 ulps of {_pow2(ulp)})")
    ax_error.set_title("Distance from the float32 weight", fontsize=10)
    ax_error.legend(loc="lower left", fontsize=8)
    for ax in (ax_value, ax_error):
        ax.grid(alpha=0.3)
    fig.suptitle(
        title or "bfloat16 without a master: nearest stalls, stochastic and Kahan keep up",
        fontsize=11,
    )
    return fig


def pure16(
    histories: Mapping[str, Mapping[str, Any]],
    updates: Mapping[str, Mapping[str, float]],
    bytes_per_parameter: Mapping[str, Mapping[str, float]],
    *,
    smooth: int = 50,
    title: str | None = None,
    figsize: tuple[float, float] = (12.0, 4.3),
) -> Figure:
    """16-bit weights with no float32 master copy (Zamirai et al. 2020), one run per regime.

    Left: training loss (``histories[regime]`` with "step" and "loss"), smoothed by a
    ``smooth``-step trailing mean, log scale. Middle: late in training, per regime,
    the share of weights a step leaves unchanged (``updates[regime]["unchanged"]``)
    beside the share of the asked-for movement the weights actually made
    (``updates[regime]["delivered"]``): stochastic rounding and Kahan leave most
    weights unchanged at each step, like nearest, yet deliver the movement in full.
    Right: bytes per parameter by memory category (``bytes_per_parameter``).
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax_loss, ax_updates, ax_bytes = fig.subplots(1, 3, width_ratios=(1.25, 1, 1))
    for i, (name, h) in enumerate(histories.items()):
        color, ls = PURE16_STYLES.get(name, (_color(name, i), "-"))
        loss = _moving_average(np.asarray(h["loss"], np.float64), smooth)
        loss[loss <= 0] = np.nan
        ax_loss.plot(
            np.asarray(h["step"]), loss, color=color, ls=ls, lw=2.6 if name == "fp32" else 1.6,
            label=name,
        )  # fmt: skip
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("training loss (log scale)")
    ax_loss.set_title(f"Training loss, {smooth}-step moving average", fontsize=10)
    ax_loss.legend(loc="upper right", fontsize=8.5)

    names = list(updates)
    x = np.arange(len(names))
    unchanged = np.array([updates[n]["unchanged"] for n in names])
    delivered = np.array([updates[n]["delivered"] for n in names])
    colors = [PURE16_STYLES.get(n, (_color(n, i), "-"))[0] for i, n in enumerate(names)]
    ax_updates.bar(x - 0.2, unchanged, 0.38, color=colors, alpha=0.35, edgecolor=colors)
    ax_updates.bar(x + 0.2, delivered, 0.38, color=colors, edgecolor="white")
    for xi, u, d in zip(x, unchanged, delivered, strict=True):
        ax_updates.text(xi - 0.2, u, f"{u:.0%}", ha="center", va="bottom", fontsize=7.5)
        ax_updates.text(xi + 0.2, d, f"{d:.0%}", ha="center", va="bottom", fontsize=7.5)
    ax_updates.set_xticks(x, names, rotation=30, ha="right")
    ax_updates.set_ylim(0, 1.25)
    ax_updates.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax_updates.legend(
        handles=[
            Patch(facecolor="0.6", alpha=0.35, edgecolor="0.3", label="weights a step left as is"),
            Patch(facecolor="0.3", label="share of the asked-for movement made"),
        ],
        loc="upper left",
        fontsize=8,
    )
    ax_updates.set_title("Late in training: unchanged ≠ lost", fontsize=10)

    names = list(bytes_per_parameter)
    x = np.arange(len(names))
    categories = [c for c in CATEGORY_ORDER if any(c in bytes_per_parameter[n] for n in names)]
    bottom = np.zeros(len(names))
    for category in categories:
        heights = np.array([bytes_per_parameter[n].get(category, 0) for n in names], np.float64)
        ax_bytes.bar(
            x, heights, 0.6, bottom=bottom, label=category, color=CATEGORY_COLORS[category],
            edgecolor="white", lw=0.8,
        )  # fmt: skip
        bottom += heights
    for xi, total in zip(x, bottom, strict=True):
        ax_bytes.text(xi, total, f"{total:g} B", ha="center", va="bottom", fontsize=8.5)
    ax_bytes.set_xticks(x, names, rotation=30, ha="right")
    ax_bytes.set_ylim(0, bottom.max() * 1.35)
    ax_bytes.set_ylabel("bytes per parameter")
    ax_bytes.legend(loc="upper right", fontsize=7.5, ncols=2)
    ax_bytes.set_title("Memory per parameter (activations aside)", fontsize=10)
    for ax in (ax_loss, ax_updates, ax_bytes):
        ax.grid(alpha=0.3, axis="y" if ax is not ax_loss else "both")
        ax.set_axisbelow(True)
    fig.suptitle(
        title or "Pure bfloat16 training: the rounding of the weight update decides",
        fontsize=11,
    )
    return fig
