"""What happens to the weights: float32 masters against float16 weights (lesson 3)
and pure 16-bit training without masters (lesson 9)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from minimp.tools.plots.palette import (
    CATEGORY_COLORS,
    CATEGORY_ORDER,
    COLORS,
    LINESTYLES,
    OKABE_ITO,
    WIDE,
    as_pow2,
    color_of,
    moving_average,
)


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
    fig = Figure(figsize=figsize or ((8.0, 4.2) if panels == 2 else WIDE), layout="constrained")
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
                moving_average(values, smooth),
                color=color_of(name, i),
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


PURE16_STYLES: dict[str, tuple[str, Any]] = {
    "fp32": (OKABE_ITO["black"], "-"),
    "bf16": (OKABE_ITO["bluish green"], (0, (7, 2, 1.5, 2, 1.5, 2))),
    "bf16-pure": (OKABE_ITO["vermillion"], (0, (5, 2))),
    "bf16-sr": (OKABE_ITO["orange"], "-."),
    "bf16-kahan": (OKABE_ITO["blue"], (0, (1, 1.5))),
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
    ax_error.set_ylabel(f"distance from float32 (bf16 ulps of {as_pow2(ulp)})")
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
        color, ls = PURE16_STYLES.get(name, (color_of(name, i), "-"))
        loss = moving_average(np.asarray(h["loss"], np.float64), smooth)
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
    colors = [PURE16_STYLES.get(n, (color_of(n, i), "-"))[0] for i, n in enumerate(names)]
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
