"""The regimes side by side: loss over training and final accuracy (lessons 6 and 8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from minimp.tools.plots.palette import (
    LINESTYLES,
    WIDE,
    color_of,
    moving_average,
    seed_stats,
)


def regimes_compared(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    smooth: int = 50,
    title: str | None = None,
    test_images: int | None = None,
    figsize: tuple[float, float] = WIDE,
) -> Figure:
    """Training loss (left, log scale) of each regime over training, and its final test
    accuracy (right), one dot per seed.

    ``histories[regime]`` holds one history per seed ("step", "loss", "eval_step",
    "test_accuracy"). Loss lines are the mean over seeds, bands the min-max over
    seeds; the loss is first smoothed per seed by a ``smooth``-step trailing moving
    average. fp32 (thick black) is the reference the mixed regimes must match
    (Micikevicius et al. 2018, sec. 4). A seed whose loss became NaN/inf is left
    out from there on, and the legend says how many seeds did.

    Accuracy curves of regimes that end within a test image of each other overlap
    into one band; so the right panel shows only the final accuracy, each seed a dot
    and the mean a bar, and ``test_images`` (the size of the test set) says in the
    title how much one image moves it: the resolution of the measurement.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    n_seeds = max((len(runs) for runs in histories.values()), default=0)
    for i, (name, runs) in enumerate(histories.items()):
        if not runs:
            continue
        style = {
            "color": color_of(name, i),
            "ls": LINESTYLES.get(name, "-"),
            "lw": 2.6 if name == "fp32" else 1.6,
            "zorder": 2 if name == "fp32" else 3,
        }
        n = min(len(r["loss"]) for r in runs)
        stack = np.array([moving_average(np.asarray(r["loss"][:n], float), smooth) for r in runs])
        stack[stack <= 0] = np.nan
        mean, low, high = seed_stats(stack)
        step = np.asarray(runs[0]["step"][:n])
        broken = sum(not np.all(np.isfinite(np.asarray(r["loss"], float))) for r in runs)
        label = name + (f" (NaN/inf loss in {broken} of {len(runs)} seeds)" if broken else "")
        ax_loss.plot(step, mean, label=label, **style)
        ax_loss.fill_between(step, low, high, color=style["color"], alpha=0.15, lw=0)

        final = np.array([r["test_accuracy"][-1] for r in runs], float)
        jitter = np.linspace(-0.12, 0.12, len(final)) if len(final) > 1 else np.zeros(1)
        ax_acc.plot(i + jitter, final, "o", color=style["color"], ms=5, alpha=0.8)
        ax_acc.plot([i - 0.25, i + 0.25], [np.nanmean(final)] * 2, color=style["color"], lw=2.2)
    ax_loss.set_yscale("log")
    if not any(np.isfinite(line.get_ydata()).any() for line in ax_loss.lines):
        ax_loss.set_ylim(1e-2, 1e1)  # every run diverged: keep the log axis drawable
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("training loss (cross-entropy, log scale)")
    ax_loss.set_title(f"Training loss, {smooth}-step moving average", fontsize=10)
    ax_acc.set_xticks(range(len(histories)), list(histories), rotation=30, ha="right")
    ax_acc.set_xlabel("regime")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=2))
    resolution = f"\none test image = {1 / test_images:.2%}" if test_images else ""
    ax_acc.set_title(f"Final test accuracy, a dot per seed{resolution}", fontsize=10)
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
