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
# # Lesson 6: Putting it together
#
# The earlier lessons took the three techniques of Micikevicius et al., "Mixed Precision
# Training" (ICLR 2018) one at a time: float32 **master weights** (sec. 3.1), **loss
# scaling** (sec. 3.2) and **float32 accumulation** of float16 products (sec. 3.3). Here
# we switch them on one after the other and train the same network six times, once per
# precision **regime**, on the real handwritten digits, from the same initialisation,
# on the same batches, with the same seeds. Only precision changes.
#
# You will see:
#
# - the six regimes and what each one keeps in which format;
# - their test accuracy, training loss, lost updates, skipped steps and flushed
#   gradients in one table, and their training curves in one figure;
# - an honest reading: which of the paper's predictions this small network shows, and
#   which it does not, and why;
# - where to look for the setting in which unscaled float16 does hurt;
# - and what each regime holds in memory.
#
# This is the README's regimes experiment, run by the code that makes its table and
# its `regimes` and `memory` figures.

# %%
import math
from dataclasses import replace

import numpy as np

import minimp.data
import minimp.memory
import minimp.stats
import minimp.tools.experiments
import minimp.tools.figures
from minimp import formats
from minimp.formats import BFLOAT16, FLOAT16, FLOAT32
from minimp.regimes import regime_table
from minimp.tools.lessons import QUICK, measured, save_figure, show
from minimp.train import LARGE_BATCH_ADAM, REGIMES, Run, TrainConfig

CONFIG = TrainConfig()  # the README's digits setting: MLP 64-128-128-10, SGD, 2000 steps
SEEDS = (0, 1, 2)  # each regime is trained once per seed (initialisation and batch order)
if QUICK:
    CONFIG = replace(CONFIG, steps=1000)  # still long enough for pure fp16 to lose most updates
    SEEDS = (0,)
MEMORY_BATCHES = (64, 256, 1024)  # batch sizes at which section 6 weighs each regime's memory

digits = minimp.data.load_digits()
print(f"{digits.name}: {len(digits.x_train)} training and {len(digits.x_test)} test images")

# %% [markdown]
# ## 1. Six regimes
#
# Each regime is a row of `minimp.train.REGIMES`. All of them run the same loop
# (`minimp.train.Run`), in the order the paper's recipe needs: forward in the regime's
# format, loss, multiply the loss by the loss scale, backward, copy the gradients to the
# masters, divide them by the scale again (**unscale**), take the optimizer step (or
# skip it when a gradient overflowed to inf), adjust the scale, and round the masters
# into the 16-bit model.
#
# | regime | compute in | optimizer updates | loss scale | what it tests |
# | --- | --- | --- | --- | --- |
# | `fp32` | float32 | float32 weights | none | the baseline to match |
# | `fp16` | float16 | the float16 weights | none | naive 16-bit training, no fix |
# | `mixed-noscale` | float16 | float32 masters | none | sec. 3.1 and 3.3, no scaling |
# | `mixed-static` | float16 | float32 masters | constant | plus the paper's scaling (3.2) |
# | `mixed-dynamic` | float16 | float32 masters | dynamic | plus PyTorch's `GradScaler` |
# | `bf16` | bfloat16 | float32 masters | none | a 16-bit format with a wide range |
#
# *Compute in* is the format of the weights the network uses, its activations and its
# gradients. The 16-bit regimes with masters compute the loss in float32.
#
# The terms, briefly (each has its lesson):
#
# - A **master weight** is a float32 copy of a 16-bit weight. A float16 weight cannot
#   take an update smaller than half its **ulp** (the gap to the next float16 number),
#   about 2^-11 of the weight; the master can, and the 16-bit copy is re-rounded from
#   it every step.
# - A value too small for float16 (at most half its smallest **subnormal**, the tiniest
#   number float16 can hold) rounds to zero: it is **flushed to zero**. Small
#   gradients die this way. The **loss scale** S multiplies the loss, hence every
#   gradient, by S before backward, lifting them into float16's range; the optimizer
#   gets them divided by S again. A **static** scale is a constant; a **dynamic** one
#   doubles after a run of clean steps and halves (skipping that step) when a gradient
#   overflows.
# - **bfloat16** keeps float32's 8 exponent bits and only 7 fraction bits: coarse, but
#   its range reaches as low as float32's, so gradients do not flush.
#
# In every regime a 16-bit matmul multiplies 16-bit numbers and accumulates the products
# in float32, rounding once at the end (sec. 3.3), as a GPU's tensor cores do; pure
# `fp16` keeps even its loss in float16. The code's own policy of each regime, and
# the settings of this run:

# %%
print(regime_table(REGIMES))  # each regime's policy, as minimp.regimes defines it
print(
    f"\nmodel {CONFIG.sizes}, {CONFIG.activation}; {CONFIG.optimizer} lr {CONFIG.lr}, "
    f"momentum {CONFIG.momentum}; batch {CONFIG.batch_size}; {CONFIG.steps} steps; seeds {SEEDS}"
)
print(
    f"static scale 2^{math.log2(CONFIG.static_scale):g}; dynamic scale starts at "
    f"2^{math.log2(CONFIG.init_scale):g}, x2 after {CONFIG.growth_interval} clean steps, "
    "x0.5 on overflow"
)
print(f"float16 flushes to zero every value of magnitude <= {FLOAT16.min_subnormal / 2:.3g}")
print(f"ulp of 1.0: float16 2^{math.log2(FLOAT16.eps):g}, float32 2^{math.log2(FLOAT32.eps):g}")
measured(regimes=list(REGIMES), steps=CONFIG.steps, seeds=list(SEEDS))

# %% [markdown]
# ## 2. Train them all
#
# `minimp.tools.experiments.compare_regimes` trains every regime once per seed. At four points
# of each 16-bit run it also looks at what the format does to the gradients: it runs
# the same batch through a float32 twin of the network (the master weights, or the
# weights widened to float32), multiplies the float32 gradients by the run's loss scale,
# and counts how many the regime's format would flush to zero. A float16 gradient that
# underflowed is just 0, so only the float32 twin can tell it from a true zero.

# %%
results = minimp.tools.experiments.compare_regimes(digits, CONFIG, tuple(REGIMES), seeds=SEEDS)
print(f"trained {len(REGIMES)} regimes x {len(SEEDS)} seed(s) x {CONFIG.steps} steps")

# %% [markdown]
# ## 3. The table
#
# How to read it. *Test accuracy* is the last evaluation on the held-out digits, and
# *final training loss* the mean of the last 100 batch losses; both are a mean ±
# standard deviation over the seeds (with one seed the spread is 0). *Updates lost* is,
# over the last 100 steps, the share of weights with a nonzero gradient that the
# optimizer's step left unchanged: the update rounded away. *Skipped steps* counts steps
# the loss scaler skipped because a gradient overflowed. *Activation grads flushed* is,
# at the last look (three quarters into the run), the share of nonzero gradients of the
# layers' outputs that the regime's format turns into zero at the run's loss scale.

# %%
rows = minimp.tools.experiments.summarize(results)
table = minimp.tools.experiments.markdown_table(rows)
summary = {row["regime"]: row for row in rows}
ratios = minimp.tools.experiments.loss_ratios(results)


def show_markdown(text: str) -> None:
    """Rendered in Jupyter, printed in a script (IPython is optional)."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        print(text)
        return
    if get_ipython() is None:
        print(text)
    else:
        display(Markdown(text))


show_markdown(table)

# %% [markdown]
# The loss also varies from seed to seed, so the fairer comparison is paired: each
# regime's final training loss divided by fp32's on the same seed.

# %%
print("final training loss / fp32's, per seed:")
for name, per_seed in ratios.items():
    print(f"  {name:14} " + "  ".join(f"{r:.3f}" for r in per_seed))
accuracies = [row["accuracy_mean"] for row in rows]
accuracy_spread = max(accuracies) - min(accuracies)
print(f"test accuracy: from {min(accuracies):.2%} to {max(accuracies):.2%}")
measured(
    summary=summary,
    loss_ratios=ratios,
    accuracy_spread=accuracy_spread,
    accuracy_gap_noscale=abs(
        summary["mixed-noscale"]["accuracy_mean"] - summary["fp32"]["accuracy_mean"]
    ),
)

# %% [markdown]
# ## 4. The curves
#
# The same runs over time (the README's `regimes` figure): the training loss, smoothed,
# on a log scale, and the test accuracy, each the mean over seeds with the spread as a
# band.

# %%
fig, _ = minimp.tools.figures.figure_regimes(results)
save_figure(fig, "regimes")
show(fig)

# %% [markdown]
# ## 5. What the paper predicts, and what this network shows
#
# **Pure fp16 loses its updates.** The paper's first finding (sec. 3.1): late in
# training, updates fall below half an ulp of their weights and a float16 weight stops
# taking them. Here pure `fp16` does lose most of its updates late in training, and
# ends with a higher training loss than `fp32` on every seed (the ratios above). Every
# regime with float32 masters loses about as few updates as `fp32` itself (float32 has
# an ulp too, just 2^13 times finer): the masters are the fix.
#
# **Without scaling, gradients flush; here it barely matters.** The paper's second
# finding (sec. 3.2, its Figure 3): many activation gradients lie below float16's
# range, so without a loss scale they become zero, and on some networks training fails.
# `mixed-noscale` does flush a large share of its nonzero activation gradients, yet its
# training loss stays within a couple of percent of `fp32`'s on every seed and its test
# accuracy barely moves. A constant scale flushes fewer, the dynamic scale fewer still.

# %%
lost = {name: row["lost_updates"] for name, row in summary.items()}
flushed = {name: row["activation_flushed"] for name, row in summary.items()}
mixed = [n for n, r in REGIMES.items() if r.master_weights]
print(f"updates lost late in training: fp16 {lost['fp16']:.1%}, fp32 {lost['fp32']:.1%}")
print("  with float32 masters: " + ", ".join(f"{n} {lost[n]:.1%}" for n in mixed))
print(f"fp16's final loss / fp32's: {min(ratios['fp16']):.2f} .. {max(ratios['fp16']):.2f}")
print(
    "activation gradients flushed: "
    + ", ".join(f"{n} {flushed[n]:.1%}" for n in REGIMES if n != "fp32")
)
noscale = ratios["mixed-noscale"]
print(f"mixed-noscale's final loss / fp32's: {min(noscale):.3f} .. {max(noscale):.3f}")
measured(lost_updates=lost, activation_flushed=flushed)

# %% [markdown]
# Why can so many activation gradients vanish without harm? A count says nothing of
# size. The values that flush are the smallest ones, and the update of a weight is a sum
# over the batch of activation gradient times input: tiny terms add tiny amounts. Let us
# weigh them. We train one more `mixed-noscale` run (seed 0), take its next batch
# through the float32 twin, and compare two shares of the nonzero activation gradients
# that float16 flushes: their *number*, and their *magnitude* (the sum of |g| of the
# flushed values over the sum of |g| of all). We also count the flushed share of the
# weight gradients: each is a sum over the batch, so it is rarely that small.

# %%
noscale_run = Run("mixed-noscale", digits, replace(CONFIG, seed=SEEDS[0]))
noscale_run.train()
x, y = noscale_run._batch(noscale_run.steps_done)
grads = minimp.stats.float32_gradients(noscale_run.model, noscale_run.masters.parameters(), x, y)


def flushed_shares(values: np.ndarray) -> tuple[float, float]:
    """Of the nonzero values, the share float16 flushes to zero: by count, by magnitude."""
    nonzero = values[values != 0]
    gone = formats.classify(nonzero, "float16") == formats.Category.FLUSHED_TO_ZERO
    magnitude = np.abs(nonzero.astype(np.float64))
    return float(gone.mean()), float(magnitude[gone].sum() / magnitude.sum())


shares = {}
for kind in ("activation", "weight"):
    values = np.concatenate([g[kind].ravel() for g in grads.values()])
    shares[kind] = flushed_shares(values)
    print(
        f"{kind} gradients: {shares[kind][0]:.1%} of the nonzero values flush, "
        f"carrying {shares[kind][1]:.4%} of their total magnitude"
    )
measured(
    flushed_count_activation=shares["activation"][0],
    flushed_magnitude_activation=shares["activation"][1],
    flushed_count_weight=shares["weight"][0],
)

# %% [markdown]
# The flushed activation gradients are many by count and almost nothing by magnitude,
# and far fewer weight gradients flush at all. With SGD, whose step is proportional to
# the gradient, losing them changes the weights very little. That is this network's
# story, not a general law: the paper's Multibox SSD detector diverged without loss
# scaling (sec. 3.2), while several of its ImageNet networks trained fine without it.
#
# **When scaling matters.** The README's section "When scaling matters" runs the
# setting `minimp.train.LARGE_BATCH_ADAM` (printed below): a large batch divides each
# example's gradient by the batch size, so more gradients fall below float16's range,
# and Adam normalises each weight's step by the size of its recent gradients, so a
# weight whose gradients are all tiny still takes a full-sized step in float32, and none
# at all when float16 has flushed them to zero. There, without scaling, the training
# loss does end above float32's, and the dynamic scale brings it back. It is too slow to
# train here; run it with `python -m minimp regimes --setting large-batch-adam`.
#
# **bf16 needs no scaling.** bfloat16's smallest values are float32's, so it flushes
# none of these gradients, with no loss scale at all, and its training loss stays close
# to `fp32`'s. What it gives up is precision (fewer fraction bits than float16, printed
# below); the float32 masters keep that coarseness out of the weight updates.
#
# **Accuracy is the blunt instrument.** All six regimes end within about a point of test
# accuracy of each other, pure `fp16` included: on held-out digits, a network this small
# is as good as its float32 twin whichever regime trained it. The training loss is the
# more sensitive reading.

# %%
s = LARGE_BATCH_ADAM
print(
    f"LARGE_BATCH_ADAM: {s.optimizer}, lr {s.lr}, batch {s.batch_size}, {s.steps} steps "
    f"(here: {CONFIG.optimizer}, batch {CONFIG.batch_size})"
)
print(f"bf16: activation gradients flushed {flushed['bf16']:.1%}")
print(f"fraction bits: bfloat16 {BFLOAT16.mantissa_bits}, float16 {FLOAT16.mantissa_bits}")
print(f"bf16's final loss / fp32's: {min(ratios['bf16']):.3f} .. {max(ratios['bf16']):.3f}")
print(f"test accuracies span {accuracy_spread:.2%}")

# %% [markdown]
# ## 6. Memory
#
# Last, the price in bytes: what one training step holds, by category, measured from
# the engine's real arrays by `minimp.memory.memory_report` (lesson 3 reads it category
# by category). This is the README's `memory` figure.

# %%
fig, memory = minimp.tools.figures.figure_memory(CONFIG)
save_figure(fig, "memory")
totals = {name: sum(m.values()) for name, m in memory.items()}
for name, total in totals.items():
    print(f"{name:14} {total:>9,} bytes  ({total / totals['fp32']:.2f} x fp32)")
measured(memory_totals=totals)
show(fig)

# %% [markdown]
# Pure fp16 holds about half of fp32's bytes: everything is stored in 2 bytes instead
# of 4. The mixed regimes hold *more* than fp32 on this network: float16 halves the
# model and its activations, but the float32 masters, their gradients and the
# optimizer state add back more float32 bytes than float16 saved.
# The paper reports that total memory roughly halves on its networks because there the
# activations dominate. Activations grow with the batch and weights do not, so let us
# weigh the same network at larger batches:

# %%
by_batch = {}
for batch in MEMORY_BATCHES:
    config = replace(CONFIG, batch_size=batch)
    report = {
        name: minimp.memory.memory_report(Run(name, digits, config))
        for name in ("fp32", "mixed-dynamic")
    }
    fp32_total = sum(report["fp32"].values())
    by_batch[batch] = {
        "mixed_over_fp32": sum(report["mixed-dynamic"].values()) / fp32_total,
        "activation_share_fp32": report["fp32"]["activations"] / fp32_total,
    }
    print(
        f"batch {batch:5}: activations are {by_batch[batch]['activation_share_fp32']:.0%} of "
        f"fp32's bytes; mixed-dynamic holds {by_batch[batch]['mixed_over_fp32']:.2f} x fp32"
    )
measured(memory_by_batch=by_batch)

# %% [markdown]
# As the activations' share grows, the balance tips: at the largest batch the mixed
# regime holds less than fp32, heading toward the paper's "roughly half" as activations
# come to dominate.
#
# ## What we measured
#
# - Pure fp16 loses most of its updates late in training and ends with a higher
#   training loss than fp32 on every seed; float32 masters fix it.
# - Without a loss scale, a large share of the activation gradients flush to zero, but
#   they carry almost none of the gradient's magnitude, and on this network the loss and
#   the accuracy barely move. Static and dynamic scaling flush fewer; bf16 flushes none,
#   with no scale at all.
# - Test accuracy does not tell the regimes apart here; the training loss does.
# - Mixed precision costs memory at small batches and saves it once activations dominate.

# %%
print(f"{CONFIG.steps} steps, seeds {SEEDS}")
print(f"updates lost: fp16 {lost['fp16']:.1%}; mixed-dynamic {lost['mixed-dynamic']:.1%}")
print(
    f"final loss / fp32: fp16 {np.mean(ratios['fp16']):.2f}, "
    f"mixed-noscale {np.mean(ratios['mixed-noscale']):.3f}, bf16 {np.mean(ratios['bf16']):.3f}"
)
print(
    "activation grads flushed: mixed-noscale {:.1%}, mixed-static {:.1%}, mixed-dynamic {:.1%}, "
    "bf16 {:.1%}".format(
        *(flushed[n] for n in ("mixed-noscale", "mixed-static", "mixed-dynamic", "bf16"))
    )
)
print(
    f"flushed without scaling: {shares['activation'][0]:.1%} by count, "
    f"{shares['activation'][1]:.4%} by magnitude"
)
print(f"test accuracy spread: {accuracy_spread:.2%}")
print(
    "memory, mixed-dynamic / fp32: "
    + ", ".join(f"batch {b}: {v['mixed_over_fp32']:.2f}" for b, v in by_batch.items())
)
