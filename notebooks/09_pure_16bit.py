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
# # Lesson 9: Pure 16-bit training without master weights
#
# Lesson 3 showed why Micikevicius et al. (ICLR 2018, sec. 3.1) keep a float32 **master
# copy** of every weight: a 16-bit weight cannot take an update smaller than half its
# **ulp** (the gap to the next representable number), and late in training most updates
# are that small. The master copy fixes it, at a price: a float32 copy of every weight,
# a float32 gradient for it, and float32 optimizer state.
#
# Can the weights live in 16 bits only? The update a 16-bit weight cannot take is not
# lost because 16 bits are too few to hold the weight, but because of how the new value
# is **rounded** when it is stored. Two other ways to round fix it:
#
# - **stochastic rounding** (Gupta et al., "Deep Learning with Limited Numerical
#   Precision", ICML 2015): round up or down at random, with the probabilities that make
#   the stored value right *on average*;
# - **Kahan summation** (Zamirai et al., "Revisiting BFloat16 Training", 2020): keep what
#   rounding dropped in a small 16-bit **carry** per weight, and add it back at the next
#   step.
#
# We use **bfloat16** (lesson 8: float32's 8 exponent bits, only 7 fraction bits), the
# format Zamirai et al. studied: its range is float32's, so gradients do not flush to
# zero and no loss scale is needed; only the update rounding is left to fix.
#
# In this lesson we:
#
# - weigh what each scheme holds per parameter, with and without masters;
# - feed one bfloat16 weight many tiny updates and store them three ways;
# - train the same network five ways, and see that "unchanged by a step" is not the
#   same as "lost";
# - and sum up what the measurements say.

# %%
import numpy as np

import minimp
import minimp.data
import minimp.memory
import minimp.tools.plots
from minimp import optim
from minimp.formats import BFLOAT16
from minimp.tools.lessons import claim, save_figure, show
from minimp.train import ALL_REGIMES, Run, TrainConfig

REGIMES = ("fp32", "bf16", "bf16-pure", "bf16-sr", "bf16-kahan")  # the five runs of section 3
# The README's digits MLP (SGD with momentum, batch 64), trained 1000 steps rather than
# the README's 2000 so that the lesson runs in a minute: long enough for nearest
# rounding to fall behind.
CONFIG = TrainConfig(steps=1000)
WINDOW = 100  # "late in training": the last WINDOW steps of a run
UPDATE = 1e-4  # the tiny update of section 2 (as in lesson 3), far below half a bf16 ulp
N_UPDATES = 2000  # how many times it is applied
N_STOCHASTIC = 10_000  # weights rounded stochastically side by side, to take their mean
N_SHOWN = 3  # of those, how many the figure draws one by one

digits = minimp.data.load_digits()

# %% [markdown]
# ## 1. What the masters cost, per parameter
#
# The five regimes we compare, from `minimp.train` (the last three are in `BEYOND_FP16`):
#
# | regime | weights, activations, gradients | optimizer updates | update stored by |
# | --- | --- | --- | --- |
# | `fp32` | float32 | float32 weights | nearest (in float32) |
# | `bf16` | bfloat16 | float32 masters | nearest (in float32) |
# | `bf16-pure` | bfloat16 | the bfloat16 weights | nearest |
# | `bf16-sr` | bfloat16 | the bfloat16 weights | stochastic rounding |
# | `bf16-kahan` | bfloat16 | the bfloat16 weights | nearest, plus a Kahan carry |
#
# `minimp.memory.memory_report` runs one training step of a fresh run and adds up the
# bytes of its real arrays by category. Dividing by the number of parameters gives the
# bytes each scheme spends per parameter; the activations the graph saves grow with the
# batch, not with the model, so we count them apart.

# %%
runs = {name: Run(name, digits, CONFIG) for name in REGIMES}
n_params = sum(p.data.size for p in runs["fp32"].model.parameters())
memory = {name: minimp.memory.memory_report(run) for name, run in runs.items()}
per_param = {
    name: {k: v / n_params for k, v in m.items() if k != "activations"}
    for name, m in memory.items()
}
bytes_per_param = {name: sum(b.values()) for name, b in per_param.items()}
total_kib = {name: sum(m.values()) / 1024 for name, m in memory.items()}

categories = list(per_param["fp32"])
print(f"{n_params:,} parameters; bytes per parameter, by category:\n")
print(f"{'':16}" + "".join(f"{name:>12}" for name in REGIMES))
for category in categories:
    print(f"{category:16}" + "".join(f"{per_param[n][category]:>12g}" for n in REGIMES))
print(f"{'total':16}" + "".join(f"{bytes_per_param[n]:>12g}" for n in REGIMES))
print("\nbytes held by one training step, activations included (KiB):")
print(f"{'':16}" + "".join(f"{total_kib[n]:>12.0f}" for n in REGIMES))
b = bytes_per_param

# %% [markdown]
# Read the `bf16` column first: with masters, each parameter costs more than in plain
# float32. The bfloat16 weight (2 bytes) comes on top of its float32 master (4), the
# gradient exists twice (a bfloat16 one from backward, and its float32 copy for the
# master), and SGD's momentum is float32 because the optimizer updates the masters. On
# this small network, whose activations are a small part of the total, a step of `bf16`
# holds more than a step of `fp32` (lesson 6 shows the balance tipping the other way at
# large batches, where activations dominate).
#
# Without masters, everything is 2 bytes: the weight, its gradient, and the momentum
# (the optimizer keeps its state in the parameter's dtype). That is half of float32's
# bytes per parameter. Stochastic rounding costs no memory at all (our emulation draws a
# random number per weight per step from one generator). Kahan adds one 2-byte carry per
# weight, counted as optimizer state.

# %%
claim(b["bf16"] > b["fp32"] and per_param["bf16"]["master weights"] == 4,
      "with masters, each parameter costs more than in plain float32", b=b)  # fmt: skip
claim(total_kib["bf16"] > total_kib["fp32"], "a step of bf16 holds more than a step of fp32",
      total_kib=total_kib)  # fmt: skip
claim(b["bf16-pure"] == b["fp32"] / 2, "half of float32's bytes per parameter", b=b)
claim(b["bf16-sr"] == b["bf16-pure"], "stochastic rounding costs no memory at all", b=b)
claim(b["bf16-kahan"] - b["bf16-pure"] == 2 and per_param["bf16-kahan"]["optimizer state"] == 4,
      "Kahan adds one 2-byte carry per weight, counted as optimizer state", b=b)  # fmt: skip

# %% [markdown]
# ## 2. One weight, many tiny updates
#
# A bfloat16 weight at 1.0 has 7 fraction bits, so its ulp is 2^-7, and any update below
# half of it, 2^-8, rounds away. We give it `N_UPDATES` updates of `UPDATE`, a small
# fraction of that half ulp (**predict** where each weight ends before you run it), in
# four ways (plain SGD with learning rate `UPDATE` and a
# gradient of -1, so each step asks for `+UPDATE`):
#
# - **float32**: a float32 weight, the reference;
# - **nearest**: a bfloat16 weight, rounded to nearest as the hardware does;
# - **stochastic**: a bfloat16 weight rounded up with probability `(exact - lo) / (hi -
#   lo)`, where `lo` and `hi` are the bfloat16 neighbours of the exact result. The
#   expected stored value is then `lo + (exact - lo) = exact`: the rounding is
#   **unbiased**. A single weight is a random walk, so we run `N_STOCHASTIC` of them,
#   each with its own random draws, and look at their mean and spread too;
# - **Kahan**: a bfloat16 weight `p` with a bfloat16 carry `c` (the optimizer's
#   `state["compensation"]`). With `delta` the optimizer's step (here `-UPDATE`), each
#   step computes `exact = p + (c - delta)` in float32, stores `p = round(exact)` and
#   `c = round(exact - p)`: what rounding dropped now is added back next time.
#
# The optimizers are `minimp.optim.SGD(..., update_rounding=...)`; `"stochastic"` takes a
# NumPy random generator.

# %%
ulp = BFLOAT16.eps  # spacing of bfloat16 numbers in [1, 2), where every weight here stays


def feed(n_weights, dtype, rounding="nearest", generator=None):
    """N_UPDATES steps of +UPDATE on n_weights weights of 1.0; their values after each step."""
    w = minimp.tensor(np.ones(n_weights), dtype=dtype, requires_grad=True)
    sgd = optim.SGD([w], lr=UPDATE, update_rounding=rounding, generator=generator)
    minus_one = minimp.tensor(-np.ones(n_weights), dtype=dtype)
    values, carry = np.empty((N_UPDATES, n_weights)), np.zeros((N_UPDATES, n_weights))
    for i in range(N_UPDATES):
        w.grad = minus_one
        sgd.step()
        values[i] = w.numpy()
        if rounding == "kahan":
            carry[i] = sgd.state[id(w)]["compensation"]
    return values, carry


float32, _ = feed(1, minimp.float32)
nearest, _ = feed(1, minimp.bfloat16)
stochastic, _ = feed(N_STOCHASTIC, minimp.bfloat16, "stochastic", np.random.default_rng(0))
kahan, carry = feed(1, minimp.bfloat16, "kahan")
float32, nearest, kahan, carry = (a[:, 0] for a in (float32, nearest, kahan, carry))

exact = 1.0 + N_UPDATES * UPDATE
sr_mean, sr_std = stochastic.mean(axis=1), stochastic.std(axis=1)
p_up = UPDATE / ulp  # chance that one stochastic step moves a weight (up, by one ulp)
print(f"bfloat16: {BFLOAT16.mantissa_bits} fraction bits; ulp at 1.0: {ulp:g} (2^-7)")
print(f"half an ulp: {ulp / 2:g}")
print(f"update {UPDATE:g} = {UPDATE / (ulp / 2):.3f} of half an ulp\n")
print(f"after {N_UPDATES} updates (exact value {exact:g}):")
print(f"  float32 weight       {float32[-1]:.6f}")
print(f"  nearest              {nearest[-1]:.6f}")
for label, value in (
    ("stochastic, mean", sr_mean[-1]),
    ("stochastic, one", stochastic[-1, 0]),
    ("Kahan", kahan[-1]),
):
    print(f"  {label:20} {value:.6f}  ({(value - float32[-1]) / ulp:+.3f} ulp from float32)")
print(f"  (stochastic: standard deviation over the weights {sr_std[-1] / ulp:.2f} ulp)")

jumps = np.diff(stochastic, axis=0)
sr_moves = float((jumps != 0).sum(axis=0).mean())
sr_jump_sizes = np.unique(jumps[jumps != 0])
sr_std_growth = float(sr_std[-1] / sr_std[N_UPDATES // 4 - 1])  # 4x the steps: sqrt(4)?
kahan_jump_sizes = np.unique(np.diff(kahan)[np.diff(kahan) != 0])
sr_mean_gap = float(np.max(np.abs(sr_mean - float32)) / ulp)
predicted_std = np.sqrt(N_UPDATES * p_up * (1 - p_up))  # a sum of N_UPDATES coin flips
kahan_gap = float(np.max(np.abs(kahan - float32)) / ulp)
kahan_final_gap = float(abs(kahan[-1] - float32[-1]) / ulp)
with_carry_gap = float(np.max(np.abs(kahan + carry - float32)) / ulp)
float32_error = float(abs(float32[-1] - exact) / ulp)
print(f"\nfloat32 ends {float32_error:.4f} bfloat16 ulp from the exact value")
print(f"nearest never moved: {bool(np.all(nearest == 1.0))}")
print(
    f"a stochastic weight moved {sr_moves:.1f} times on average (expected "
    f"{N_UPDATES * p_up:.1f}), always by {', '.join(f'{s:g}' for s in sr_jump_sizes)}: one ulp"
)
print(f"the mean of {N_STOCHASTIC:,} stayed within {sr_mean_gap:.3f} ulp of float32 throughout")
print(
    f"single stochastic weights end {sr_std[-1] / ulp:.2f} ulp from float32 (std.); "
    f"predicted sqrt(N p (1 - p)) = {predicted_std:.2f}"
)
print(f"its spread after all the steps ÷ after a quarter of them: {sr_std_growth:.2f}")
print(f"Kahan moved always by {', '.join(f'{s:g}' for s in kahan_jump_sizes)}: one ulp")
print(f"Kahan: at most {kahan_gap:.2f} ulp from float32, {kahan_final_gap:.2f} at the end")
print(f"Kahan weight + carry: at most {with_carry_gap:.2f} ulp from float32")
print(f"significant bits of a bfloat16 number (the carry's too): {BFLOAT16.mantissa_bits + 1}")

# %% [markdown]
# The float32 weight, our reference, ends within a hundredth of a bfloat16 ulp of the
# exact value.
#
# - **Nearest** never moves: every update is below half an ulp, and each one rounds
#   away with nothing left behind (lesson 3's float16 weight, in bfloat16).
# - **Stochastic** rounding moves a weight by a whole ulp now and then, about once per
#   `ulp / UPDATE` steps, so on average it climbs at the right speed. The mean of many
#   such weights sits on the float32 line throughout: the rounding is unbiased. A single
#   weight, though, wanders off it by several ulps: its error is a sum of coin flips, as
#   large as the binomial distribution predicts, and it grows like the square root of
#   the number of steps (four times the steps, twice the spread).
#   Unbiased is not the same as exact.
# - **Kahan** moves one ulp at a time too, but only once its carry has gathered more than
#   half an ulp (then the carry turns negative: the weight is now a little ahead), so it
#   stays within about an ulp of float32 at every step, and ends within a fraction of
#   one. Not within half an ulp, as a float32 master's copy would
#   be: the carry is itself a bfloat16 number and keeps only 8 significant bits of what
#   it carries, and adding the same small update to it rounds the same way many times
#   in a row. Weight plus carry, all that Kahan holds, shows that drift: it is the
#   carry's own rounding error, piled up.
#
# %%
claim(ulp == BFLOAT16.eps == 2.0**-7 and UPDATE / (ulp / 2) < 0.1,
      "its ulp is 2^-7; the update is a small fraction of that half ulp", ulp=ulp)  # fmt: skip
claim(float32_error < 0.01, "the float32 weight ends within a hundredth of a bfloat16 ulp",
      error=float32_error)  # fmt: skip
claim(bool(np.all(nearest == 1.0)), "nearest never moves")
claim(list(sr_jump_sizes) == [ulp] and abs(sr_moves / (N_UPDATES * p_up) - 1) < 0.05,
      "stochastic rounding moves a weight by a whole ulp, about once per ulp / UPDATE steps",
      moves=sr_moves, expected=N_UPDATES * p_up)  # fmt: skip
claim(sr_mean_gap < 0.1, "the mean of many such weights sits on the float32 line throughout",
      gap=sr_mean_gap)  # fmt: skip
claim(sr_std[-1] / ulp > 2 and abs(sr_std[-1] / ulp / predicted_std - 1) < 0.1,
      "a single weight wanders off it by several ulps, as the binomial distribution predicts",
      std=sr_std[-1] / ulp, predicted=predicted_std)  # fmt: skip
claim(abs(sr_std_growth / 2 - 1) < 0.15, "four times the steps, twice the spread",
      growth=sr_std_growth)  # fmt: skip
claim(list(kahan_jump_sizes) == [ulp], "Kahan moves one ulp at a time too")
claim(0.5 < kahan_gap < 1.5 and kahan_final_gap < 0.5,
      "Kahan stays within about an ulp at every step, ends within a fraction of one, "
      "not within half an ulp", gap=kahan_gap, final=kahan_final_gap)  # fmt: skip
claim(0 < with_carry_gap < 1, "weight plus carry shows that drift", gap=with_carry_gap)

# %% [markdown]
# The figure draws the four weights (left) and their distance from the float32 weight
# in ulps (right), with the spread of single stochastic weights as a band.

# %%
steps = np.arange(1, N_UPDATES + 1)
trace = {
    "step": steps,
    "float32": float32,
    "nearest": nearest,
    "stochastic": stochastic[:, :N_SHOWN],
    "stochastic_mean": sr_mean,
    "stochastic_std": sr_std,
    "kahan": kahan,
}
fig = minimp.tools.plots.one_weight_rounding(trace, ulp)
save_figure(fig, "one_weight")
show(fig)

# %% [markdown]
# ## 3. A real network, five ways
#
# **Predict:** which of the five ends with the highest training loss, and by how much,
# roughly? Will the test accuracy tell?
#
# Now the README's digits MLP, trained in the five regimes of section 1 from the same
# float32 initialisation (rounded to each regime's dtype), on the same batches. Only
# precision and update rounding change. The three pure regimes keep everything in
# bfloat16, the loss included; stochastic rounding draws from its own generator, seeded
# from the run's seed, so every run here is reproducible.
#
# For the last `WINDOW` steps we also record what the optimizer *asked* each weight to
# move: SGD's step is `lr` times its momentum buffer, so we add `-lr * buffer` after
# every step. Section 4 compares that with how far the weights actually moved. (The
# buffer is stored rounded to the parameter's dtype, so for the bfloat16 regimes this is
# the asked-for step up to that rounding; the float32 run checks the bookkeeping.)


# %%
def held(run):
    """What the optimizer updates (the masters where there are any), flattened, and each
    value's Kahan carry (0 without one)."""
    params = run.optimizer.param_groups[0]["params"]
    state = run.optimizer.state
    weights = [np.ravel(p.numpy()) for p in params]
    carries = [
        np.ravel(state.get(id(p), {}).get("compensation", np.zeros(p.shape))) for p in params
    ]
    return np.concatenate(weights).astype(np.float64), np.concatenate(carries).astype(np.float64)


def asked_step(run):
    """The step SGD has just asked of every weight: -lr times its momentum buffer."""
    params = run.optimizer.param_groups[0]["params"]
    buffers = [np.ravel(run.optimizer.state[id(p)]["momentum_buffer"]) for p in params]
    return -CONFIG.lr * np.concatenate(buffers).astype(np.float64)


late = {}
for name, run in runs.items():
    run.train(CONFIG.steps - WINDOW)
    weights_before, carries_before = held(run)
    asked = 0.0
    for _ in range(WINDOW):
        run.train(1)
        asked = asked + asked_step(run)
    weights_after, carries_after = held(run)
    late[name] = {
        "asked": asked,
        "moved": weights_after - weights_before,
        "carry_change": carries_after - carries_before,
    }

history = {name: run.history for name, run in runs.items()}
final_loss = {name: float(np.mean(h.loss[-100:])) for name, h in history.items()}
loss_ratio = {name: final_loss[name] / final_loss["fp32"] for name in REGIMES}
accuracy = {name: h.test_accuracy[-1] for name, h in history.items()}
accuracy_spread = max(accuracy.values()) - min(accuracy.values())
print(f"{CONFIG.steps} steps, seed {CONFIG.seed}; final loss = mean of the last 100 batches\n")
print(f"{'regime':12} {'final loss':>11} {'÷ fp32':>7} {'test accuracy':>14}   description")
for name in REGIMES:
    print(
        f"{name:12} {final_loss[name]:>11.5f} {loss_ratio[name]:>7.2f} {accuracy[name]:>14.2%}"
        f"   {ALL_REGIMES[name].description}"
    )
print(f"\ntest accuracies span {accuracy_spread:.2%}")

# %% [markdown]
# Pure bfloat16 with nearest rounding ends with a clearly higher training loss than
# float32. Stochastic rounding and Kahan summation bring it back to float32's, with no
# master copy, as the masters of `bf16` do. Test accuracy hardly tells the regimes
# apart on this small, easy task (as in lessons 3 and 6); the training loss is the
# sensitive reading.

# %%
claim(loss_ratio["bf16-pure"] > 1.5, "pure bfloat16 with nearest rounding ends with a clearly "
      "higher training loss", ratio=loss_ratio)  # fmt: skip
claim(all(abs(loss_ratio[n] - 1) < 0.05 for n in ("bf16", "bf16-sr", "bf16-kahan")),
      "stochastic rounding and Kahan summation bring it back to float32's, as the masters "
      "do", ratio=loss_ratio)  # fmt: skip
claim(accuracy_spread <= 0.01, "test accuracy hardly tells the regimes apart",
      spread=accuracy_spread)  # fmt: skip

# %% [markdown]
# ## 4. Unchanged is not lost
#
# Every run records `lost_updates`: of the weights whose gradient was nonzero, the share
# that a step left unchanged. For nearest rounding that is exactly the share of updates
# lost. For the other two it is not: a stochastically rounded weight that did not move
# this step still moves by a whole ulp with the right probability, and a Kahan weight
# that did not move has put the update in its carry. The update is **deferred**, not
# lost. So we measure two things over the last `WINDOW` steps:
#
# - **unchanged**: the mean of `lost_updates`, the share of weights a step left as they
#   were;
# - **delivered**: how much of the movement the optimizer asked for the weights made.
#   Over all weights, we fit `moved = delivered × asked` by least squares: 1 if every
#   weight moved as asked, 0 if none moved.
#
# We also give the **error**, `‖moved − asked‖ / ‖asked‖` (0 for a perfect delivery),
# and, for Kahan, the same numbers for weight plus carry.


# %%
def delivery(moved, asked):
    """The least-squares slope of moved on asked, and the relative error of moved."""
    return float(moved @ asked / (asked @ asked)), float(
        np.linalg.norm(moved - asked) / np.linalg.norm(asked)
    )


unchanged, delivered, error = {}, {}, {}
print(f"last {WINDOW} steps:\n{'regime':20} {'unchanged':>10} {'delivered':>10} {'error':>7}")
for name in REGIMES:
    unchanged[name] = float(np.nanmean(history[name].lost_updates[-WINDOW:]))
    delivered[name], error[name] = delivery(late[name]["moved"], late[name]["asked"])
    print(f"{name:20} {unchanged[name]:>10.1%} {delivered[name]:>10.3f} {error[name]:>7.2f}")
k = late["bf16-kahan"]
kahan_total = delivery(k["moved"] + k["carry_change"], k["asked"])
print(f"{'bf16-kahan + carry':20} {'':>10} {kahan_total[0]:>10.3f} {kahan_total[1]:>7.2f}")


# %% [markdown]
# All three pure regimes leave most weights unchanged at each step late in training.
# For `bf16-pure` that means most updates are now below half an ulp of their weight; the
# other two leave about as many weights unchanged. What differs is what happens next.
#
# - **Nearest** delivers only a small part of the movement: what rounds away is gone.
# - **Stochastic** rounding delivers about all of it, but with an error about as large as
#   the movement itself, or larger: each weight takes whole-ulp jumps at random times,
#   right on average only, as in section 2.
# - **Kahan** delivers about all of it with a much smaller error, and weight plus carry
#   is where the optimizer asked it to be, up to the rounding of the carry and of the
#   momentum buffer.
#
# `bf16` with float32 masters, like `fp32`, moves its masters as asked. (The float32 run
# delivers 1.000 with no error to the printed precision: the bookkeeping is right.)

# %%
pure = ("bf16-pure", "bf16-sr", "bf16-kahan")
claim(all(unchanged[n] > 0.5 and abs(unchanged[n] - unchanged["bf16-pure"]) < 0.05
          for n in pure),
      "all three pure regimes leave most weights unchanged, about as many",
      unchanged=unchanged)  # fmt: skip
claim(delivered["bf16-pure"] < 0.3, "nearest delivers only a small part of the movement",
      delivered=delivered)  # fmt: skip
claim(abs(delivered["bf16-sr"] - 1) < 0.1 and error["bf16-sr"] > 0.8,
      "stochastic rounding delivers about all of it, with an error about as large as the "
      "movement", delivered=delivered, error=error)  # fmt: skip
claim(abs(delivered["bf16-kahan"] - 1) < 0.05 and error["bf16-kahan"] < error["bf16-sr"] / 2,
      "Kahan delivers about all of it with a much smaller error",
      delivered=delivered, error=error)  # fmt: skip
claim(abs(kahan_total[0] - 1) < 0.01 and kahan_total[1] < 0.05,
      "weight plus carry is where the optimizer asked it to be",
      kahan_total=kahan_total)  # fmt: skip
claim(all(abs(delivered[n] - 1) < 5e-4 and error[n] < 5e-3 for n in ("fp32", "bf16")),
      "bf16 with float32 masters, like fp32, moves its masters as asked (1.000)",
      delivered=delivered, error=error)  # fmt: skip

# %% [markdown]
# The figure `pure16` puts it together: the training loss of the five runs, unchanged
# versus delivered late in training, and the bytes per parameter of section 1.

# %%
fig = minimp.tools.plots.pure16(
    {name: {"step": h.step, "loss": h.loss} for name, h in history.items()},
    {name: {"unchanged": unchanged[name], "delivered": delivered[name]} for name in REGIMES},
    per_param,
)
save_figure(fig, "pure16")
show(fig)

# %% [markdown]
# ## 5. What the papers found: does this generalise?
#
# Gupta et al. (2015) trained MNIST and CIFAR-10 networks in 16-bit fixed point: with
# stochastic rounding, with little loss of accuracy; with nearest rounding, training
# failed. Zamirai et al. (2020) trained in bfloat16 with 16-bit-only weight updates,
# found that nearest rounding cancels small updates, as in section 4, and that stochastic
# rounding or Kahan summation recover up to 7% absolute accuracy, ending within -0.1% to
# +0.2% of 32-bit training. Those are the papers' numbers, on their models, not ones
# measured here.
#
# Beside them, this lesson's: accuracy cannot show the effect here (its spread across
# the five regimes is under a point, printed in section 3), but the training loss does:
# nearest rounding ends more than 1.5 times float32's, the other two within 5%. The
# setting makes the failure easy to see. 1,438 images, seen tens of times over, are
# memorised: the loss and its gradients become tiny, so the updates fall far below half
# a bfloat16 ulp (section 4). SGD's step is proportional to the gradient, so shrinking
# gradients mean shrinking updates; with Adam, whose step is about `lr` whatever the
# gradient, the update stays near `lr` and is lost only when `lr` itself is below half
# an ulp of the weight (for a bfloat16 weight near 1, below 2^-8, about 0.004: Adam's
# usual 1e-3 is lost there, while a weight near 0.05 has an ulp 16 times finer).
# The mechanism (nearest rounding cancels updates below half an ulp; the carry or the
# coin keeps them) is general; how much it costs depends on the size of the updates.
#
# The trade-off, as this lesson measured it: stochastic rounding costs no memory but
# needs random bits for every weight at every step, and is right only on average; Kahan
# summation costs 2 bytes per weight and tracks float32 closely. Per parameter, the
# first holds half of float32's bytes, the second two thirds, and both far less than
# the masters' recipe.

# %% [markdown]
# ## What we measured
#
# - Bytes per parameter (weights, gradients, optimizer state): float32 masters cost more
#   than plain float32; pure bfloat16 costs half of float32, Kahan 2 bytes more.
# - One bfloat16 weight given tiny updates: nearest never moves; stochastic rounding is
#   right on average (the mean of many weights tracks float32) but a single weight
#   wanders by several ulps; Kahan stays within about an ulp and ends within a fraction.
# - On the digits MLP, pure bfloat16 with nearest rounding ends with a higher training
#   loss; stochastic rounding and Kahan match float32 without masters.
# - Late in training all three pure regimes leave most weights unchanged at a step, but
#   only nearest loses the updates: the other two deliver the movement asked for.
#
# ## Exercises
#
# 1. Set `UPDATE = 5e-3`, above half a bfloat16 ulp at 1.0 (2^-8, about 0.0039).
#    Predict where the nearest weight ends after `N_UPDATES` steps (careful: the ulp
#    doubles at 2.0), then rerun section 2.
# 2. Train `bf16-pure` with `TrainConfig(steps=1000, optimizer="adam", lr=1e-3)`.
#    Predict from section 5 whether nearest rounding still falls behind, then compare
#    its `lost_updates` with SGD's.
# 3. Kahan's carry is bfloat16. Predict how `with_carry_gap` would change with a
#    float32 carry (6 bytes per parameter instead of 8), and say which column of section
#    1 would change.

# %%
print("bytes per parameter: " + ", ".join(f"{n} {bytes_per_param[n]:g}" for n in REGIMES))
print(
    f"one weight, {N_UPDATES} x {UPDATE:g}: float32 {float32[-1]:.4f}, nearest {nearest[-1]:g}, "
    f"Kahan {kahan[-1]:.4f}, stochastic mean {sr_mean[-1]:.4f} (one weight ± {sr_std[-1] / ulp:.1f}"
    " ulp)"
)
print("final loss ÷ fp32: " + ", ".join(f"{n} {loss_ratio[n]:.2f}" for n in REGIMES))
print(
    "late: unchanged / delivered: "
    + ", ".join(f"{n} {unchanged[n]:.0%} / {delivered[n]:.2f}" for n in REGIMES)
)
