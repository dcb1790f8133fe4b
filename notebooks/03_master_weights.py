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
# # Lesson 3: Master-weight accumulation
#
# Training changes each weight by many small steps. Late in training those steps are
# tiny compared with the weight itself, and a weight stored in float16 cannot take a
# step below a fixed fraction of its own size: the sum rounds back to the old weight,
# and the update is lost. This is the first of the three techniques of
# Micikevicius et al., "Mixed Precision Training" (ICLR 2018), sec. 3.1: keep a
# float32 **master copy** of every weight, let the optimizer update the master, and
# give the network a float16 copy of it, freshly rounded each step.
#
# In this lesson we:
#
# - measure that threshold on one float16 weight, including the exact tie at its
#   edge, and how the threshold grows with the weight;
# - feed one weight many small updates, in float16 and through a float32 master;
# - count the updates pure float16 training loses on a real network, step by step;
# - and price the fix: what pure float16 costs in training loss, and what the master
#   copy costs in memory.

# %%
import math

import numpy as np

import minimp
import minimp.data
import minimp.memory
import minimp.tools.experiments
import minimp.train
from minimp import formats, nn, optim
from minimp.amp import MasterWeights
from minimp.formats import FLOAT16, FLOAT32
from minimp.tools import plots
from minimp.tools.lessons import claim, save_figure, show

K_SWEEP = range(6, 15)  # updates u = 2^-k tried on the weight w = 1.0
WEIGHTS = (0.01, 0.1, 0.3, 0.7, 1.0, 3.0, 10.0, 100.0, 1000.0)  # weights whose threshold we find
UPDATE = 1e-4  # the small update of section 3 (the one the master_weights figure draws)
N_UPDATES = 2000  # how many times it is applied (the figure draws every one)
REGIMES = ("fp32", "fp16", "mixed-dynamic")  # the runs compared in sections 4-6
CONFIG = minimp.train.TrainConfig()  # the digits MLP of the README: SGD + momentum, 2000 steps
WINDOW = 100  # "early" and "late" mean the first and the last WINDOW steps of a run


def f16(value: float) -> minimp.Tensor:
    """A one-element float16 tensor (the value rounded to nearest-even)."""
    return minimp.tensor([value], dtype=minimp.float16)


# %% [markdown]
# ## 1. One weight, one update
#
# A float16 weight `w` is updated as `w + u`, and the result is rounded to the nearest
# float16 number, ties to even (lesson 1). The gap between `w` and its upper
# neighbour is its **ulp** (unit in the last place). If `u` is smaller than half an
# ulp, `w` is still the nearest float16 number to `w + u`, and the update is lost.
#
# Take `w = 1.0` and updates `u = 2^-k` for a range of `k`. The addition is minimp's
# float16 `+`, which gives the IEEE float16 result.
#
# **Predict**: float16 has 10 fraction bits. What is the largest 2^-k that `1.0 + 2^-k`
# loses?

# %%
one = np.float16(1.0)
above = float(np.nextafter(one, np.float16(2)))
below = float(np.nextafter(one, np.float16(0)))
print(f"float16 has {FLOAT16.mantissa_bits} fraction bits")
print(f"float16 neighbours of 1.0: {below!r} below, {above!r} above")
print(f"gap above = 2^{math.log2(above - 1):.0f}, gap below = 2^{math.log2(1 - below):.0f}\n")

w = f16(1.0)
print(f"{'u':>6} {'w + u in float16':>20} {'bits':>18}  lost?")
lost_at = {}
for k in K_SWEEP:
    result = (w + f16(2.0**-k)).item()
    lost_at[k] = result == 1.0
    print(
        f"2^-{k:<3} {result!r:>20} {formats.bit_string(result, FLOAT16):>18}  "
        f"{'lost' if lost_at[k] else 'taken'}"
    )
largest_lost_k = min(k for k, lost in lost_at.items() if lost)
print(
    f"\nlargest update lost: 2^-{largest_lost_k}; every smaller one is lost too:",
    all(lost_at[k] for k in K_SWEEP if k >= largest_lost_k),
)

# %% [markdown]
# The gap above 1.0 is 2^-10 and the gap below 2^-11 (printed). Every update from
# 2^-11 down is lost; 2^-10 (one full ulp) is taken.

# %%
claim(above - 1 == FLOAT16.eps == 2.0**-10 and 1 - below == 2.0**-11, "gaps 2^-10 and 2^-11")
claim(all(lost == (k >= 11) for k, lost in lost_at.items()), "lost from 2^-11 down", lost=lost_at)

# %% [markdown]
# Look at
# 2^-11 itself: it is exactly half an ulp, so `1 + 2^-11` lies exactly halfway between
# 1.0 and the next float16 number up. That is a tie, and ties go to the neighbour
# whose last fraction bit is 0. The cell shows both neighbours' bits, and an update
# one float16 step larger than 2^-11:

# %%
tie = (w + f16(2.0**-11)).item()
just_above = 2.0**-11 * (1 + 2.0**-10)  # the next float16 number above 2^-11
assert just_above == np.nextafter(np.float16(2.0**-11), np.float16(1))
past_tie = (w + f16(just_above)).item()
print(f"1.0           {formats.bit_string(1.0, FLOAT16)}  <- last bit 0: even")
print(f"1 + 2^-10     {formats.bit_string(1 + 2.0**-10, FLOAT16)}  <- last bit 1: odd")
print(f"1 + 2^-11           -> {tie!r}  (a tie, to even)")
print(f"1 + 2^-11 x (1 + 2^-10) -> {past_tie!r}  (just past the tie: up)")

# float32 obeys the same rule, with its own, much smaller ulp
w32 = minimp.tensor([1.0])
fp32_lost_k = min(k for k in range(6, 30) if (w32 + minimp.tensor([2.0**-k])).item() == 1.0)
# and going down, 1.0 is the bottom of its binade: the gap below is half the gap above
down_lost_k = min(k for k in K_SWEEP if (w - f16(2.0**-k)).item() == 1.0)
print(f"\nfloat32: the largest update of 1.0 that is lost is 2^-{fp32_lost_k}")
print(f"float16, downwards: the largest lost decrement of 1.0 is 2^-{down_lost_k}")

# %% [markdown]
# So for `w = 1.0` the line is exactly half an ulp, 2^-11 of the weight, and an update
# of exactly that size rounds back to 1.0. float32 has the same line much further
# down, at 2^-24 of the weight: that is why a float32 master can take the updates a
# float16 weight cannot. (Going down from 1.0 the line is half as far, because the
# float16 numbers just below 1.0 are twice as dense.)

# %%
claim(tie == 1.0 and past_tie == 1.0 + 2.0**-10, "the tie rounds back to 1.0, just past it up")
claim(fp32_lost_k == 24, "float32's line is at 2^-24 of the weight", k=fp32_lost_k)
claim(down_lost_k == 12, "going down the line is half as far", k=down_lost_k)

# %% [markdown]
# ## 2. The threshold scales with the weight
#
# For a weight in the binade [2^e, 2^(e+1)), float16's 10 fraction bits make the ulp
# 2^(e-10), so half an ulp is 2^(e-11): between 2^-12 and 2^-11 of the weight. The
# paper puts it as: an update is lost when the weight is more than 2048 = 2^11 times
# larger (sec. 3.1). We check it on weights of very different sizes: an update a
# little below half an ulp must be lost, one a little above must be taken, and one of
# exactly half an ulp is a tie, taken only when `w`'s last fraction bit is 1 (odd).

# %%
print(
    f"{'w (float16)':>12} {'ulp(w)':>10} {'ulp/2 ÷ |w|':>12} {'0.99 ulp/2':>11} "
    f"{'1.01 ulp/2':>11} {'ulp/2 (tie)':>12} last bit"
)
ratios, rule_holds, tie_to_even = [], True, True
for value in WEIGHTS:
    w_i = f16(value)
    stored = w_i.item()
    half_ulp = float(np.spacing(np.float16(stored))) / 2
    below_lost = (w_i + f16(0.99 * half_ulp)).item() == stored
    above_lost = (w_i + f16(1.01 * half_ulp)).item() == stored
    tie_lost = (w_i + f16(half_ulp)).item() == stored
    last_bit = int(formats.split_bits(np.asarray(stored), FLOAT16)[2]) & 1
    rule_holds &= below_lost and not above_lost
    tie_to_even &= tie_lost == (last_bit == 0)
    ratios.append(half_ulp / stored)
    ratio = f"2^{math.log2(half_ulp / stored):.2f}"
    print(
        f"{stored:>12.6g} {2 * half_ulp:>10.3g} {ratio:>12} "
        f"{'lost' if below_lost else 'taken':>11} {'lost' if above_lost else 'taken':>11} "
        f"{'lost' if tie_lost else 'taken':>12} {last_bit}"
    )
print(f"\nbelow half an ulp lost, above it taken, for every weight: {rule_holds}")
print(f"the exact tie is lost exactly when w's last bit is 0: {tie_to_even}")
print(f"ulp/2 ÷ |w| ranges from 2^{math.log2(min(ratios)):.2f} to 2^{math.log2(max(ratios)):.2f}")

# %% [markdown]
# The threshold is always half an ulp, and relative to the weight it stays between
# 2^-12 and 2^-11, whatever the weight's size: what decides is the update *relative
# to the weight*. A weight of 1000 ignores updates that would move a weight of 0.01
# by many ulps.

# %%
claim(rule_holds, "below half an ulp lost, above it taken, for every weight")
claim(tie_to_even, "the exact tie is lost exactly when w's last bit is 0")
claim(2.0**-12 < min(ratios) and max(ratios) == 2.0**-11, "between 2^-12 and 2^-11", r=ratios)

# %% [markdown]
# ## 3. Many small updates: a float16 weight and its float32 master
#
# Now apply one small update many times: `UPDATE`, smaller than half an ulp of 1.0,
# so in float16 every single one is lost; but together they add up to many ulps. Two
# float16 weights start at 1.0:
#
# - **pure float16**: SGD updates the float16 weight itself;
# - **with a master**: `minimp.amp.MasterWeights` holds a float32 copy, the master.
#   Each step copies the float16 gradient to the master (exact: every float16 value is
#   a float32 value), SGD updates the master, and the float16 weight is refreshed
#   by rounding the master. This is the loop `minimp.train` runs in every mixed
#   regime, minus the network.
#
# The gradient is -1 every step, so SGD with learning rate `UPDATE` adds `UPDATE` to
# the weight each time.
#
# **Predict**: after 2000 updates of 1e-4, where does each weight end?

# %%
pure = nn.Linear(1, 1, bias=False, dtype=minimp.float16)
mixed = nn.Linear(1, 1, bias=False, dtype=minimp.float16)
for layer in (pure, mixed):
    layer.weight.data[...] = 1.0
masters = MasterWeights(mixed)
sgd_pure = optim.SGD(pure.parameters(), lr=UPDATE)
sgd_master = optim.SGD(masters.parameters(), lr=UPDATE)  # the optimizer holds the masters

trace = {"float16": [], "master": [], "float16_copy": []}
for _ in range(N_UPDATES):
    for layer in (pure, mixed):
        layer.weight.grad = minimp.tensor([[-1.0]], dtype=minimp.float16)
    sgd_pure.step()
    masters.copy_grads_to_masters()  # float16 gradient -> float32 master gradient
    sgd_master.step()  # the master takes the update, in float32
    masters.copy_masters_to_model()  # the float16 weight is the master, rounded
    trace["float16"].append(pure.weight.item())
    trace["master"].append(masters.masters[0].item())
    trace["float16_copy"].append(mixed.weight.item())

exact = 1.0 + N_UPDATES * UPDATE
copy = np.array(trace["float16_copy"])
copy_gap = float(np.max(np.abs(copy - np.array(trace["master"]))))
steps_up = np.diff(copy)[np.diff(copy) != 0]
copy_moves = len(steps_up)
stairs_one_ulp = bool(np.all(steps_up == 2.0**-10))  # every move: one ulp of [1, 2)
print(
    f"update {UPDATE:g} = {UPDATE / 2.0**-11:.2f} of float16's half ulp at 1.0 (2^-11), "
    f"{UPDATE / (FLOAT32.eps / 2):.0f} x float32's (2^-24)"
)
print(f"after {N_UPDATES} updates, exact value {exact:g}")
print(f"  pure float16 weight:     {trace['float16'][-1]!r}")
print(
    f"  float32 master:          {trace['master'][-1]!r}  "
    f"(off by {abs(trace['master'][-1] - exact) / UPDATE:.2f} of one update)"
)
print(f"  float16 copy of master:  {trace['float16_copy'][-1]!r}")
print(f"the copy moved {copy_moves} times, each time by one ulp (2^-10): {stairs_one_ulp}")
print(f"it was never more than {copy_gap / 2.0**-11:.2f} half-ulps (2^-11) from the master")
print("MasterWeights.distance(), the same gap per parameter now:", masters.distance())

# %% [markdown]
# The pure float16 weight never moves from 1.0: each update is a fraction of its half
# ulp, and a lost update leaves nothing behind for the next one to build on. The
# float32 master takes every update and ends within a fraction of one update of the
# exact value. Its float16 copy climbs in one-ulp stairs: each time the master has
# moved another ulp, the rounding flips. The network always sees a float16 weight
# at most half an ulp from the master, the best float16 can do.

# %%
claim(UPDATE < 2.0**-11 and trace["float16"][-1] == 1.0, "the pure float16 weight never moves")
master_error = abs(trace["master"][-1] - exact) / UPDATE
claim(master_error < 1, "the master ends within a fraction of one update", error=master_error)
claim(stairs_one_ulp and copy_moves > 100, "the copy climbs in one-ulp stairs", moves=copy_moves)
claim(copy_gap <= 2.0**-11, "at most half an ulp from the master", gap=copy_gap)

# %% [markdown]
# ## 4. Lost updates in a real run
#
# Now a real network: the README's MLP on the handwritten digits (SGD with momentum),
# trained from the same initialisation on the same batches in three regimes:
#
# - `fp32`: float32 throughout, the baseline;
# - `fp16`: pure float16, the weights updated in float16;
# - `mixed-dynamic`: float16 forward and backward, float32 masters updated by the
#   optimizer, plus a dynamic loss scale (a factor the loss is multiplied by so that
#   small gradients survive float16, the subject of the loss-scaling lesson; here only
#   the masters matter).
#
# Every `History` records `lost_updates` at each step: of the weights whose gradient
# was nonzero, the share that the step left unchanged, because the update rounded
# away. It is measured on what the optimizer updates: the float32 weights in `fp32`,
# the float16 weights in `fp16`, the float32 masters in `mixed-dynamic`.
#
# **Predict**: which share of its updates will pure float16 lose in the last 100 steps,
# and will it be more or less than in the first 100?

# %%
digits = minimp.data.load_digits()
results = minimp.tools.experiments.compare_regimes(digits, CONFIG, REGIMES, seeds=(0,))
history = {name: runs[0][0] for name, runs in results.items()}  # seed 0's History

lost_early, lost_late, loss_early, loss_late = {}, {}, {}, {}
print(f"{CONFIG.steps} steps; early = first {WINDOW}, late = last {WINDOW}")
print(f"{'regime':14} {'lost early':>11} {'lost late':>10} {'loss early':>11} {'loss late':>10}")
for name, h in history.items():
    lost_early[name] = float(np.nanmean(h.lost_updates[:WINDOW]))  # NaN: a skipped step
    lost_late[name] = float(np.nanmean(h.lost_updates[-WINDOW:]))
    loss_early[name] = float(np.mean(h.loss[:WINDOW]))
    loss_late[name] = float(np.mean(h.loss[-WINDOW:]))
    print(
        f"{name:14} {lost_early[name]:>11.1%} {lost_late[name]:>10.1%} "
        f"{loss_early[name]:>11.4f} {loss_late[name]:>10.4f}"
    )

# %% [markdown]
# Pure float16 loses a share of its updates from the start, and most of them late in
# training. The reason is the rule of section 2: as the loss falls, the gradients fall
# with it (the cross-entropy gradient is the difference between the predicted and the
# true class probabilities, which shrinks as predictions improve), and so do the
# updates. More and more of them drop below half an ulp of their weight. With float32
# masters almost every update is taken. Even float32 loses a few: the same rule applies
# to it at 2^-24 of the weight, and a handful of updates are that small.

# %%
claim(lost_late["fp16"] > 0.5, "pure float16 loses most of its updates late", v=lost_late)
claim(lost_early["fp16"] > 0.05 and lost_late["fp16"] > lost_early["fp16"], "from the start")
claim(loss_late["fp32"] < loss_early["fp32"] / 10, "the loss falls", late=loss_late["fp32"])
claim(lost_late["mixed-dynamic"] < 0.05, "with masters almost every update is taken")
claim(0 < lost_late["fp32"] < 0.05, "even float32 loses a few", v=lost_late["fp32"])

# %% [markdown]
# The figure puts both halves of the story side by side (figure `master_weights`):
# the single weight of section 3 (its `trace`, as measured there), and the lost share
# along the three runs of section 4.

# %%
drawn = {k: np.array(v) for k, v in trace.items()}
drawn["step"] = np.arange(1, N_UPDATES + 1)
drawn["exact"] = 1.0 + UPDATE * drawn["step"]
lost = {
    name: np.array(runs[0][0].lost_updates)
    for name, runs in results.items()
    if name in ("fp32", "fp16", "mixed-dynamic")
}
fig = plots.master_weights(drawn, lost)
save_figure(fig, "master_weights")
show(fig)

# %% [markdown]
# The fp16 line on the right starts high and dips before it climbs. That is SGD's
# momentum, not noise: the momentum buffer starts empty, so the first updates are
# lr × g, while after a few dozen steps they are up to 1 / (1 - momentum) = 10 times
# larger (the buffer sums the recent gradients). The first updates are the smallest of
# the early run, and more of them fall below half an ulp (the two shares below).

# %%
fp16_lost = np.array(history["fp16"].lost_updates)
first_steps, filled = float(np.nanmean(fp16_lost[:3])), float(np.nanmean(fp16_lost[20:50]))
print(f"fp16 lost updates: {first_steps:.1%} over steps 1-3, {filled:.1%} over steps 21-50")
claim(first_steps > 2 * filled, "the first updates lose more", first=first_steps, filled=filled)

# %% [markdown]
# ## 5. What pure float16 costs
#
# The final training loss is the mean of the last 100 batch losses (as in the README's
# table); we divide each regime's by fp32's on the same run. Test accuracy is the last
# evaluation on held-out digits.

# %%
summary = {row["regime"]: row for row in minimp.tools.experiments.summarize(results)}
ratios_to_fp32 = {name: r[0] for name, r in minimp.tools.experiments.loss_ratios(results).items()}
print(f"{'regime':14} {'final loss':>11} {'÷ fp32':>7} {'test accuracy':>14}")
for name in REGIMES:
    print(
        f"{name:14} {summary[name]['loss_mean']:>11.5f} {ratios_to_fp32[name]:>7.2f} "
        f"{summary[name]['accuracy_mean']:>14.2%}"
    )
accuracy_spread = max(r["accuracy_mean"] for r in summary.values()) - min(
    r["accuracy_mean"] for r in summary.values()
)

# %% [markdown]
# Pure float16 ends with a higher training loss than float32: with most of its updates
# rounded away, it falls behind. The float32 masters close that gap almost entirely.
# On this small, easy task test accuracy does not tell the regimes apart; the training
# loss is the more sensitive reading. The paper saw the damage on a real model: on its
# Mandarin speech model, updating float16 weights directly cost 80% relative accuracy,
# while a float32 master copy matched the float32 baseline (sec. 3.1). That is the
# paper's number, not one measured here.

# %%
claim(ratios_to_fp32["fp16"] > 1.05, "pure float16 ends with a higher training loss")
mixed_gap = abs(ratios_to_fp32["mixed-dynamic"] - 1)
claim(mixed_gap < 0.05, "the masters close the gap almost entirely", gap=mixed_gap)
claim(accuracy_spread <= 0.01, "test accuracy does not tell them apart", spread=accuracy_spread)

# %% [markdown]
# ## 6. What the master copy costs
#
# `minimp.memory.memory_report` runs one training step of a fresh run of each regime
# and adds up the bytes of its real arrays, by category.

# %%
memory = {
    name: minimp.memory.memory_report(minimp.train.Run(name, digits, CONFIG)) for name in REGIMES
}
categories = list(memory["fp32"])
print(f"{'bytes':16}" + "".join(f"{name:>15}" for name in REGIMES))
for category in [*categories, "total"]:
    row = [sum(m.values()) if category == "total" else m[category] for m in memory.values()]
    print(f"{category:16}" + "".join(f"{b:>15,}" for b in row))

weights = {name: m["parameters"] + m["master weights"] for name, m in memory.items()}
weights_ratio = weights["mixed-dynamic"] / weights["fp32"]
total_ratio = sum(memory["mixed-dynamic"].values()) / sum(memory["fp32"].values())
activation_ratio = memory["mixed-dynamic"]["activations"] / memory["fp32"]["activations"]
activation_share = memory["fp32"]["activations"] / sum(memory["fp32"].values())
print(f"\nweights (model + masters), mixed ÷ fp32: {weights_ratio:.2f}")
print(f"activations, mixed ÷ fp32: {activation_ratio:.2f}")
print(f"activations' share of fp32's total: {activation_share:.0%}")
print(f"total, mixed ÷ fp32: {total_ratio:.2f}")

# %% [markdown]
# Each weight now lives twice: 2 bytes in the float16 model and 4 in the float32
# master, 1.5 times float32's 4 bytes. That matches what the paper reports: the master
# copy adds 50% to the memory for weights (sec. 3.1). The activations the graph saves
# for backward are float16, about half of float32's. In the paper's large networks
# activations dominate, so the paper reports that total training memory roughly
# halves. This MLP is tiny and its activations are a small part of the total, so here
# the masters (and the float32 gradients they carry) outweigh the savings, and mixed
# precision takes more memory than float32, not less. (These are stored bytes:
# `memory_report` adds up the arrays a step keeps; lesson 6 sets them beside a
# measured peak.)

# %%
claim(weights_ratio == 1.5, "each weight lives twice: 1.5 times float32's bytes")
claim(0.4 < activation_ratio < 0.6, "float16 activations are about half", r=activation_ratio)
claim(activation_share < 0.5, "activations are a small part of the total", s=activation_share)
claim(total_ratio > 1, "mixed precision takes more memory here", r=total_ratio)

# %% [markdown]
# ## 7. Does this generalise? Adam
#
# Section 4's explanation is SGD's: the update is lr × gradient, so it shrinks with the
# gradient, and more of it drops below half an ulp as the loss falls. Adam divides the
# gradient by the root of its running second moment, so its step is about lr *whatever
# the gradient's size*: it does not shrink as the network learns.
#
# We take one float16 weight of 1.0 with its float32 master again (section 3) and feed
# it the same gradient for `ADAM_STEPS` steps, once per gradient size in `GRADIENTS`,
# from 1e-1 down to 1e-7 (the sizes a falling loss passes through). Once with SGD (lr
# `SGD_LR`, no momentum), once with Adam (lr `ADAM_LR`), each updating the master; at
# every step we ask whether the master's update would have been lost on a float16
# weight: below half the ulp of its float16 copy.
#
# **Predict**: for which gradient sizes does each optimizer's update fall below half
# an ulp?

# %%
SGD_LR, ADAM_LR = 0.05, 1e-3  # the README's SGD lr, and Adam's usual one
GRADIENTS = (1e-1, 1e-3, 1e-5, 1e-7)
ADAM_STEPS = 200


def share_lost(make_optimizer, g: float) -> float:
    """Of ADAM_STEPS updates by gradient g, the share below half an ulp of the float16 weight."""
    layer = nn.Linear(1, 1, bias=False, dtype=minimp.float16)
    layer.weight.data[...] = 1.0
    keeper = MasterWeights(layer)
    opt = make_optimizer(keeper.parameters())
    lost_steps = []
    for _ in range(ADAM_STEPS):
        keeper.masters[0].grad = minimp.tensor([[-g]])  # the float32 master's gradient
        before = keeper.masters[0].item()
        opt.step()
        step = abs(keeper.masters[0].item() - before)
        lost_steps.append(step < float(np.spacing(np.float16(layer.weight.item()))) / 2)
        keeper.copy_masters_to_model()
    return float(np.mean(lost_steps))


lost_by = {
    name: {g: share_lost(make, g) for g in GRADIENTS}
    for name, make in (
        ("SGD", lambda ps: optim.SGD(ps, lr=SGD_LR)),
        ("Adam", lambda ps: optim.Adam(ps, lr=ADAM_LR)),
    )
}
print(f"{'gradient':>9}" + "".join(f"{g:>9g}" for g in GRADIENTS))
for name, row in lost_by.items():
    print(f"{name + ' lost':>9}" + "".join(f"{v:>9.0%}" for v in row.values()))

# %% [markdown]
# With SGD the update is lr × gradient: from the second size down a float16 weight
# would lose every update (the table above). Adam divides the gradient by the root of
# its running square, so its step is about lr, 1e-3, twice float16's half ulp at 1.0,
# whatever the gradient's size: it loses none of them, even at 1e-7. So "lost updates
# grow as the gradients shrink" is a fact about SGD. With Adam a float16 weight loses
# updates when lr itself is below half an ulp of the weight (exercise 3), and pure
# float16 Adam has other troubles: its moments and its eps (1e-8 is 0 in float16) live
# in float16 too, which is why minimp's `fp16` regime is trained with SGD.
#
# The paper's own figure, 80% relative accuracy lost by updating float16 weights on a
# speech model (sec. 3.1), is far worse than the cost measured in section 5: our MLP
# has 26k weights on 1,438 images and trains about 89 epochs, all but memorising them,
# so losing most late updates costs training loss but not test accuracy.

# %%
claim(lost_by["SGD"][1e-1] == 0, "SGD takes the largest gradient's updates")
claim(all(lost_by["SGD"][g] == 1 for g in GRADIENTS[1:]), "SGD loses every smaller one")
claim(all(v == 0 for v in lost_by["Adam"].values()), "Adam loses none", lost=lost_by["Adam"])
claim(float(np.float16(1e-8)) == 0.0, "Adam's eps, 1e-8, is 0 in float16")
claim(ADAM_LR > 2.0**-11, "Adam's lr is above float16's half ulp at 1.0")
claim(round(CONFIG.steps * CONFIG.batch_size / len(digits.x_train)) == 89, "about 89 epochs")

# %% [markdown]
# ## What we measured
#
# - A float16 weight ignores any update below half its ulp, between 2^-12 and 2^-11 of
#   its size; an update of exactly half an ulp is a tie and rounds to even (for 1.0:
#   lost). float32's line is at 2^-24.
# - Small updates that a float16 weight loses one by one add up in a float32 master.
# - In a real run pure float16 loses most of its updates late in training, and ends
#   with a higher training loss; float32 masters take nearly all of them and match
#   float32.
# - The master copy makes weight memory 1.5 times float32's.
# - With Adam, whose step stays about lr however small the gradient, a float16 weight
#   loses none of the updates SGD loses: the lost-update story is SGD's.

# %%
print(
    f"w = 1.0: largest lost update 2^-{largest_lost_k} (tie -> {tie!r}); float32: 2^-{fp32_lost_k}"
)
print(f"threshold ÷ |w|: 2^{math.log2(min(ratios)):.2f} .. 2^{math.log2(max(ratios)):.2f}")
print(
    f"{N_UPDATES} updates of {UPDATE:g}: float16 {trace['float16'][-1]!r}, "
    f"master {trace['master'][-1]:.6f}, exact {exact:g}"
)
print(
    f"lost late: fp16 {lost_late['fp16']:.1%}, fp32 {lost_late['fp32']:.1%}, "
    f"mixed {lost_late['mixed-dynamic']:.1%}"
)
print(
    f"final training loss ÷ fp32: fp16 {ratios_to_fp32['fp16']:.2f}, "
    f"mixed {ratios_to_fp32['mixed-dynamic']:.2f}"
)
print(f"weight memory ÷ fp32: {weights_ratio:.2f}; total memory ÷ fp32: {total_ratio:.2f}")

# %% [markdown]
# ## Exercises
#
# 1. In section 3, set `UPDATE = 3e-4` (more than half an ulp of 1.0): predict where the
#    pure float16 weight ends after 2000 updates, then rerun. (Hint: each update rounds
#    to a whole ulp, 2^-10, until the weight reaches 2.0.)
# 2. In section 2, add the weight 2048.0 to `WEIGHTS`: predict its ulp and the smallest
#    update it takes.
# 3. In section 7, set `ADAM_LR = 2e-4` (below 2^-11, half an ulp of 1.0): predict
#    which share of Adam's updates a float16 weight loses now, for every gradient size,
#    and why Adam's lr, not its gradient, decides.
