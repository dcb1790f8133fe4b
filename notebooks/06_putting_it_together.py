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
# - what each regime holds in memory, with Adam, and at a scale people train;
# - and whether any of it generalises beyond 1,438 handwritten digits.
#
# It runs the code that makes the README's regimes table
# (`minimp.tools.experiments`), at a size that fits in a minute: 1000 steps and two
# seeds here, 2000 steps and three seeds for the README (`python -m minimp regimes`).
# So the README's numbers and these are two runs, and differ in their last digits;
# every number this lesson's text states is computed, and checked, on the run below.

# %%
import math
from dataclasses import replace

import numpy as np

import minimp.data
import minimp.tools.experiments
import minimp.tools.figures
from minimp import formats, memory, stats
from minimp.formats import BFLOAT16, FLOAT16, FLOAT32
from minimp.regimes import regime_table
from minimp.tools.lessons import claim, save_figure, show
from minimp.train import LARGE_BATCH_ADAM, REGIMES, Run, TrainConfig

# The README's digits setting (MLP 64-128-128-10, SGD with momentum, batch 64), trained
# 1000 steps instead of the README's 2000 so that the lesson runs in a minute: still
# long enough for pure fp16 to lose most of its updates.
CONFIG = TrainConfig(steps=1000)
SEEDS = (0, 1)  # each regime is trained once per seed (initialisation and batch order)
MEMORY_BATCHES = (64, 256, 1024)  # batch sizes at which section 6 weighs each regime
MEMORY_SHOWN = ("fp16", "mixed-dynamic", "bf16")  # the regimes the crossover plot draws

digits = minimp.data.load_digits()
n_train, n_test = len(digits.x_train), len(digits.x_test)
epochs = CONFIG.steps * CONFIG.batch_size / n_train
print(f"{digits.name}: {n_train} training and {n_test} test images")
print(f"{CONFIG.steps} steps of {CONFIG.batch_size} = {epochs:.1f} passes over the training set")
print(f"one test image is {1 / n_test:.2%} of the test accuracy")

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

# %% [markdown]
# ## 2. Train them all
#
# **Before you run it, predict:** which regimes will end with a training loss clearly
# above `fp32`'s? Which will flush the most activation gradients to zero? Will the test
# accuracy tell them apart?
#
# `minimp.tools.experiments.compare_regimes` trains every regime once per seed. At four
# points of each 16-bit run (steps 0, 250, 500 and 750 here) it also looks at what the
# format does to the gradients: it runs the same batch through a float32 twin of the
# network (the master weights, or the weights widened to float32), multiplies the
# float32 gradients by the run's loss scale, and counts how many the regime's format
# would flush to zero. A float16 gradient that underflowed is just 0, so only the
# float32 twin can tell it from a true zero. At the last look of `mixed-noscale` on
# seed 0 we keep those float32 gradients too, for section 5.


# %%
def flushed_shares(values: np.ndarray) -> tuple[float, float]:
    """Of the nonzero values, the share float16 flushes to zero: by count, by magnitude."""
    nonzero = values[values != 0]
    gone = formats.classify(nonzero, "float16") == formats.Category.FLUSHED_TO_ZERO
    magnitude = np.abs(nonzero.astype(np.float64))
    return float(gone.mean()), float(magnitude[gone].sum() / magnitude.sum())


LAST_LOOK = 3 * max(CONFIG.steps // 4, 1)  # the step of compare_regimes' last look
shares: dict[str, tuple[float, float]] = {}


def weigh_noscale(info) -> None:
    """At the last look of the first mixed-noscale run: both shares, both kinds."""
    if info.regime.name != "mixed-noscale" or info.step != LAST_LOOK or shares:
        return
    grads = stats.float32_gradients(info.model, info.masters.parameters(), info.inputs,
                                    info.targets)  # fmt: skip
    for kind in ("activation", "weight"):
        shares[kind] = flushed_shares(np.concatenate([g[kind].ravel() for g in grads.values()]))


results = minimp.tools.experiments.compare_regimes(
    digits, CONFIG, tuple(REGIMES), seeds=SEEDS, hooks=[weigh_noscale]
)
print(f"trained {len(REGIMES)} regimes x {len(SEEDS)} seeds x {CONFIG.steps} steps")

# %% [markdown]
# ## 3. The table
#
# How to read it. *Test accuracy* is the last evaluation on the held-out digits, and
# *final training loss* the mean of the last 100 batch losses; both are a mean ±
# standard deviation over the seeds. *Updates lost* is, over the last 100 steps, the
# share of weights with a nonzero gradient that the optimizer's step left unchanged:
# the update rounded away. *Skipped steps* counts steps the loss scaler skipped
# because a gradient overflowed. *Activation grads flushed* is, at the last look
# (three quarters into the run), the share of nonzero gradients of the layers'
# outputs that the regime's format turns into zero at the run's loss scale. *Stored per
# step* is what one training step holds by its arrays' sizes, *peak per step (CPU)* the
# allocator's measured high-water mark of a step (section 6).

# %% tags=["peak"]
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
print(f"that spread is {accuracy_spread * n_test:.1f} test images (of {n_test})")

# %% [markdown]
# ## 4. The curves
#
# The same runs: the training loss over time (smoothed, on a log scale, the mean over
# seeds with the spread as a band), and each regime's final test accuracy, a dot per
# seed. Test accuracy moves in steps of one image, printed at the top: the regimes'
# accuracy curves lie on top of each other, so only the final values are drawn.

# %%
fig, _ = minimp.tools.figures.figure_regimes(results, test_images=n_test)
save_figure(fig, "regimes")
show(fig)

# %% [markdown]
# ## 5. What the paper predicts, and what this network shows
#
# **Pure fp16 loses its updates.** The paper's first finding (sec. 3.1): late in
# training, updates fall below half an ulp of their weights and a float16 weight stops
# taking them. Here pure `fp16` does lose most of its updates late in training (the
# *updates lost* printed below), and ends with a higher training loss than `fp32` on
# every seed (the ratios above). Every regime with float32 masters loses about as few
# updates as `fp32` itself (float32 has an ulp too, just 2^13 times finer): the masters
# are the fix.

# %%
lost = {name: row["lost_updates"] for name, row in summary.items()}
flushed = {name: row["activation_flushed"] for name, row in summary.items()}
mixed = [n for n, r in REGIMES.items() if r.master_weights]
print(f"updates lost late in training: fp16 {lost['fp16']:.1%}, fp32 {lost['fp32']:.1%}")
print("  with float32 masters: " + ", ".join(f"{n} {lost[n]:.1%}" for n in mixed))
print(f"fp16's final loss / fp32's: {min(ratios['fp16']):.2f} .. {max(ratios['fp16']):.2f}")
claim(lost["fp16"] > 0.5, "pure fp16 loses most of its updates late in training", lost=lost)
claim(min(ratios["fp16"]) > 1.05, "fp16 ends with a higher training loss on every seed",
      ratios=ratios["fp16"])  # fmt: skip
claim(
    lost["fp32"] < 0.05 and all(lost[n] <= 1.5 * lost["fp32"] + 0.005 for n in mixed),
    "every regime with float32 masters loses about as few updates as fp32",
    lost=lost,
)

# %% [markdown]
# One reading of that column needs care: `mixed-noscale` shows *fewer* lost updates
# than `fp32` itself. It does not round fewer updates away. The column counts only
# weights whose gradient was nonzero in the run's own format, and without a loss scale
# float16 flushes the smallest weight gradients to zero (the share printed below, by
# count, at the last look): exactly the weights whose update would have been too small
# even for a float32 master. A zero gradient asks for no update, so those weights leave
# the count. The share flushed is larger than all of `fp32`'s lost updates, so it can
# account for the whole difference. The scaled regimes flush fewer of them, and count
# more.

# %%
print(f"mixed-noscale: {shares['weight'][0]:.1%} of the nonzero weight gradients flush to zero")
print(f"updates lost: fp32 {lost['fp32']:.1%}, mixed-noscale {lost['mixed-noscale']:.1%}")
claim(lost["mixed-noscale"] < lost["fp32"], "mixed-noscale shows fewer lost updates than fp32",
      lost=lost)  # fmt: skip
claim(shares["weight"][0] > lost["fp32"], "the share flushed is larger than fp32's lost updates",
      flushed=shares["weight"][0], fp32_lost=lost["fp32"])  # fmt: skip

# %% [markdown]
# **Without scaling, gradients flush; here it barely matters.** The paper's second
# finding (sec. 3.2, its Figure 3): many activation gradients lie below float16's
# range, so without a loss scale they become zero, and on some networks training fails.
# `mixed-noscale` does flush a large share of its nonzero activation gradients, yet its
# training loss stays within a couple of percent of `fp32`'s on every seed and its test
# accuracy moves by at most a point. A constant scale flushes fewer, the dynamic scale
# fewer still.

# %%
print(
    "activation gradients flushed: "
    + ", ".join(f"{n} {flushed[n]:.1%}" for n in REGIMES if n != "fp32")
)
noscale = ratios["mixed-noscale"]
print(f"mixed-noscale's final loss / fp32's: {min(noscale):.3f} .. {max(noscale):.3f}")
noscale_gap = abs(summary["mixed-noscale"]["accuracy_mean"] - summary["fp32"]["accuracy_mean"])
print(f"mixed-noscale's test accuracy - fp32's: {noscale_gap:.2%}")
claim(flushed["mixed-noscale"] > 0.3, "mixed-noscale flushes a large share", flushed=flushed)
claim(all(abs(r - 1) < 0.02 for r in noscale),
      "its training loss stays within a couple of percent of fp32's on every seed",
      ratios=noscale)  # fmt: skip
claim(noscale_gap <= 0.01, "its test accuracy moves by at most a point", gap=noscale_gap)
claim(
    flushed["mixed-dynamic"] < flushed["mixed-static"] < flushed["mixed-noscale"],
    "a constant scale flushes fewer, the dynamic scale fewer still",
    flushed=flushed,
)

# %% [markdown]
# Why can so many activation gradients vanish without harm? A count says nothing of
# size. The values that flush are the smallest ones, and the update of a weight is a sum
# over the batch of activation gradient times input: tiny terms add tiny amounts. At the
# last look of `mixed-noscale` (seed 0) we kept the float32 twin's gradients; compare
# two shares of the nonzero activation gradients that float16 flushes: their *number*,
# and their *magnitude* (the sum of |g| of the flushed values over the sum of |g| of
# all), and the flushed share of the weight gradients, each a sum over the batch.

# %%
for kind in ("activation", "weight"):
    print(
        f"{kind} gradients: {shares[kind][0]:.1%} of the nonzero values flush, "
        f"carrying {shares[kind][1]:.4%} of their total magnitude"
    )

# %% [markdown]
# The flushed activation gradients are many by count and almost nothing by magnitude
# (under 1% of it), and fewer than half as many weight gradients flush. With SGD, whose
# step is proportional to the gradient, losing them changes the weights very little.

# %%
claim(shares["activation"][0] > 0.3, "the flushed activation gradients are many by count",
      shares=shares)  # fmt: skip
claim(shares["activation"][1] < 0.01, "almost nothing by magnitude (under 1% of it)",
      shares=shares)  # fmt: skip
claim(shares["weight"][0] < shares["activation"][0] / 2,
      "fewer than half as many weight gradients flush", shares=shares)  # fmt: skip

# %% [markdown]
# **bf16 needs no scaling.** bfloat16's smallest values are float32's, so it flushes
# none of these gradients, with no loss scale at all, skips no step, and its training
# loss stays within 3% of `fp32`'s on every seed. What it gives up is precision (fewer
# fraction bits than float16, printed below); the float32 masters keep that coarseness
# out of the weight updates.
#
# **Accuracy is the blunt instrument.** All six regimes end within a point of test
# accuracy of each other, pure `fp16` included (the spread, printed in section 3, is a
# handful of test images). The training loss is the more sensitive reading.

# %%
print(f"bf16: activation gradients flushed {flushed['bf16']:.1%}, "
      f"steps skipped {summary['bf16']['skipped']:g}")  # fmt: skip
print(f"fraction bits: bfloat16 {BFLOAT16.mantissa_bits}, float16 {FLOAT16.mantissa_bits}")
print(f"bf16's final loss / fp32's: {min(ratios['bf16']):.3f} .. {max(ratios['bf16']):.3f}")
print(f"test accuracies span {accuracy_spread:.2%}")
claim(flushed["bf16"] == 0.0 and summary["bf16"]["skipped"] == 0,
      "bf16 flushes none of these gradients and skips no step",
      flushed=flushed["bf16"])  # fmt: skip
claim(all(abs(r - 1) < 0.03 for r in ratios["bf16"]),
      "bf16's training loss stays within 3% of fp32's on every seed",
      ratios=ratios["bf16"])  # fmt: skip
claim(accuracy_spread <= 0.01, "all six regimes end within a point of test accuracy",
      spread=accuracy_spread)  # fmt: skip

# %% [markdown]
# ## Does this generalise?
#
# The paper's numbers and this network's, side by side. The paper measured: about 5%
# of a Mandarin speech model's weight gradients below 2^-24 (sec. 3.1); about 67% of
# Multibox SSD's activation gradients exactly zero in float32 and most of the rest below
# float16's range, so that SSD diverged without scaling and a constant scale of 8
# matched float32 (sec. 3.2); and ResNet-50 on ImageNet matching float32 (75.92% ->
# 76.04% top-1) with no scaling at all. Those are the paper's, on its models. This
# network's, measured above and printed below, are far more extreme: a large share of
# the activation gradients below 2^-24 and a dynamic scale that climbed to many
# thousands, not 8.
#
# The setting causes it. 1,438 images seen over and over (the passes printed at the
# top): the network memorises its training set, its training loss falls far below its
# test loss, and the gradient of an example it already classifies with near certainty
# is tiny. The paper's networks saw each ImageNet image a few dozen times and never
# reached such a loss. So the *size* of the effect (how much flushes, how large a scale
# is needed) is this toy's; the *mechanisms* (a float16 weight ignores updates below
# half its ulp; a gradient below 2^-25 becomes 0; a scale lifts it back) are general.
#
# Does "it barely matters" generalise? Not with every optimizer. SGD's step is
# proportional to the gradient, so the gradients that flush were moving their weights
# very little anyway. Adam divides each weight's step by the size of its recent
# gradients: a weight whose gradients are all tiny still takes a step of about `lr` in
# float32, and none at all when float16 has flushed them. The README's section "When
# scaling matters" trains `minimp.train.LARGE_BATCH_ADAM` (printed below; too slow for
# this lesson: `python -m minimp regimes --setting large-batch-adam`): there, without a
# loss scale, the training loss ends above float32's on some seeds, and the dynamic
# scale brings it back.

# %%
dynamic_scale = [h.scale[-1] for h, _ in results["mixed-dynamic"]]
fp32_histories = [h for h, _ in results["fp32"]]
memorised = [h.test_loss[-1] / np.mean(h.loss[-100:]) for h in fp32_histories]
print(f"passes over the training set: {epochs:.1f}")
print(f"fp32: final training loss {np.mean([np.mean(h.loss[-100:]) for h in fp32_histories]):.2g}"
      f", test loss {np.mean([h.test_loss[-1] for h in fp32_histories]):.2g} "
      f"({min(memorised):.0f}x .. {max(memorised):.0f}x the training loss)")  # fmt: skip
print(f"mixed-noscale: activation gradients flushed {flushed['mixed-noscale']:.1%}, "
      f"weight gradients {shares['weight'][0]:.1%}  (paper: ~5% of weight gradients)")  # fmt: skip
print("mixed-dynamic's final scale: "
      + ", ".join(f"2^{math.log2(s):g}" for s in dynamic_scale)
      + "  (paper's SSD: 8 = 2^3)")  # fmt: skip
s = LARGE_BATCH_ADAM
print(f"LARGE_BATCH_ADAM: {s.optimizer}, lr {s.lr}, batch {s.batch_size}, {s.steps} steps "
      f"= {s.steps * s.batch_size / n_train:.0f} passes")  # fmt: skip
claim(min(memorised) > 10, "its training loss falls far below its test loss", ratios=memorised)
claim(min(dynamic_scale) > 1000, "a dynamic scale that climbed to many thousands, not 8",
      scales=dynamic_scale)  # fmt: skip
claim(flushed["mixed-noscale"] > 0.3, "a large share below 2^-24", flushed=flushed)

# %% [markdown]
# ## 6. Memory
#
# Last, the price in bytes. Two measures, and every number below says which:
#
# - **stored**: what one training step holds by its arrays' own sizes, by category
#   (`minimp.memory.memory_report`: weights, masters, gradients, optimizer state, and
#   the activations each op declares it saves for backward). This is what a GPU with
#   native 16-bit kernels would hold.
# - **peak**: the allocator's measured high-water mark during one step, above what
#   the run held before it (`minimp.memory.measure_peak`, tracemalloc on the CPU). On
#   the CPU minimp computes 16-bit ops in float32 and rounds once, so a 16-bit step's
#   temporaries are float32 and its peak is no half of fp32's.
#
# **Predict first:** with SGD, at batch 64, which holds more: `fp32`, or
# `mixed-dynamic` with its 16-bit weights and activations? And at batch 1024?
#
# The figure's left panel is the stored bytes at batch 64; its right panel weighs the
# same network at larger batches, stored (solid) and peak (dashed), relative to fp32
# at the same batch. Nothing is trained for it: each number is one step of a fresh run.

# %% tags=["peak"]
fig, weighed = minimp.tools.figures.figure_memory(CONFIG, MEMORY_BATCHES, MEMORY_SHOWN)
save_figure(fig, "memory")
stored = weighed["stored"]
totals = {name: sum(m.values()) for name, m in stored.items()}
print(f"stored by one step at batch {CONFIG.batch_size}:")
for name, total in totals.items():
    print(f"  {name:14} {total:>9,} bytes  ({total / totals['fp32']:.2f} x fp32)")
by_batch = weighed["by_batch"]
print("\nrelative to fp32 at the same batch (stored; peak):")
for batch in MEMORY_BATCHES:
    share = weighed["weighed"]["fp32"][batch]["activation_share"]
    print(f"  batch {batch:5} (activations {share:.0%} of fp32's stored bytes): "
          + ", ".join(f"{n} {by_batch[n][batch]['stored']:.2f}; {by_batch[n][batch]['peak']:.2f}"
                      for n in MEMORY_SHOWN))  # fmt: skip
show(fig)

# %% [markdown]
# Pure fp16 stores about half of fp32's bytes: everything is 2 bytes instead of 4. At
# batch 64 the mixed regimes store *more* than fp32: float16 halves the model and its
# activations, but the float32 masters, their gradients and the optimizer state add
# back more float32 bytes than float16 saved. Activations grow with the batch and
# weights do not, so the balance tips: `mixed-dynamic`'s stored ratio falls with every
# larger batch, and at batch 1024 it stores less than fp32, heading toward the paper's
# "roughly half" as activations come to dominate. The measured CPU peak (dashed) of
# `mixed-dynamic` stays above fp32's at every one of these batches: on the CPU its
# 16-bit ops compute in float32 temporaries (section 6's introduction); on a GPU the
# stored column is the one to read.

# %%
ratios_by_batch = [by_batch["mixed-dynamic"][b]["stored"] for b in MEMORY_BATCHES]
claim(0.45 < totals["fp16"] / totals["fp32"] < 0.55, "pure fp16 stores about half of fp32's",
      ratio=totals["fp16"] / totals["fp32"])  # fmt: skip
claim(all(totals[n] > totals["fp32"] for n in mixed),
      "at batch 64 the mixed regimes store more than fp32", totals=totals)  # fmt: skip
claim(ratios_by_batch == sorted(ratios_by_batch, reverse=True) and ratios_by_batch[-1] < 1,
      "the stored ratio falls with every larger batch, below fp32 at 1024",
      ratios=ratios_by_batch)  # fmt: skip
peaks = [by_batch["mixed-dynamic"][b]["peak"] for b in MEMORY_BATCHES]
claim(min(peaks) > 1, "the measured CPU peak of mixed-dynamic stays above fp32's at every batch",
      peaks=peaks)  # fmt: skip

# %% [markdown]
# **With Adam, and at a scale people train.** SGD with momentum keeps one number per
# weight; Adam keeps two (its running mean and mean square), each in float32 when the
# optimizer updates float32 weights. Per parameter, not counting activations (stored):
#
# - `fp32`: 4 (weight) + 4 (gradient) + 4 + 4 (Adam) = 16 bytes;
# - mixed with masters, as usually counted (Rajbhandari et al., ZeRO, 2020):
#   2 (float16 weight) + 2 (float16 gradient) + 4 (master) + 4 + 4 (Adam) = 16 bytes:
#   no saving at all on the model's side; minimp also keeps a float32 copy of each
#   gradient for its master (`MasterWeights.copy_grads_to_masters`), 4 bytes more;
# - PyTorch AMP (`amp`: float32 parameters, autocast casting per op): 4 + 4 + 4 + 4 =
#   16 bytes, like fp32; only the activations (and the per-step float16 copies of the
#   weights autocast makes) are 16-bit;
# - pure fp16: 2 + 2 + 2 + 2 = 8 bytes, and the updates it loses (section 5).
#
# So mixed precision saves nothing on weights and optimizer state; its saving is in the
# activations, and in the speed of 16-bit matmuls (lesson 7). A 7-billion-parameter
# model at 16 bytes per parameter holds 112 GB before a single activation, more than
# one 80 GB GPU, whichever of these layouts it uses: hence sharding the optimizer state
# across GPUs (ZeRO). Measured on this network with Adam (stored), and scaled:

# %%
adam = replace(CONFIG, optimizer="adam", lr=1e-3)
layouts = ("fp32", "mixed-dynamic", "amp", "fp16")
adam_runs = {name: Run(name, digits, adam) for name in layouts}
n_params = sum(p.data.size for p in adam_runs["fp32"].model.parameters())
adam_bytes = {}
for name, run in adam_runs.items():
    report = memory.memory_report(run)
    adam_bytes[name] = {k: v / n_params for k, v in report.items() if k != "activations"}
    print(f"{name:14} " + ", ".join(f"{k} {v:g}" for k, v in adam_bytes[name].items())
          + f"  = {sum(adam_bytes[name].values()):g} bytes per parameter")  # fmt: skip
textbook_mixed = 2 + 2 + 4 + 4 + 4  # float16 weight and gradient, float32 master and Adam
per_param = {name: sum(b.values()) for name, b in adam_bytes.items()}
BIG = 7e9  # parameters of a "7B" language model
print(f"\n{BIG:.0e} parameters x {textbook_mixed} bytes = {BIG * textbook_mixed / 1e9:.0f} GB "
      f"({BIG * textbook_mixed / 2**30:.0f} GiB) before activations")  # fmt: skip
print(f"in minimp's mixed layout ({per_param['mixed-dynamic']:g} bytes): "
      f"{BIG * per_param['mixed-dynamic'] / 1e9:.0f} GB")  # fmt: skip
claim(per_param["fp32"] == 16 and per_param["amp"] == 16,
      "fp32: 4 + 4 + 4 + 4 = 16 bytes; PyTorch AMP: 16 bytes, like fp32",
      per_param=per_param)  # fmt: skip
claim(per_param["mixed-dynamic"] == textbook_mixed + 4,
      "minimp also keeps a float32 copy of each gradient, 4 bytes more",
      per_param=per_param)  # fmt: skip
claim(per_param["fp16"] == 8, "pure fp16: 2 + 2 + 2 + 2 = 8 bytes", per_param=per_param)
claim(round(BIG * textbook_mixed / 1e9) == 112, "a 7-billion-parameter model holds 112 GB",
      gb=BIG * textbook_mixed / 1e9)  # fmt: skip

# %% [markdown]
# ## What we measured
#
# - Pure fp16 loses most of its updates late in training and ends with a higher
#   training loss than fp32 on every seed; float32 masters fix it. (`mixed-noscale`'s
#   low *updates lost* is its flushed gradients leaving the count, not fewer losses.)
# - Without a loss scale, a large share of the activation gradients flush to zero, but
#   they carry almost none of the gradient's magnitude, and with SGD on this network the
#   loss and the accuracy barely move. Static and dynamic scaling flush fewer; bf16
#   flushes none, with no scale at all.
# - Test accuracy does not tell the regimes apart here; the training loss does.
# - The sizes of these effects belong to a memorised toy; the mechanisms do not.
# - Mixed precision stores more than fp32 at small batches and less once activations
#   dominate; with Adam, weights and optimizer state cost 16 bytes per parameter in
#   fp32, in AMP and in the usual mixed count alike.
#
# ## Exercises
#
# 1. Set `CONFIG = TrainConfig(steps=2000)` and `SEEDS = (0, 1, 2)` (the README's
#    run; about three minutes). Predict first: does `fp16`'s loss ratio grow or shrink
#    with more steps? Compare your table with the README's.
# 2. Set `static_scale=2.0**3` in `CONFIG`, the paper's SSD scale. Predict
#    `mixed-static`'s flushed share against `mixed-noscale`'s and `mixed-dynamic`'s,
#    then rerun.
# 3. Add `256` and `4096` batches of your own to `MEMORY_BATCHES`: at which batch does
#    `mixed-dynamic`'s measured *peak* cross below fp32's, if it does?

# %%
print(f"{CONFIG.steps} steps, seeds {SEEDS}")
print(f"updates lost: fp16 {lost['fp16']:.1%}; mixed-dynamic {lost['mixed-dynamic']:.1%}")
print(
    f"final loss / fp32: fp16 {np.mean(ratios['fp16']):.2f}, "
    f"mixed-noscale {np.mean(ratios['mixed-noscale']):.3f}, bf16 {np.mean(ratios['bf16']):.3f}"
)
print(
    f"flushed without scaling: {shares['activation'][0]:.1%} by count, "
    f"{shares['activation'][1]:.4%} by magnitude"
)
print(f"test accuracy spread: {accuracy_spread:.2%}")
print("stored, mixed-dynamic / fp32: "
      + ", ".join(f"batch {b}: {r:.2f}"
                  for b, r in zip(MEMORY_BATCHES, ratios_by_batch, strict=True)))  # fmt: skip
