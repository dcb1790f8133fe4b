# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 12: Mixed precision across ranks
#
# Real mixed-precision training runs on many devices at once, and most of the bugs its
# users report live there. In **data parallel** training every rank (one process, on
# one device) holds a replica of the model, takes its shard of each batch, and the ranks
# **all-reduce** their gradients: each gets the average, and all take the same step.
# Loss scaling adds a decision to every step (skip it if some gradient is inf or NaN),
# and a decision is only safe if every rank makes the same one.
#
# This lesson runs two ranks with MPI (`mpiexec -n 2`, through mpi4py and the MPICH
# wheel: `pip install 'minimp[mpi]'`) on the digits MLP of the earlier lessons, float16
# weights with float32 masters and a dynamic loss scale, and measures three things:
#
# - (a) what happens when one rank overflows and the ranks do not share the inf check;
# - (b) what a float16 all-reduce does to the gradients, against a float32 one;
# - (c) what ZeRO-1, which shards the float32 masters and the optimizer state over the
#   ranks, saves in memory per rank.
#
# A notebook is one process, so the cell below starts the ranks as a separate program
# (`python -m minimp.distributed lesson`, under `mpiexec -n 2`) and reads back what they
# measured, as JSON. The loop each rank runs is in `minimp/distributed.py`.

# %%
import numpy as np

from minimp import distributed
from minimp.tools import plots
from minimp.tools.lessons import claim, save_figure, show

RANKS = 2  # two processes: the 2-core machine the lessons are measured on
OPTIONS = {
    "found-inf": {"steps": 30, "outlier_step": 10},  # (a): rank 1 gets bad data at step 10
    "reduce-dtype": {"warmup": 20},  # (b): after 20 steps of training
    "zero": {"steps": 3},  # (c): Adam, bytes after 3 steps
    "timing": {"steps": 20},
}
results = distributed.launch("lesson", ranks=RANKS, **OPTIONS)
print(f"{RANKS} ranks ran: found-inf, reduce-dtype, zero, timing")

# %% [markdown]
# ## (a) One rank overflows
#
# At step 10, rank 1's shard of the batch is bad data (its inputs 4096 times too large):
# its float16 gradients overflow, rank 0's do not. Each rank checks its own gradients
# for inf before the all-reduce. A rank that finds one skips the step, as a
# single-device loop does, and sends zeros to the all-reduce so that the others do not
# wait for it forever (a rank that left the collective out would hang them: fairscale
# issue 180).
#
# **Predict** before you read on: with the check kept to each rank, does rank 0 skip
# too? And after that step, do the two replicas hold the same weights again?

# %%
t = OPTIONS["found-inf"]["outlier_step"]
alone, shared = results["found-inf"]["not shared"], results["found-inf"]["shared"]
for name, run in (("not shared", alone), ("shared", shared)):
    print(
        f"{name:>10}: step {t} found inf on rank 0 / 1: "
        f"{bool(run['found_inf_here'][0][t])} / {bool(run['found_inf_here'][1][t])}; "
        f"stepped: {bool(run['stepped'][0][t])} / {bool(run['stepped'][1][t])}; "
        f"max |w0 - w1| at the end: {run['spread'][-1]:.3g}; "
        f"loss scales at the end: {run['scale'][0][-1]:g} / {run['scale'][1][-1]:g}"
    )

# %% [markdown]
# Without the shared check, rank 1 skips step 10 and halves its loss scale while rank 0
# steps on the half-batch average it received. From then on the replicas are two
# different models: the gap between their weights never closes, it keeps growing, and
# their loss scales disagree. Nothing crashes and no loss turns NaN: the run just stops
# being one run.

# %%
claim(
    alone["stepped"][0][t] == 1 and alone["stepped"][1][t] == 0,
    "rank 1 skips step 10 while rank 0 steps",
)
claim(
    all(s == 0 for s in alone["spread"][:t]) and all(s > 0 for s in alone["spread"][t:]),
    "the gap between their weights never closes",
)
claim(
    alone["spread"][-1] > alone["spread"][t],
    "it keeps growing",
    first=alone["spread"][t],
    last=alone["spread"][-1],
)
claim(alone["scale"][0][-1] != alone["scale"][1][-1], "their loss scales disagree")
claim(all(np.isfinite(alone["loss"][0] + alone["loss"][1])), "no loss turns NaN")

# %% [markdown]
# The fix is one all-reduce of one byte: each rank's found_inf, reduced with MAX before
# the scaler decides, as Megatron-LM and PyTorch's `ShardedGradScaler` do (here
# `distributed.RankScaler`, through the one seam `GradScaler._share_found_inf`). With
# it both ranks skip step 10 together, both halve their scale, and the two replicas hold
# bit-identical weights after every step.

# %%
claim(
    shared["stepped"][0] == shared["stepped"][1] and shared["stepped"][0][t] == 0,
    "both ranks skip step 10 together",
)
claim(shared["scale"][0] == shared["scale"][1], "both halve their scale")
claim(all(shared["identical"]), "bit-identical weights after every step")

# %% [markdown]
# Does plain DDP need it? There the check runs *after* the all-reduce, on the averaged
# gradients, and an inf on any rank reaches every rank through the sum (inf + x = inf):
# without any sharing both ranks found the inf and skipped. Sharing the check is what a
# rank needs as soon as it sees only part of the gradients, or sees them before they are
# averaged: a sharded optimizer (ZeRO, FSDP) checks only its shard, and tensor or
# pipeline parallelism puts different parameters on different ranks.

# %%
after = results["found-inf"]["after the reduce, not shared"]
print(
    f"checked after the reduce: found inf on rank 0 / 1: {bool(after['found_inf_here'][0][t])}"
    f" / {bool(after['found_inf_here'][1][t])}; stepped: {bool(after['stepped'][0][t])} / "
    f"{bool(after['stepped'][1][t])}"
)
claim(
    after["found_inf_here"][0][t] == after["found_inf_here"][1][t] == 1
    and after["stepped"][0] == after["stepped"][1],
    "without any sharing both ranks found the inf and skipped",
)

# %%
fig = plots.found_inf_divergence(results["found-inf"])
save_figure(fig, "ranks_found_inf")
show(fig)

# %% [markdown]
# ## (b) Averaging in float16
#
# An all-reduce in float16 moves half the bytes of a float32 one, so frameworks offer it
# (DDP's fp16 compression hook). Each rank's gradient is already float16; what can the
# reduction itself add? Two things: the sum of the ranks' values can pass 65504 and
# overflow, and dividing by the number of ranks can push a small value below float16's
# smallest subnormal, 2^-24. DDP divides *before* summing; a SUM all-reduce followed by a
# division divides after. Below, after 20 steps of training, the same local gradients are
# averaged both ways, at every loss scale from 1 to 2^24, against their float32 average.
#
# **Predict**: which order can overflow, and at the scale the dynamic scaler has chosen,
# does either lose anything?

# %%
red = results["reduce-dtype"]
scales = red["scales"]
at = scales.index(red["scaler_scale"])
for order in ("divide first", "sum first"):
    row = red[order]
    worst = max(row["overflow"])
    worst_at = np.log2(scales[row["overflow"].index(worst)])
    print(
        f"{order:>12}: most overflowed {worst:.2%} (at scale 2^{worst_at:g}); "
        f"flushed at scale 1: {row['flushed'][0]:.3%}; at the scaler's {red['scaler_scale']:g}: "
        f"overflowed {row['overflow'][at]:.2%}, flushed {row['flushed'][at]:.2%}, "
        f"median relative error {row['rel_error'][at]:.2g}"
    )
first_overflow = next(s for s, o in zip(scales, red["sum first"]["overflow"], strict=True) if o)
print(f"sum first overflows from scale 2^{np.log2(first_overflow):g} on")

# %% [markdown]
# Dividing first never overflows in the sum: each rank's half of a finite float16 value
# is at most 32752, and two of them fit. Summing first overflows at the largest scales,
# near those at which the float16 backward itself overflows (shaded in the figure), for
# gradients that are finite on each rank and that the float32 average holds. At scale 1
# (no loss scaling) the float16 average flushes a small share
# of the gradients to zero, in either order. At the dynamic scaler's scale it overflows
# and flushes nothing: what it costs there is one float16 rounding per addition, a median
# relative error below float16's half ulp, 2^-11. The loss scale that keeps the float16
# backward in range keeps the float16 all-reduce in range too.

# %%
claim(max(red["divide first"]["overflow"]) == 0, "dividing first never overflows in the sum")
claim(
    max(red["sum first"]["overflow"]) > 0 and first_overflow > red["scaler_scale"],
    "summing first overflows at the largest scales",
    first_overflow=first_overflow,
)
claim(
    red["divide first"]["flushed"][0] > 0 and red["sum first"]["flushed"][0] > 0,
    "at scale 1 the float16 average flushes a small share of the gradients",
)
claim(
    all(red[o]["overflow"][at] == 0 and red[o]["flushed"][at] == 0 for o in red if " " in o),
    "at the dynamic scaler's scale it overflows and flushes nothing",
)
claim(
    red["divide first"]["rel_error"][at] < 2.0**-11,
    "a median relative error below float16's half ulp",
)

# %%
fig = plots.reduce_dtype_errors(red)
save_figure(fig, "ranks_reduce_dtype")
show(fig)

# %% [markdown]
# ## (c) ZeRO-1: the masters and the optimizer state, sharded
#
# With Adam in mixed precision a parameter costs 16 bytes or more: 2 for the float16
# weight, 2 for its gradient, 4 for the float32 master, 4 + 4 for Adam's two moments, and
# here 4 more for the float32 gradient the optimizer reads. Every replica holds all of
# them. ZeRO stage 1 (Rajbhandari et al., 2020) notices that the masters and the
# optimizer state are only needed to compute the update: rank r keeps and updates only
# its 1/N of them, then the ranks all-gather the rounded float16 weights. The bytes
# below are the arrays each rank holds, measured after three steps.

# %%
zero = results["zero"]
p = zero["n_params"]
per_rank = {name: sum(v[0] for v in zero[name].values()) for name in ("replicated", "zero-1")}
for name, total in per_rank.items():
    print(f"{name:>10}: {total:,} bytes per rank, {total / p:.1f} bytes per parameter")
saved = 1 - per_rank["zero-1"] / per_rank["replicated"]
print(f"ZeRO-1 saves {saved:.0%} per rank; same weights as the replicated run, bit for bit: "
      f"{zero['zero_equals_replicated']}")  # fmt: skip

# %% [markdown]
# Replicated, each rank holds 20 bytes per parameter; sharded over two ranks, 12: the
# 12 bytes of masters, moments and float32 gradient are halved, the float16 weight and
# gradient every rank still needs for its forward and backward pass are not. And since
# Adam's update treats each element on its own, sharding changes no bit of the result.
# With N ranks the sharded part shrinks as 1/N, which is why the float32 state, not the
# float16 model, is what large runs shard first.

# %%
claim(round(per_rank["replicated"] / p) == 20, "each rank holds 20 bytes per parameter")
claim(abs(per_rank["zero-1"] / p - 12) < 0.01, "sharded over two ranks, 12")
claim(zero["zero_equals_replicated"], "sharding changes no bit of the result")

# %%
fig = plots.zero_memory(zero)
save_figure(fig, "ranks_zero_memory")
show(fig)

# %% [markdown]
# ## Time per step
#
# The same step on one rank and on two, each rank's median wall time (a step of the
# whole 64-example batch on one rank; a step of its 32 examples plus the all-reduces on
# each of two). Do not expect two ranks to halve the step here: the matmuls are tiny,
# the all-reduces are not free, and a waiting MPICH rank polls on a core the other may
# need. The numbers are this run's and change from run to run.

# %% tags=["timing"]
one = distributed.launch("timing", ranks=1, **OPTIONS["timing"])
two = results["timing"]
print(f"1 rank: {one['step_seconds'][0] * 1e3:.1f} ms per step")
print(f"2 ranks: {', '.join(f'{s * 1e3:.1f}' for s in two['step_seconds'])} ms per step")
