"""Data parallel over MPI ranks (lesson 12): the shared inf check, the float16
all-reduce, and ZeRO-1's bytes per rank. Data in: the JSON ``minimp.distributed``'s
tasks write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from minimp.tools.plots.memory import memory_bars
from minimp.tools.plots.palette import COLORS, LINESTYLES, WIDE, as_percent, log2_axis

# the two runs of (a): the check all-reduced, or each rank's own
_RUNS = {"shared": COLORS["dynamic"], "not shared": COLORS["skipped"]}


def found_inf_divergence(result: Mapping[str, Any], figsize: tuple[float, float] = (8.0, 6.0)):
    """Top: max |w_rank0 - w_rank1| after each step, with the inf check shared and not.
    Bottom: each rank's loss scale in both runs; a mark where a rank skipped."""
    fig = Figure(figsize=figsize, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    t = result["outlier_step"]
    for name, color in _RUNS.items():
        run = result[name]
        steps = np.arange(len(run["spread"]))
        top.plot(steps, run["spread"], color=color, label=f"found_inf {name}")
        for rank in (0, 1):
            style = LINESTYLES[f"rank {rank}"]
            scale = np.asarray(run["scale"][rank])
            bottom.step(steps, scale, where="post", color=color, linestyle=style,
                        label=f"{name}, rank {rank}")  # fmt: skip
            skipped = np.flatnonzero(np.asarray(run["stepped"][rank]) == 0)
            bottom.plot(skipped, scale[skipped], "x", color=color, markersize=8)
    for ax in (top, bottom):
        ax.axvline(t, color=COLORS["skipped"], linewidth=0.8, alpha=0.5)
    top.set_ylabel("max |w_rank0 - w_rank1|")
    top.set_title(f"rank 1 overflows at step {t} (its shard is bad data): who skips?")
    top.legend()
    bottom.set_yscale("log", base=2)
    log2_axis(bottom.yaxis)
    bottom.set_ylabel("loss scale (x: step skipped)")
    bottom.set_xlabel("step")
    bottom.legend(fontsize="small", ncol=2)
    return fig


def reduce_dtype_errors(result: Mapping[str, Any], figsize: tuple[float, float] = WIDE) -> Figure:
    """Share of the nonzero averaged gradients that a float16 all-reduce turns into inf
    or zero where the float32 one keeps a finite nonzero value, against the loss scale,
    dividing by N before the sum (DDP) and after it."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    scales = np.asarray(result["scales"])
    styles = {"divide first": LINESTYLES["rank 0"], "sum first": LINESTYLES["rank 1"]}
    for order, style in styles.items():
        row = result[order]
        ax.plot(scales, row["overflow"], color=COLORS["skipped"], linestyle=style,
                label=f"overflow to inf, {order}")  # fmt: skip
        ax.plot(scales, row["flushed"], color=COLORS["static"], linestyle=style,
                marker=".", label=f"flushed to zero, {order}")  # fmt: skip
    local = np.flatnonzero(result["local_overflow"])
    if local.size:
        ax.axvspan(scales[local[0]], scales[-1], color=COLORS["skipped"], alpha=0.1,
                   label="some float16 gradient of the backward itself is inf")  # fmt: skip
    ax.axvline(result["scaler_scale"], color=COLORS["dynamic"], linewidth=1,
               label="the dynamic scaler's scale")  # fmt: skip
    ax.set_xscale("log", base=2)
    log2_axis(ax.xaxis)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(lambda v, _: as_percent(v))
    ax.set_xlabel("loss scale")
    ax.set_ylabel("share of nonzero gradients")
    ax.set_title("averaging float16 gradients over 2 ranks in float16, against float32")
    ax.legend(fontsize="small")
    return fig


def zero_memory(result: Mapping[str, Any], figsize: tuple[float, float] = WIDE) -> Figure:
    """Bytes rank 0 holds, replicated against ZeRO-1 (masters and Adam state sharded)."""
    memory = {name: {k: v[0] for k, v in result[name].items()}
              for name in ("replicated", "zero-1")}  # fmt: skip
    return memory_bars(memory, title="bytes per rank, 2 ranks, Adam", figsize=figsize)
