"""Scales over training: the loss scale (lessons 4-5) and fp8's per-tensor scales
(lesson 8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter
from matplotlib.transforms import blended_transform_factory

from minimp.formats import get_format
from minimp.tools.plots.gradients import layer_labels
from minimp.tools.plots.palette import (
    COLORS,
    FALLBACK,
    LINESTYLES,
    WIDE,
    color_of,
    log2_axis,
    moving_average,
    short_name,
)


def loss_scale_trace(
    history: Mapping[str, Any],
    title: str | None = None,
    *,
    figsize: tuple[float, float] = WIDE,
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
            color=color_of(name, i) if name else COLORS["dynamic"],
            lw=2.5,
            ls=LINESTYLES.get(name, "-"),
            zorder=3,  # above the crosses, or a run that skips every step hides its line
            label=f"{name + ': ' if name else ''}scale S "
            f"({n_skipped} skipped step{'' if n_skipped == 1 else 's'})",
        )
        drawn.append(scale)
        if n_skipped:
            any_skipped = True
            ax.plot(
                step[skipped], scale[skipped], "x", color=COLORS["skipped"], mew=1.2, zorder=2,
                ms=3.5 if skipped.mean() > 0.5 else 6,  # small where they would hide the line
            )  # fmt: skip
    if drawn:
        all_scales = np.concatenate(drawn)
        ax.set_ylim(all_scales.min() / 2, all_scales.max() * 2)
        log2_axis(ax.yaxis)
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
        for k, v in layer_labels(list(scaled)).items()
    }
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(2, len(roles), sharex=True, squeeze=False)
    for col, role in enumerate(roles):
        fmt = get_format(FP8_ROLE_FORMATS[role])
        top, bottom = axes[0][col], axes[1][col]
        top.set_yscale("log", base=2)
        for i, layer in enumerate(labels):
            color = FALLBACK[i % len(FALLBACK)]
            t = scaled[layer][role]
            step = np.asarray(t["step"])
            amax = np.asarray(t["amax"], dtype=np.float64)
            ceiling = fmt.max / np.asarray(t["scale"], dtype=np.float64)
            shown = amax > 0
            top.plot(step[shown], amax[shown], color=color, lw=1.4)
            top.step(step, ceiling, where="post", color=color, lw=1.1, ls=(0, (4, 2)))
            bottom.plot(step, moving_average(t["underflow"], smooth), color=color, lw=1.6)
            if unscaled is not None and layer in unscaled:
                u = unscaled[layer][role]
                bottom.plot(
                    np.asarray(u["step"]),
                    moving_average(u["underflow"], smooth),
                    color=color,
                    lw=1.3,
                    ls=(0, (1.5, 1.5)),
                )
        on_axis = blended_transform_factory(top.transAxes, top.transData)
        for value, text, va in (
            (fmt.max, f"{short_name(fmt)} max", "top"),
            (fmt.min_subnormal, "min subnormal", "bottom"),
        ):
            top.axhline(value, color="0.55", lw=1.0, ls=":", zorder=0)
            top.text(
                0.98, value, text, color="0.4", fontsize=8, ha="right", va=va, transform=on_axis
            )
        log2_axis(top.yaxis)
        top.set_title(f"{_FP8_ROLE_TITLES[role]} ({short_name(fmt)})", fontsize=10)
        bottom.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        bottom.set_ylim(-0.03, 1.03)
        bottom.set_xlabel("training step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="major")
    axes[0][0].set_ylabel("magnitude (log2 axis)")
    axes[1][0].set_ylabel(f"nonzero values flushed to 0\n({smooth}-step mean)")
    handles = [
        Line2D([], [], color=FALLBACK[i % len(FALLBACK)], lw=2, label=label)
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
