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
# # Lesson 4: Loss scaling, step by step
#
# Lesson 2 showed that late in training many gradients fall below float16's smallest
# subnormal and are flushed to zero, and that multiplying the loss by a **loss scale**
# S shifts every gradient up by log2 S, back into range. Lesson 3 showed why the
# optimizer must update float32 **master weights** rather than the float16 model. This
# lesson puts the two together (Micikevicius et al., "Mixed Precision Training", ICLR
# 2018, sec. 3.1 and 3.2):
#
# - one training step of a float16 model with float32 masters, line by line, printing
#   what each line does to the numbers;
# - what the scale bought in that step;
# - static against dynamic scaling, and what happens when the scale is far too large:
#   gradients overflow, steps are skipped, the scale backs off;
# - the scale over a real run, where it settles, and how that compares with the window
#   of good scales lesson 2 computed;
# - and the error you get when backing off cannot help, and what it tells you.

# %%
import copy
import math
import textwrap
from dataclasses import replace

import numpy as np

import minimp
import minimp.functional as F
import minimp.tools.figures
from minimp import data, nn, optim, stats
from minimp.amp import GradScaler, LossScaleUnderflowError, MasterWeights, StaticGradScaler
from minimp.formats import FLOAT16
from minimp.optim.lr_scheduler import LinearLR
from minimp.tools import experiments, plots
from minimp.tools.lessons import claim, save_figure, show
from minimp.train import Run, TrainConfig

SEED = 0  # initialisation and data order of every model below
BATCH = 64  # minibatch size, as in the README's runs
WARMUP = 1500  # steps trained before the step we take apart (small grads)
CLIP = 1.0  # gradient clipping: the largest global norm of the unscaled gradients
BIG_SCALE = 2.0**40  # a starting scale far too large, to watch the scaler back off
DEMO_GROWTH = 20  # growth_interval of that experiment: clean steps before the scale doubles
DEMO_STEPS = 100  # steps of that experiment
BAD_FACTOR = 1e5  # inputs this many times too large: they overflow float16
# The real run: the README's defaults, 2000 steps, and the scale may grow after 200
# clean steps (PyTorch's default, 2000, is measured against it in section 5)
CONFIG = TrainConfig()

digits = data.load_digits()
x_batch, y_batch = digits.x_train[:BATCH], digits.y_train[:BATCH]

# %% [markdown]
# ## 1. One step, line by line
#
# We need a float16 model whose gradients are as small as they get late in training.
# `minimp.train.Run("mixed-dynamic", ...)` trains the digits MLP with exactly the loop
# this section takes apart; we let it train `WARMUP` steps and then take over its model,
# master weights, optimizer and scaler by hand.

# %%
warm = Run("mixed-dynamic", digits, TrainConfig(steps=WARMUP))
warm.train()
model, masters, optimizer, scaler = warm.model, warm.masters, warm.optimizer, warm.scaler
print(f"after {warm.steps_done} steps: training loss {np.mean(warm.history.loss[-50:]):.3g}")
print(f"model parameters:  {[str(p.dtype) for p in model.parameters()]}")
print(f"master weights:    {[str(m.dtype) for m in masters.parameters()]}")
updates_masters = all(
    a is b for a, b in zip(optimizer.param_groups[0]["params"], masters.parameters(), strict=True)
)
print(f"the optimizer holds the masters: {updates_masters}")
print(f"loss scale S = 2^{math.log2(scaler.get_scale()):.0f}")

# %% [markdown]
# **Forward, in float16.** The input batch is cast to float16 and goes through the
# float16 model: each matmul takes float16 inputs, accumulates in float32 and rounds its
# result to float16, as a tensor core does (sec. 3.3). `retain_grad()` asks the engine
# to keep the gradient of the logits (a non-leaf tensor) so we can look at it later.

# %%
logits = model(minimp.tensor(x_batch, dtype=minimp.float16)).retain_grad()
largest_logit = float(np.abs(logits.numpy()).max())
print(f"logits: {logits.dtype}, shape {logits.shape}, largest |logit| {largest_logit:.4g}")

# %% [markdown]
# **The loss, in float32.** Cross-entropy needs a softmax, which exponentiates and sums:
# numerically sensitive work that mixed precision keeps in float32 (sec. 3.3). The cast
# `logits.float()` is part of the graph: in the backward pass it casts the gradient back
# to float16, and that cast is where small gradients flush to zero.

# %%
loss = F.cross_entropy(logits.float(), y_batch)
print(f"loss: {loss.dtype}, {loss.item():.6g}")

# %% [markdown]
# **Scale the loss.** `scaler.scale(loss)` is just `loss * S`. Because the scale is a
# power of two, the product is exact: only the exponent changes.

# %%
S = scaler.get_scale()
scaled_loss = scaler.scale(loss)
scale_exact = scaled_loss.item() == loss.item() * S
print(f"S = 2^{math.log2(S):.0f}; scaled loss: {scaled_loss.dtype}, {scaled_loss.item():.8g}")
print(f"scaled loss == loss x S exactly: {scale_exact}")

# %% [markdown]
# **Backward.** Every gradient is now S times its true value. The model's gradients are
# float16, like its weights; the float32 loss hands the float16 logits a gradient that
# is cast to float16. We look at them: are they all finite, and how close does the
# largest come to float16's max?


# %%
claim(math.log2(S) == round(math.log2(S)) and scale_exact, "a power of two: the product is exact")

# %%
scaled_loss.backward()
print(f"{'parameter':16} {'dtype':8} {'max |grad|':>11} {'non-finite':>10} {'zeros':>7}")
largest, nonfinite = 0.0, 0
for name, p in model.named_parameters():
    g = p.grad.numpy()
    bad = int((~np.isfinite(g)).sum())
    largest, nonfinite = max(largest, float(np.abs(g).max())), nonfinite + bad
    print(f"{name:16} {g.dtype!s:8} {np.abs(g).max():>11.4g} {bad:>10} {np.mean(g == 0):>7.1%}")
g_logits = logits.grad.numpy()
print(f"{'logits (dL/dy)':16} {g_logits.dtype!s:8} {np.abs(g_logits).max():>11.4g}")
headroom = math.log2(FLOAT16.max / largest)
print(
    f"non-finite values: {nonfinite}; the largest gradient is 2^{headroom:.1f} below "
    f"float16's max ({FLOAT16.max:g})"
)

# %% [markdown]
# Every gradient is finite, and even the largest stays below float16's max, so this
# step will not be skipped. (A zero gradient is either structural, from a ReLU that was
# off or a blank pixel in the input, or a gradient that flushed despite the scale.)
#
# **Copy the gradients to the masters.** `masters.copy_grads_to_masters()` widens each
# float16 gradient to float32. Widening is exact (every float16 number is a float32
# number); the gradients are still scaled.


# %%
claim(nonfinite == 0, "every gradient is finite", nonfinite=nonfinite)
claim(headroom > 0, "even the largest stays below float16's max", headroom=headroom)
claim({str(p.grad.dtype) for p in model.parameters()} == {"float16"}, "float16 gradients")

# %%
masters.copy_grads_to_masters()
widened_exact = all(
    np.array_equal(m.grad.numpy(), p.grad.numpy().astype(np.float32))
    for p, m in zip(model.parameters(), masters.parameters(), strict=True)
)
print(
    f"master gradients: {masters.parameters()[0].grad.dtype}; equal to the float16 "
    f"gradients widened: {widened_exact}"
)

# %% [markdown]
# **Unscale.** `scaler.unscale_(optimizer)` divides the optimizer's gradients (the
# masters') by S, in float32, and records whether any was inf or NaN. After it, the
# gradients have their true size again: some are now smaller than anything float16 can
# hold, which is fine, because they live in float32 from here on.


# %%
claim(widened_exact, "widening is exact")

# %%
scaled_grads = [m.grad.numpy().copy() for m in masters.parameters()]
scaler.unscale_(optimizer)
unscale_exact = all(
    np.array_equal(m.grad.numpy() * np.float32(S), before)
    for m, before in zip(masters.parameters(), scaled_grads, strict=True)
)
below_fp16 = sum(
    int(((g != 0) & (np.abs(g) < FLOAT16.min_subnormal)).sum())
    for g in (m.grad.numpy() for m in masters.parameters())
)
total = sum(m.grad.numpy().size for m in masters.parameters())
print(f"unscaled gradients x S == scaled gradients exactly: {unscale_exact}")
print(
    f"{below_fp16} of {total} master gradient values are nonzero and below float16's "
    f"smallest subnormal (2^{math.log2(FLOAT16.min_subnormal):.0f})"
)

# %% [markdown]
# Those values exist only because of the scale: without it, no float16 gradient could
# have held them.
#
# **Clip.** Gradient clipping compares the global norm of the gradients with a
# threshold, so it must see the *true* gradients: clip after `unscale_`, never before
# (sec. 3.2, and a classic bug). Clipping the scaled gradients would compare a norm S
# times too large with the threshold.


# %%
claim(unscale_exact, "unscaling divides exactly by S")
claim(below_fp16 > 0, "some true gradients are below anything float16 holds", n=below_fp16)

# %%
norm = nn.clip_grad_norm_(masters.parameters(), CLIP)
print(
    f"global gradient norm {norm:.4g} (threshold {CLIP}): "
    f"{'clipped' if norm > CLIP else 'left alone'}"
)
print(
    f"clipped before unscaling, the norm would have read {norm * S:.4g}, and clipping "
    f"would have shrunk this step {norm * S / CLIP:.3g}-fold"
)

# %% [markdown]
# **Step, unless a gradient was inf or NaN.** `scaler.step(optimizer)` calls
# `optimizer.step()` only if `unscale_` found every gradient finite, and returns whether
# it did. The optimizer updates the float32 masters.


# %%
claim(norm < CLIP < norm * S, "left alone unscaled, clipped if scaled", norm=norm)

# %%
masters_before = [m.data.copy() for m in masters.parameters()]
stepped = scaler.step(optimizer)
moved = np.mean(
    np.concatenate(
        [(m.data != b).ravel() for m, b in zip(masters.parameters(), masters_before, strict=True)]
    )
)
print(f"step ran: {stepped}; {moved:.1%} of the master weights changed")

# %% [markdown]
# **Update the scale.** `scaler.update()` chooses the next S. This step was clean, so
# the scaler counts it; after `growth_interval` clean steps in a row it doubles S
# (section 3 gives the whole rule).


# %%
claim(stepped and moved > 0, "the step ran and the masters moved", moved=moved)

# %%
tracker_before = scaler.state_dict()["_growth_tracker"]
scaler.update()
state = scaler.state_dict()
print(
    f"clean steps in a row: {tracker_before} -> {state['_growth_tracker']} "
    f"(S doubles when it reaches {state['growth_interval']})"
)
print(f"next S = 2^{math.log2(scaler.get_scale()):.0f}")

# %% [markdown]
# **Refresh the float16 model.** `masters.copy_masters_to_model()` rounds each master to
# float16, to nearest even, for the next forward pass. The model is the masters rounded:
# `masters.distance()` shows how far apart the two copies are now.

# %%
masters.copy_masters_to_model()
optimizer.zero_grad()
model.zero_grad()  # ready for the next step
distance = masters.distance()
for name, d in distance.items():
    print(
        f"{name:16} largest |master - model| {d['max_abs']:.3g}, "
        f"{d['fraction_differing']:.0%} of values differ"
    )
differing = float(np.mean([d["fraction_differing"] for d in distance.values()]))

# %% [markdown]
# Most master weights are not float16 numbers: each carries float32 bits that the
# float16 model lacks, and those bits are where updates too small for a float16 weight
# accumulate (lesson 3).


# %%
claim(differing > 0.5, "most master weights are not float16 numbers", share=differing)

# %% [markdown]
# ## 2. What did the scale buy?
#
# Run the same batch through the model as it is now, twice: once with the loss scaled by
# S, once unscaled, and compare the float16 gradient of the logits with the float32
# gradient a float32 twin of the model computes (`stats.float32_gradients`, as in
# lesson 2). Which nonzero float32 gradients came out as 0 in float16?

# %%
reference = stats.float32_gradients(model, masters.parameters(), x_batch, y_batch)
true_logit_grads = reference["layers.4"]["activation"]


def flushed_logit_grads(scale: float) -> float:
    """Share of the nonzero float32 logit gradients that are 0 in float16 at this scale."""
    twin = copy.deepcopy(model)
    out = twin(minimp.tensor(x_batch, dtype=minimp.float16)).retain_grad()
    (F.cross_entropy(out.float(), y_batch) * scale).backward()
    nonzero = true_logit_grads != 0
    return float(np.mean(out.grad.numpy()[nonzero] == 0))


bought = {"unscaled": flushed_logit_grads(1.0), "scaled": flushed_logit_grads(scaler.get_scale())}
print(
    f"logit gradients flushed to zero: {bought['unscaled']:.1%} unscaled, "
    f"{bought['scaled']:.1%} at S = 2^{math.log2(scaler.get_scale()):.0f}"
)

# %% [markdown]
# Unscaled, a large share of the output layer's gradients are zero in float16; with the
# scale, far fewer. Those that still flush are so small that even S times them is
# below float16's smallest subnormal.


# %%
claim(bought["unscaled"] > 0.3, "unscaled, a large share are zero in float16", b=bought)
claim(bought["scaled"] < bought["unscaled"] / 2, "with the scale, far fewer", b=bought)

# %% [markdown]
# ## 3. The loop, and the rule that moves S
#
# Here is the step of section 1 as a function (the README's "Mixed precision, step by
# step"), with a fresh float16 model built as `Run` builds it. We will drive it with
# different scalers.


# %%
def batches_forever(seed: int = SEED):
    """Training minibatches, reshuffled every epoch, for as long as asked."""
    rng = np.random.default_rng(seed)
    while True:
        yield from data.batches(digits.x_train, digits.y_train, BATCH, rng, drop_last=True)


def fresh_model(scaler):
    """A float16 MLP with float32 masters and SGD on the masters: the README's setup."""
    model = nn.MLP(CONFIG.sizes, generator=np.random.default_rng(SEED)).half()
    masters = MasterWeights(model)
    optimizer = optim.SGD(masters.parameters(), lr=CONFIG.lr, momentum=CONFIG.momentum)
    return model, masters, optimizer, scaler


def train_steps(model, masters, optimizer, scaler, batches, steps):
    """Section 1's step, `steps` times. Returns, per step, the scale used, whether the
    optimizer step ran, the loss, and how many float16 gradient values were inf/NaN."""
    log = []
    for _ in range(steps):
        x, y = next(batches)
        logits = model(minimp.tensor(x, dtype=minimp.float16))
        loss = F.cross_entropy(logits.float(), y)
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        bad = sum(int((~np.isfinite(p.grad.numpy())).sum()) for p in model.parameters())
        masters.copy_grads_to_masters()
        scaler.unscale_(optimizer)
        nn.clip_grad_norm_(masters.parameters(), CLIP)
        stepped = scaler.step(optimizer)
        scaler.update()
        masters.copy_masters_to_model()
        optimizer.zero_grad()
        model.zero_grad()
        log.append({"scale": scale, "stepped": stepped, "loss": loss.item(), "nonfinite": bad})
    return log


# %% [markdown]
# **Static scaling** is what the paper used: one constant S for the whole run, chosen so
# that S × max |gradient| stays below float16's max; its experiments used constants from
# 8 to 32K (sec. 3.2). `minimp.amp.StaticGradScaler(S)` never changes S; it still skips
# a step whose gradients hold inf or NaN.
#
# **Dynamic scaling**, which the paper listed as future work and NVIDIA's guide,
# PyTorch, Apex, Keras and DeepSpeed have since adopted, lets a scaler find S: start
# high, and
#
#     if some gradient is inf/NaN:   skip the step, S = S x backoff_factor, clean = 0
#     else:                          clean = clean + 1
#                                    if clean == growth_interval:
#                                        S = S x growth_factor, clean = 0
#
# An overflow costs one skipped step and nothing else; a scale that never overflows is
# probably too small, so the scaler keeps probing upwards. `minimp.amp.GradScaler`
# implements it with PyTorch's defaults:

# %%
defaults = GradScaler()
print(
    f"GradScaler(): init_scale 2^{math.log2(defaults.get_scale()):.0f}, "
    f"growth_factor {defaults.get_growth_factor()}, "
    f"backoff_factor {defaults.get_backoff_factor()}, "
    f"growth_interval {defaults.get_growth_interval()}"
)

# %% [markdown]
# ## 4. A scale far too large
#
# Start a dynamic scaler at `BIG_SCALE` on a fresh model. On the very first step the
# scaled gradient of the logits is far beyond float16's max: it overflows to inf. Look
# at that step alone first.
#
# **Predict**: starting at 2^40, how many steps will the dynamic scaler skip before the
# first one that runs, and at which scale will that be?

# %%
dyn_setup = fresh_model(GradScaler(init_scale=BIG_SCALE, growth_interval=DEMO_GROWTH))
dyn_model, dyn_masters, _, dyn_scaler = dyn_setup
stream = batches_forever()
start = [m.data.copy() for m in dyn_masters.parameters()]
first = train_steps(*dyn_setup, stream, 1)[0]
untouched = all(
    np.array_equal(m.data, s) for m, s in zip(dyn_masters.parameters(), start, strict=True)
)
print(
    f"step 0 at S = 2^{math.log2(first['scale']):.0f}: {first['nonfinite']} non-finite "
    f"float16 gradient values, step ran: {first['stepped']}"
)
print(f"masters untouched: {untouched}; next S = 2^{math.log2(dyn_scaler.get_scale()):.0f}")

# %% [markdown]
# The step was skipped: the optimizer never saw the inf gradients, the weights are
# exactly as they were, and the scale halved. Now run the rest, and beside it a static
# scaler stuck at the same `BIG_SCALE`.


# %%
claim(first["scale"] == BIG_SCALE and first["nonfinite"] > 0, "the first step overflows")
claim(not first["stepped"] and untouched, "skipped: the weights are exactly as they were")
claim(dyn_scaler.get_scale() == BIG_SCALE / 2, "and the scale halved")

# %%
log = [first, *train_steps(*dyn_setup, stream, DEMO_STEPS - 1)]
static_setup = fresh_model(StaticGradScaler(BIG_SCALE))
static_start = [m.data.copy() for m in static_setup[1].parameters()]
static_log = train_steps(*static_setup, batches_forever(), DEMO_STEPS)

scales = np.array([r["scale"] for r in log])
ran = np.array([r["stepped"] for r in log])
first_clean = int(np.argmax(ran))
# Print the trace compactly: one line per stretch of steps that all ran or all skipped.
print(f"{'steps':>9}  {'outcome':8} S")
begin = 0
for i in range(1, DEMO_STEPS + 1):
    if i == DEMO_STEPS or ran[i] != ran[begin]:
        steps = f"{begin}" if i - 1 == begin else f"{begin}-{i - 1}"
        used = sorted({int(math.log2(s)) for s in scales[begin:i]}, reverse=True)
        used = f"2^{used[0]}" if len(used) == 1 else f"2^{used[0]} down to 2^{used[-1]}"
        print(f"{steps:>9}  {'ran' if ran[begin] else 'skipped':8} {used}")
        begin = i

halved = all(scales[i + 1] == scales[i] / 2 for i in range(first_clean))
growth_at = next(i for i in range(first_clean + 1, DEMO_STEPS) if scales[i] > scales[i - 1])
clean_before_growth = growth_at - max(i for i in range(growth_at) if not ran[i]) - 1
static_ran = sum(r["stepped"] for r in static_log)
static_moved = not all(
    np.array_equal(m.data, s)
    for m, s in zip(static_setup[1].parameters(), static_start, strict=True)
)
print(
    f"\n{first_clean} skipped steps, each halving S, to the first clean one at "
    f"2^{math.log2(scales[first_clean]):.0f}"
)
print(f"S first doubles at step {growth_at}, after {clean_before_growth} clean steps in a row")
print(
    f"loss: {log[first_clean]['loss']:.3f} at the first clean step, "
    f"{np.mean([r['loss'] for r in log[-10:]]):.3f} over the last 10"
)
print(
    f"static scaler at 2^{math.log2(BIG_SCALE):.0f}: {static_ran} of {DEMO_STEPS} steps ran; "
    f"weights ever moved: {static_moved}"
)

# %% [markdown]
# The dynamic scaler skipped steps, halving S each time, until the gradients fit; then
# it trained. After `DEMO_GROWTH` clean steps in a row it doubled S, and from then on
# it keeps probing: grow, overflow now and then (a skipped step), halve, grow again. The
# scale hugs the largest value that does not overflow, and the loss falls meanwhile.
# The static scaler at the same S overflows on every step and never trains at all: a
# static scale must be chosen right up front. (Figure `04_overflow`.)


# %%
claim(first_clean > 0 and halved, "skipped steps, halving S each time", skips=first_clean)
claim(scales[first_clean] == BIG_SCALE * 0.5**first_clean, "exact halvings")
claim(clean_before_growth == DEMO_GROWTH, "doubled after DEMO_GROWTH clean steps in a row")
claim(scales[growth_at] == 2 * scales[growth_at - 1], "it doubled S")
claim(int((~ran[first_clean:]).sum()) > 0, "overflow now and then")
claim(np.mean([r["loss"] for r in log[-10:]]) < log[first_clean]["loss"], "the loss falls")
claim(static_ran == 0 and not static_moved, "the static scaler never trains at all")

# %%
fig = plots.loss_scale_trace(
    {"dynamic": dyn_scaler.history_arrays(), "static": static_setup[3].history_arrays()},
    title=f"Starting at S = $2^{{{math.log2(BIG_SCALE):.0f}}}$: "
    f"the dynamic scale backs off, the static one never trains",
)
save_figure(fig, "04_overflow")
show(fig)

# %% [markdown]
# ## 5. The scale over a real run
#
# `minimp.tools.experiments.compare_regimes` trains the `mixed-static` (constant S) and
# `mixed-dynamic` regimes on the digits with `CONFIG`; `minimp.tools.figures.figure_loss_scale`
# draws both scales over the run. With the full lesson's default config this is the
# README figure `loss_scale`.

# %%
print(
    f"CONFIG: {CONFIG.steps} steps, static scale 2^{math.log2(CONFIG.static_scale):.0f}, "
    f"dynamic from 2^{math.log2(CONFIG.init_scale):.0f}, growth_interval {CONFIG.growth_interval}"
)
results = experiments.compare_regimes(
    digits, CONFIG, ("mixed-static", "mixed-dynamic"), seeds=(SEED,)
)
fig, _ = minimp.tools.figures.figure_loss_scale(results)
save_figure(fig, "loss_scale")
static_h, dynamic_h = results["mixed-static"][0][0], results["mixed-dynamic"][0][0]
skipped_at = [s for s, k in zip(dynamic_h.step, dynamic_h.skipped, strict=True) if k]
print(
    f"static:  S = 2^{math.log2(static_h.scale[0]):.0f} throughout: "
    f"{len(set(static_h.scale)) == 1}; {sum(static_h.skipped)} skipped"
)
print(
    f"dynamic: S from 2^{math.log2(dynamic_h.scale[0]):.0f} up to "
    f"2^{math.log2(max(dynamic_h.scale)):.0f}, ending at 2^{math.log2(dynamic_h.scale[-1]):.0f}; "
    f"{len(skipped_at)} skipped steps, at {skipped_at}"
)
show(fig)

# %% [markdown]
# The static scale never moves. The dynamic one doubles after each `growth_interval`
# clean steps until a step overflows; that step is skipped (a cross) and the scale
# halves. Does the trace follow the rule of section 3 exactly? Replay the rule on the
# run's record of which steps overflowed, and compare:


# %%
def replay(init_scale: float, overflowed, growth_interval: int) -> list[float]:
    """The scale used at each step, by the dynamic rule, given which steps overflowed."""
    scale, clean, used = init_scale, 0, []
    for inf in overflowed:
        used.append(scale)
        if inf:
            scale, clean = scale * 0.5, 0
        else:
            clean += 1
            if clean == growth_interval:
                scale, clean = scale * 2.0, 0
    return used


replayed = replay(CONFIG.init_scale, dynamic_h.skipped, CONFIG.growth_interval)
replay_matches = replayed == dynamic_h.scale
print(f"the rule, replayed on the overflows, gives the run's scale at every step: {replay_matches}")

# %% [markdown]
# ### Hysteresis: one overflow is not a trend
#
# DeepSpeed and Megatron-LM add **hysteresis** to the rule: back off only after
# `hysteresis` overflows (counted since the last growth), so a single bad batch skips
# its step but leaves S alone. `GradScaler(hysteresis=2)` does that; PyTorch's rule is
# `hysteresis=1`. We feed both a stream with one bad batch (inputs `BAD_FACTOR` times
# too large, NaN loss) at step 3, and a burst of three at steps 10-12.
#
# **Predict**: how many halvings does each scaler make, and how many steps does each
# skip?

# %%
BURST = {3, 10, 11, 12}  # the steps whose batch is broken


def with_bad_batches(bad_steps):
    for i, (x, y) in enumerate(batches_forever()):
        yield (x * BAD_FACTOR if i in bad_steps else x), y


hysteresis_log = {}
for h in (1, 2):
    setup = fresh_model(GradScaler(init_scale=2.0**10, growth_interval=1000, hysteresis=h))
    hysteresis_log[h] = train_steps(*setup, with_bad_batches(BURST), 20)
halvings, skips = {}, {}
for h, h_log in hysteresis_log.items():
    used = [r["scale"] for r in h_log]
    halvings[h] = round(math.log2(used[0] / used[-1]))
    skips[h] = sum(not r["stepped"] for r in h_log)
    print(
        f"hysteresis={h}: {skips[h]} skipped steps, {halvings[h]} halvings, "
        f"S ends 2^{math.log2(used[-1]):.0f}"
    )

# %% [markdown]
# Both skip the same four steps: a step with an inf or NaN gradient is never taken. With
# `hysteresis=1` each of them halves S (four halvings); with `hysteresis=2` the lone bad
# batch at step 3 only uses up the allowance, and the burst halves S three times.

# %%
claim(skips[1] == skips[2] == len(BURST), "both skip the same four steps", skips=skips)
claim(halvings == {1: 4, 2: 3}, "four halvings against three", halvings=halvings)

# %% [markdown]
# ### Skipped steps and a learning-rate schedule
#
# A schedule counts optimizer steps. PyTorch warns when `scheduler.step()` runs before
# `optimizer.step()`, which is what happens on a skipped step. With a warmup that is a
# real bug: the skipped steps at the start of a run (section 4) use up the warmup
# before the model has taken a single step. The fix is one line, since
# `scaler.step(optimizer)` says whether the step ran:
#
#     if scaler.step(optimizer):
#         scheduler.step()
#
# We start at `BIG_SCALE` again, with a linear warmup from 0.1 × lr over 20 steps, and
# step the schedule either always or only when the optimizer step ran.
#
# **Predict**: at the first step that runs, what lr does each version use?

# %%
first_lr = {}
for rule in ("always", "if the step ran"):
    setup = fresh_model(GradScaler(init_scale=BIG_SCALE, growth_interval=DEMO_GROWTH))
    scheduler = LinearLR(setup[2], start_factor=0.1, total_iters=20)
    stream = batches_forever()
    for _ in range(60):
        lr_now = setup[2].param_groups[0]["lr"]
        (row,) = train_steps(*setup, stream, 1)
        if row["stepped"] and rule not in first_lr:
            first_lr[rule] = lr_now
        if rule == "always" or row["stepped"]:
            scheduler.step()
for rule, lr in first_lr.items():
    print(
        f"scheduler stepped {rule:16}: first real step at lr {lr:.4g} ({lr / CONFIG.lr:.2f} x lr)"
    )

# %% [markdown]
# Stepped always, the schedule finished its warmup during the skipped steps, and the
# first step the model takes is at the full lr; stepped only when the step ran, it
# starts at 0.1 × lr as the warmup intends (both printed above).

# %%
claim(abs(first_lr["always"] - CONFIG.lr) < 1e-12, "stepped always: full lr", lr=first_lr["always"])
claim(abs(first_lr["if the step ran"] - 0.1 * CONFIG.lr) < 1e-12, "conditional: 0.1 x lr")

# %% [markdown]
# ## 6. Where the dynamic scale settles, and the advisor's window
#
# Lesson 2's advisor, `stats.loss_scale_window`, computes from a set of float32
# gradients the range of powers of two S that keep 99% of the nonzero gradients at or
# above float16's smallest subnormal while nothing overflows. The dynamic scaler never
# looks at small gradients at all: it only reacts to overflow. Where does it end up
# relative to that window? We train the dynamic run once more (same config and seed:
# the same run, which we check) to get at its model, and ask the advisor about the
# gradients of one batch at the end.


# %%
claim(len(set(static_h.scale)) == 1, "the static scale never moves")
claim(max(dynamic_h.scale) > dynamic_h.scale[0] and len(skipped_at) >= 1, "grows, overflows")
claim(replay_matches, "the rule replayed gives the run's scale at every step")

# %% [markdown]
# ### PyTorch's default `growth_interval`, 2000
#
# `GradScaler()` printed a default `growth_interval` of 2000 (PyTorch's, and NVIDIA's
# guide's), and this run used `CONFIG.growth_interval` = 200 so that the staircase
# shows within 2000 steps. What does the default do on this run?
#
# **Predict**: with 2000, how many steps will be skipped, and where will S end?

# %%
default_run = Run("mixed-dynamic", digits, replace(CONFIG, growth_interval=2000))
default_run.train()
default_h = default_run.history
loss_200 = float(np.mean(dynamic_h.loss[-100:]))
loss_2000 = float(np.mean(default_h.loss[-100:]))
print(
    f"growth_interval 2000: S from 2^{math.log2(default_h.scale[0]):.0f} to "
    f"2^{math.log2(default_h.scale[-1]):.0f}, {sum(default_h.skipped)} skipped steps; "
    f"final loss {loss_2000:.4g} (growth_interval 200: {loss_200:.4g})"
)

# %% [markdown]
# With the default, the scale never moves from its initial 2^16 in these 2000 steps and
# no step is skipped (both printed above), and the final training loss is the same as
# with 200 to within a percent. On this run the staircase buys nothing: 2^16 already
# keeps the gradients that matter here. The shorter interval is in the lesson to
# show the rule at work, not because the run needs it.

# %%
claim(set(default_h.scale) == {2.0**16}, "with 2000 the scale stays at 2^16")
claim(sum(default_h.skipped) == 0, "no step is skipped with 2000")
claim(abs(loss_2000 / loss_200 - 1) < 0.01, "the same final loss", l2000=loss_2000, l200=loss_200)

# %%
again = Run("mixed-dynamic", digits, CONFIG)
again.train()
same_run = again.history.scale == dynamic_h.scale and again.history.loss == dynamic_h.loss
grads = stats.float32_gradients(again.model, again.masters.parameters(), x_batch, y_batch)
low, high = stats.loss_scale_window([g for kinds in grads.values() for g in kinds.values()])
settled = again.history.scale[-1]
print(f"same run as in section 5: {same_run}")
print(
    f"advisor's window: 2^{math.log2(low):.0f} .. 2^{math.log2(high):.0f}; "
    f"the dynamic scale settled at 2^{math.log2(settled):.0f}"
)

# %% [markdown]
# The settled scale lies inside the window. That is no coincidence: the scaler climbs
# until the largest gradients overflow, which is the top of the window by definition,
# and backs off from there. It need not land exactly on the window's top: the window is
# computed from one batch at the end of the run, while the overflows that set the scale
# happened on other batches, earlier. Climbing to just below overflow is also the best a
# single scale can do against underflow, since a smaller S flushes at least as many
# gradients.


# %%
claim(same_run, "the same run as in section 5")
claim(low <= settled <= high, "the settled scale lies inside the window", s=settled)

# %% [markdown]
# ### Does this generalise?
#
# The paper used constant scales from 8 to 32K (2^15), and 8 was enough for SSD
# (sec. 3.2). Our dynamic scale settles many binades higher (printed above). The
# reason is lesson 2's: this small network trains about 89 epochs of 1,438 images, all
# but memorises them, and its gradients end up tiny (lesson 2's median activation
# gradient, 2^-26.7), so the scale that keeps them climbs to just below where the
# largest overflow. A large model on a large data set keeps larger gradients and needs
# a smaller scale; what carries over is the rule, not the number: the scaler finds the
# largest S that does not overflow, on any network.

# %%
claim(settled > 2.0**15, "our scale settles above the paper's largest constant, 32K", s=settled)

# %% [markdown]
# ## 7. The same scale as PyTorch
#
# `minimp.amp.GradScaler` computes its scale in float32 exactly as `torch.amp.GradScaler`
# does, so for the same sequence of overflows it gives the same scale at every step,
# and saves and loads the same `state_dict()`. The lesson does not import PyTorch; the
# tests do: `tests/test_scaler.py` drives both scalers with the same random overflow
# patterns and compares their scales and skipped steps bit for bit.

# %% [markdown]
# ## 8. When backing off cannot help
#
# Overflow caused by the scale goes away when the scale shrinks. Overflow that has
# another cause does not: an inf or NaN already in the input, the targets or the loss,
# or weights that diverged. The scaler then halves S at every step, forever. A scaler
# can be given a floor, `min_scale` (`Run` uses `TrainConfig.min_scale`, printed below:
# a scale below 1 shrinks gradients instead of lifting them), and a scaler that
# would go below it raises `LossScaleUnderflowError` instead of training on silently.
#
# Trigger it on purpose: inputs from a broken preprocessing step, `BAD_FACTOR` times
# too large, so that bright pixels overflow float16 the moment the batch is cast.

# %%
print(f"TrainConfig().min_scale = {TrainConfig().min_scale}")
bad_stream = ((x * BAD_FACTOR, y) for x, y in batches_forever())
bad_x, bad_y = next(batches_forever())
bad_input = minimp.tensor(bad_x * BAD_FACTOR, dtype=minimp.float16).numpy()
print(f"bad batch in float16: {int(np.isinf(bad_input).sum())} inf inputs")
bad_setup = fresh_model(GradScaler(init_scale=2.0**4, min_scale=TrainConfig().min_scale))
error = None
try:
    train_steps(*bad_setup, bad_stream, 100)
except LossScaleUnderflowError as caught:
    error = caught
bad_scaler = bad_setup[3]
print(
    f"scales tried: {[r.scale for r in bad_scaler.history]}, all skipped: "
    f"{all(r.skipped for r in bad_scaler.history)}"
)
print(
    f"raised after {error.overflows} overflowing steps; the scale is still "
    f"{bad_scaler.get_scale():g}\n"
)
print(textwrap.fill(str(error), 88))

# %% [markdown]
# The message says what happened (so many consecutive steps with inf/NaN gradients,
# the scale would fall below its floor), why halving did not help (the overflow does
# not come from the scaling), the usual causes, and what to check in which order: the
# unscaled loss, the weights, then which parameters have non-finite gradients after
# `scaler.unscale_(optimizer)`. Here the first check finds it: the loss is NaN before
# any scaling.


# %%
claim(error is not None and error.overflows == 5, "raised after 5 overflowing steps (2^4 to 1)")
claim(bad_scaler.get_scale() == 1.0, "the scale is still at its floor")
for words in ("NaN or inf in the input data", "Check, in this order", "unscale_", "65504"):
    claim(words in str(error), "the message says what happened and what to check", words=words)

# %%
bad_loss = F.cross_entropy(
    bad_setup[0](minimp.tensor(bad_x * BAD_FACTOR, dtype=minimp.float16)).float(), bad_y
).item()
print(f"unscaled loss on the bad batch: {bad_loss}")

# %% [markdown]
# ## What we measured
#
# - One mixed-precision step, in order: forward in float16, loss in float32, scale,
#   backward (float16 gradients, checked finite), widen to the float32 masters, unscale
#   (exact, and some true gradients are below anything float16 holds), clip, step,
#   update the scale, round the masters into the model.
# - The scale turned most of the output layer's flushed gradients back into numbers.
# - Started far too high, the dynamic scale halved on every skipped step until the
#   gradients fit, doubled after `DEMO_GROWTH` clean steps, and then hugged the largest
#   scale that fits; a static scale that high never trained.
# - Over a real run the dynamic scale follows its rule exactly and settles inside the
#   advisor's window.
# - When overflow does not come from the scale, the scaler stops with an error that
#   says where to look.


# %%
claim(math.isnan(bad_loss), "the loss is NaN before any scaling", loss=bad_loss)

# %%
print(
    f"walkthrough at S = 2^{math.log2(S):.0f}: {nonfinite} non-finite gradients, "
    f"{below_fp16} unscaled values below 2^-24, norm {norm:.3g}, step ran: {stepped}"
)
print(f"logit gradients flushed: {bought['unscaled']:.1%} unscaled, {bought['scaled']:.1%} scaled")
print(
    f"from 2^{math.log2(BIG_SCALE):.0f}: {first_clean} skipped steps to "
    f"2^{math.log2(scales[first_clean]):.0f}, first growth at step {growth_at}; "
    f"static: {static_ran} of {DEMO_STEPS} steps ran"
)
print(
    f"real run: dynamic S 2^{math.log2(dynamic_h.scale[0]):.0f} -> "
    f"2^{math.log2(settled):.0f}, {len(skipped_at)} skipped; advisor's window "
    f"2^{math.log2(low):.0f} .. 2^{math.log2(high):.0f}"
)
print(f"bad inputs: LossScaleUnderflowError after {error.overflows} overflowing steps")

# %% [markdown]
# ## Exercises
#
# 1. In section 4, set `BIG_SCALE = 2.0**30`: predict how many steps are skipped before
#    the first clean one (section 4 started from 2^40), then rerun.
# 2. In section 5, set `CONFIG = TrainConfig(growth_interval=100)`: predict how many
#    skipped steps the dynamic run makes and whether the settled scale moves, then
#    rerun (and check section 6's window).
# 3. In the hysteresis cell, set `BURST = {3, 6, 10, 11, 12}`: predict each scaler's
#    halvings (hint: the allowance is only restored by a growth).
