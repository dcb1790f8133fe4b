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

import numpy as np

import minimp
import minimp.functional as F
import minimp.tools.figures
from minimp import data, nn, optim, stats
from minimp.amp import GradScaler, LossScaleUnderflowError, MasterWeights, StaticGradScaler
from minimp.formats import FLOAT16
from minimp.tools import experiments, plots
from minimp.tools.lessons import QUICK, measured, save_figure, show
from minimp.train import Run, TrainConfig

SEED = 0  # initialisation and data order of every model below
BATCH = 64  # minibatch size, as in the README's runs
WARMUP = 300 if QUICK else 1500  # steps trained before the step we take apart (small grads)
CLIP = 1.0  # gradient clipping: the largest global norm of the unscaled gradients
BIG_SCALE = 2.0**40  # a starting scale far too large, to watch the scaler back off
DEMO_GROWTH = 20  # growth_interval of that experiment: clean steps before the scale doubles
DEMO_STEPS = 100  # steps of that experiment
BAD_FACTOR = 1e5  # inputs this many times too large: they overflow float16
# The real run. The full lesson uses the README's defaults (2000 steps, the scale may
# grow after 200 clean steps); the quick run is shorter, so it grows after 50, to still
# reach the point where a gradient overflows.
CONFIG = TrainConfig(steps=600, growth_interval=50) if QUICK else TrainConfig()

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
measured(walk_scale=S, walk_scale_exact=scale_exact)

# %% [markdown]
# **Backward.** Every gradient is now S times its true value. The model's gradients are
# float16, like its weights; the float32 loss hands the float16 logits a gradient that
# is cast to float16. We look at them: are they all finite, and how close does the
# largest come to float16's max?

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
measured(
    walk_nonfinite=nonfinite,
    walk_headroom_log2=headroom,
    walk_grad_dtypes=sorted({str(p.grad.dtype) for p in model.parameters()}),
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
masters.copy_grads_to_masters()
widened_exact = all(
    np.array_equal(m.grad.numpy(), p.grad.numpy().astype(np.float32))
    for p, m in zip(model.parameters(), masters.parameters(), strict=True)
)
print(
    f"master gradients: {masters.parameters()[0].grad.dtype}; equal to the float16 "
    f"gradients widened: {widened_exact}"
)
measured(walk_widened_exact=widened_exact)

# %% [markdown]
# **Unscale.** `scaler.unscale_(optimizer)` divides the optimizer's gradients (the
# masters') by S, in float32, and records whether any was inf or NaN. After it, the
# gradients have their true size again: some are now smaller than anything float16 can
# hold, which is fine, because they live in float32 from here on.

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
measured(walk_unscale_exact=unscale_exact, walk_below_fp16=below_fp16)

# %% [markdown]
# Those values exist only because of the scale: without it, no float16 gradient could
# have held them.
#
# **Clip.** Gradient clipping compares the global norm of the gradients with a
# threshold, so it must see the *true* gradients: clip after `unscale_`, never before
# (sec. 3.2, and a classic bug). Clipping the scaled gradients would compare a norm S
# times too large with the threshold.

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
measured(walk_norm=norm, walk_clip=CLIP)

# %% [markdown]
# **Step, unless a gradient was inf or NaN.** `scaler.step(optimizer)` calls
# `optimizer.step()` only if `unscale_` found every gradient finite, and returns whether
# it did. The optimizer updates the float32 masters.

# %%
masters_before = [m.data.copy() for m in masters.parameters()]
stepped = scaler.step(optimizer)
moved = np.mean(
    np.concatenate(
        [(m.data != b).ravel() for m, b in zip(masters.parameters(), masters_before, strict=True)]
    )
)
print(f"step ran: {stepped}; {moved:.1%} of the master weights changed")
measured(walk_stepped=stepped, walk_moved=float(moved))

# %% [markdown]
# **Update the scale.** `scaler.update()` chooses the next S. This step was clean, so
# the scaler counts it; after `growth_interval` clean steps in a row it doubles S
# (section 3 gives the whole rule).

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
measured(walk_fraction_differing=differing)

# %% [markdown]
# Most master weights are not float16 numbers: each carries float32 bits that the
# float16 model lacks, and those bits are where updates too small for a float16 weight
# accumulate (lesson 3).

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
measured(bought=bought)

# %% [markdown]
# Unscaled, a large share of the output layer's gradients are zero in float16; with the
# scale, far fewer. Those that still flush are so small that even S times them is
# below float16's smallest subnormal.

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
measured(overflow_first=first, overflow_masters_untouched=untouched)

# %% [markdown]
# The step was skipped: the optimizer never saw the inf gradients, the weights are
# exactly as they were, and the scale halved. Now run the rest, and beside it a static
# scaler stuck at the same `BIG_SCALE`.

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
measured(
    overflow_big_scale=BIG_SCALE,
    overflow_growth_interval=DEMO_GROWTH,
    overflow_first_clean=first_clean,
    overflow_clean_scale=float(scales[first_clean]),
    overflow_halved_each_skip=halved,
    overflow_growth_at=growth_at,
    overflow_clean_before_growth=clean_before_growth,
    overflow_growth_doubles=bool(scales[growth_at] == 2 * scales[growth_at - 1]),
    overflow_later_skips=int((~ran[first_clean:]).sum()),
    overflow_loss_first_clean=log[first_clean]["loss"],
    overflow_loss_last=float(np.mean([r["loss"] for r in log[-10:]])),
    static_ran=static_ran,
    static_moved=static_moved,
)

# %% [markdown]
# The dynamic scaler skipped steps, halving S each time, until the gradients fit; then
# it trained. After `DEMO_GROWTH` clean steps in a row it doubled S, and from then on
# it keeps probing: grow, overflow now and then (a skipped step), halve, grow again. The
# scale hugs the largest value that does not overflow, and the loss falls meanwhile.
# The static scaler at the same S overflows on every step and never trains at all: a
# static scale must be chosen right up front. (Figure `04_overflow`.)

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
measured(
    real_static_constant=len(set(static_h.scale)) == 1,
    real_dynamic_init=dynamic_h.scale[0],
    real_dynamic_max=max(dynamic_h.scale),
    real_dynamic_skipped=len(skipped_at),
    real_replay_matches=replay_matches,
)

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
measured(settle_same_run=same_run, settle_window=[low, high], settle_scale=settled)

# %% [markdown]
# The settled scale lies inside the window. That is no coincidence: the scaler climbs
# until the largest gradients overflow, which is the top of the window by definition,
# and backs off from there. It need not land exactly on the window's top: the window is
# computed from one batch at the end of the run, while the overflows that set the scale
# happened on other batches, earlier. Climbing to just below overflow is also the best a
# single scale can do against underflow, since a smaller S flushes at least as many
# gradients.

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
measured(
    underflow_raised=error is not None,
    underflow_overflows=error.overflows,
    underflow_scale_kept=bad_scaler.get_scale(),
    underflow_message=str(error),
)

# %% [markdown]
# The message says what happened (so many consecutive steps with inf/NaN gradients,
# the scale would fall below its floor), why halving did not help (the overflow does
# not come from the scaling), the usual causes, and what to check in which order: the
# unscaled loss, the weights, then which parameters have non-finite gradients after
# `scaler.unscale_(optimizer)`. Here the first check finds it: the loss is NaN before
# any scaling.

# %%
bad_loss = F.cross_entropy(
    bad_setup[0](minimp.tensor(bad_x * BAD_FACTOR, dtype=minimp.float16)).float(), bad_y
).item()
print(f"unscaled loss on the bad batch: {bad_loss}")
measured(underflow_loss_is_nan=math.isnan(bad_loss))

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
