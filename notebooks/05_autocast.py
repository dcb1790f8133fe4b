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
# # Lesson 5: Autocast, PyTorch's way of mixing precisions
#
# Lessons 3 and 4 built mixed precision the way the paper (Micikevicius et al., "Mixed
# Precision Training", ICLR 2018) and NVIDIA's Apex "O2" do: a **float16 model** and a
# separate **float32 master copy** of its weights. PyTorch's AMP, which you will most
# likely use, does it the other way round: the model's parameters stay **float32**,
# and inside `with torch.autocast(...)` each op casts its inputs to the dtype a
# written policy gives it. Matmuls run in float16; ops whose range or rounding matters
# (exp, softmax, log-softmax, norms, losses) run in float32.
#
# This lesson shows `minimp.amp.autocast`, which follows PyTorch's CUDA lists:
#
# - the policy, op by op, and the dtype each op returns under it;
# - why those ops stay in float32, measured on the logits of a trained network: what
#   exp, softmax, log-softmax, a norm and a loss give when computed in float16;
# - AMP's layout (float32 parameters, a cast per op, a cast cache) against the
#   master-weights layout (float16 model + float32 masters), with the memory of each.

# %%
import math

import numpy as np

import minimp
import minimp.functional as F
from minimp import data, memory
from minimp.amp import POLICY, autocast, policy_table
from minimp.formats import FLOAT16
from minimp.tools import plots
from minimp.tools.lessons import claim, save_figure, show
from minimp.train import Run, TrainConfig

SEED = 0  # every random array below
STEPS = 1500  # training steps before we look at the logits (lesson 4's warm-up)
BATCH = 64  # the batch we look at: the first 64 training images
CONFIG = TrainConfig(steps=STEPS)  # the README's digits MLP, SGD + momentum

rng = np.random.default_rng(SEED)
digits = data.load_digits()
x_batch, y_batch = digits.x_train[:BATCH], digits.y_train[:BATCH]

# %% [markdown]
# ## 1. The policy, op by op
#
# `minimp.amp.POLICY` is the table autocast reads; `policy_table()` prints it. "lower
# precision" means the autocast dtype (float16 here), "float32" means the inputs are
# cast up, "promote to widest" means mixed inputs meet in the wider dtype (PyTorch's
# type promotion), and an op not listed runs in its input's dtype.

# %%
print(policy_table())

# %% [markdown]
# **Predict** before you run the next cell: we call each op on a *float16* tensor (and
# the binary ops on a float16 and a float32 one) inside `autocast(dtype=float16)`. Which
# dtype does each return?

# %%
h = minimp.tensor(rng.standard_normal((4, 8)), dtype=minimp.float16)
w = minimp.tensor(rng.standard_normal((8, 8)))  # float32, like an AMP parameter
h32 = minimp.tensor(rng.standard_normal((4, 8)))
targets = np.array([0, 1, 2, 3])
calls = {
    "matmul": lambda: h32 @ w,
    "linear": lambda: F.linear(h32, w),
    "exp": lambda: F.exp(h),
    "log": lambda: F.log(F.exp(h)),
    "softmax": lambda: F.softmax(h),
    "log_softmax": lambda: F.log_softmax(h),
    "sum": lambda: F.sum(h),
    "cross_entropy": lambda: F.cross_entropy(h, targets),
    "mse_loss": lambda: F.mse_loss(h, h),
    "layer_norm": lambda: F.layer_norm(h, 8),
    "add": lambda: h + h32,
    "relu": lambda: F.relu(h),
}
returned = {}
with autocast(dtype=minimp.float16):
    for op, call in calls.items():
        returned[op] = str(call().dtype)
        print(f"{op:14} {POLICY.get(op, 'its input dtype'):18} -> {returned[op]}")

# %% [markdown]
# The matmul and linear cast their float32 inputs *down* and return float16; exp, log,
# softmax, log-softmax, sum, the losses and layer_norm cast their float16 input *up*
# and return float32; a float16 plus a float32 tensor is float32; relu stays in its
# input's float16.

# %%
expected = {"matmul": "float16", "linear": "float16", "add": "float32", "relu": "float16"}
for op, dtype in returned.items():
    want = expected.get(op, "float32")
    claim(dtype == want, "each op returns the dtype the policy gives it", op=op, dtype=dtype)

# %% [markdown]
# ## 2. Logits of a trained network
#
# The ops on the float32 list are there because float16's range (max 65504) and its 11
# significant bits break them. To see it on real numbers we train the digits MLP of the
# earlier lessons with the `amp` regime (float32 parameters, the forward under
# autocast, a dynamic loss scale) for `STEPS` steps, and take its logits on one batch.
#
# **Predict**: exp overflows float16 once its argument passes ln(65504). How large do
# you expect the largest logit of a well-trained classifier to be: 3, 10, 30?

# %%
run = Run("amp", digits, CONFIG)
run.train()
with autocast(dtype=minimp.float16):
    logits = run.model(minimp.tensor(x_batch))
logits32 = logits.numpy().astype(np.float32)
largest_logit = float(np.abs(logits32).max())
exp_limit = math.log(FLOAT16.max)
overflowing_rows = int(np.sum(logits32.max(axis=1) > exp_limit))
print(f"{run.regime.name}: parameters {sorted({str(p.dtype) for p in run.model.parameters()})}")
print(f"logits under autocast: {logits.dtype}, largest |logit| {largest_logit:.4g}")
print(f"ln(65504) = {exp_limit:.4f}: exp of anything larger is inf in float16")
print(f"{overflowing_rows} of {BATCH} examples have a logit above it")

# %% [markdown]
# The largest logit (printed above) is far beyond ln(65504), about 11.09, and so are
# most examples' largest logits: a confident classifier pushes the right class's logit
# up. (The logits themselves are float16, from the float16 matmul; that is fine, they
# are far below 65504.)

# %%
claim(largest_logit > 2 * exp_limit, "the largest logit is far beyond ln(65504)", v=largest_logit)
claim(overflowing_rows > BATCH / 2, "most examples' largest logit is above it", n=overflowing_rows)

# %% [markdown]
# ## 3. The float32 list, measured
#
# ### exp
#
# `F.exp` of a float16 tensor computes in float32 and rounds the result to float16 (the
# IEEE result, lesson 1), so exp(12) = 162755 becomes inf. Under autocast the same call
# casts its input up and returns float32.

# %%
twelve = minimp.tensor([12.0], dtype=minimp.float16)
exp16 = F.exp(twelve).item()
with autocast(dtype=minimp.float16):
    exp_autocast = F.exp(twelve)
print(
    f"exp(float16 12) = {exp16}; under autocast: {exp_autocast.item():.6g} ({exp_autocast.dtype})"
)
exp_logits16 = F.exp(logits).numpy()
print(f"exp of the float16 logits: {int(np.isinf(exp_logits16).sum())} inf values")

# %%
claim(math.isinf(exp16), "exp of a float16 12 is inf", value=exp16)
claim(np.isfinite(exp_autocast.item()) and str(exp_autocast.dtype) == "float32", "autocast: finite")

# %% [markdown]
# ### softmax
#
# softmax(z) = exp(z) / Σ exp(z). Written naively in float16 (exp, then a float16
# sum, then a division, each rounded to float16), every row with a logit above 11.09
# divides inf by inf. minimp's `F.softmax` subtracts the row's max first and works in
# float32 inside, as PyTorch's kernels do; but asked for a float16 *result*, it still
# rounds the small probabilities, and any below 2^-25 become exactly 0. Under autocast
# the result is float32.
#
# **Predict**: of the 640 probabilities in this batch, how many will the naive float16
# softmax get wrong, and how many will the stable one flush to 0?

# %%
z16 = logits.numpy()  # float16
with np.errstate(over="ignore", invalid="ignore"):
    e16 = np.exp(z16)  # NumPy's float16 exp: rounded to float16, inf above 11.09
    naive16 = e16 / e16.sum(axis=1, keepdims=True, dtype=np.float16)
naive_nan_rows = int(np.isnan(naive16).any(axis=1).sum())
stable16 = F.softmax(logits).numpy()
with autocast(dtype=minimp.float16):
    probs32 = F.softmax(logits).numpy()
flushed16 = int(np.sum(stable16 == 0))
flushed32 = int(np.sum(probs32 == 0))
print(f"naive float16 softmax: {naive_nan_rows} of {BATCH} rows contain NaN")
print(f"stable, float16 result: {flushed16} of {stable16.size} probabilities are exactly 0")
print(f"under autocast ({probs32.dtype}): {flushed32} are 0; smallest {probs32.min():.3g}")

# %%
claim(naive_nan_rows == overflowing_rows, "every row with a logit above 11.09 gives NaN")
claim(flushed16 > 0 and flushed32 == 0, "float16 flushes probabilities, float32 none", n=flushed16)

# %% [markdown]
# ### log-softmax, and the loss built on it
#
# Cross-entropy needs log p of the right class. Take the log of a float16 softmax and
# every flushed probability becomes -inf, while a fused log-softmax never forms p at all.
# And at the other end, a confident right answer has p within 2^-11 of 1, which rounds
# to exactly 1.0 in float16: its loss, -log p, becomes 0.

# %%
with np.errstate(divide="ignore"):
    log_of_16 = np.log(stable16.astype(np.float32))
with autocast(dtype=minimp.float16):
    logp32 = F.log_softmax(logits).numpy()
rows = np.arange(BATCH)
loss32 = float(-logp32[rows, y_batch].mean())  # what autocast's cross_entropy computes
loss_from16 = float(-log_of_16[rows, y_batch].mean())
zero_terms = int(np.sum(stable16[rows, y_batch] == 1.0))
with autocast(dtype=minimp.float16):
    ce = F.cross_entropy(logits, y_batch)
print(f"log of the float16 softmax: {int(np.isinf(log_of_16).sum())} entries are -inf")
print(f"log_softmax under autocast: {int(np.isinf(logp32).sum())} are -inf")
print(f"right-class probability rounded to 1.0 in float16: {zero_terms} of {BATCH} examples")
print(
    f"loss from the float16 probabilities {loss_from16:.4g}; in float32 {loss32:.4g} "
    f"(cross_entropy under autocast: {ce.item():.4g}, {ce.dtype})"
)

# %%
claim(np.isinf(log_of_16).sum() == flushed16, "every flushed probability's log is -inf")
claim(not np.isinf(logp32).any(), "the fused log-softmax has no -inf")
claim(zero_terms > BATCH / 2, "most right answers round to p = 1.0, loss 0", n=zero_terms)
claim(str(ce.dtype) == "float32" and abs(ce.item() - loss32) < 1e-6 * max(loss32, 1), "ce = loss32")
right = -logp32[rows, y_batch]  # each example's float32 loss
lost_share = float(right[stable16[rows, y_batch] == 1.0].sum() / right.sum())
print(f"share of the float32 loss carried by the examples float16 rounds to 0: {lost_share:.2%}")

# %% [markdown]
# Most of the batch's examples contribute a loss of exactly 0 from float16 probabilities
# (the count printed above). Their true losses are tiny: together they carry a few
# percent of the batch's loss (the share just printed), so the float16 loss comes out
# only a little below the float32 one; the batch loss is dominated by the few examples
# the network is still unsure of. What float16 rounds away is the signal of the
# examples it has nearly learned.

# %%
claim(0 < lost_share < 0.05, "the zeroed examples carry a few percent of the loss", s=lost_share)
claim(loss_from16 < loss32, "the float16 loss is a little below", l16=loss_from16, l32=loss32)

# %% [markdown]
# ### a norm
#
# LayerNorm divides by the standard deviation of its input row. In a transformer's
# residual stream activations of a few hundred are common (T5's reach 66246, issue
# transformers#5651). Squared in float16, anything above 256 overflows (256² = 65536).
# We take a row of 512 activations with a standard deviation of 300 and compute the
# variance naively in float16, then with `F.layer_norm` under autocast (float32).

# %%
act16 = (300 * rng.standard_normal(512)).astype(np.float16)
with np.errstate(over="ignore", invalid="ignore"):
    centered16 = act16 - act16.mean(dtype=np.float16)
    var16 = (centered16 * centered16).mean(dtype=np.float16)
    normed16 = centered16 / np.sqrt(var16 + np.float16(1e-5))
with autocast(dtype=minimp.float16):
    normed32 = F.layer_norm(minimp.tensor(act16, dtype=minimp.float16), 512).numpy()
print(f"largest |activation| {float(np.abs(act16).max()):.4g}")
print(f"float16 variance: {var16}; normalised row: {np.unique(normed16)[:3]} ...")
print(
    f"layer_norm under autocast ({normed32.dtype}): "
    f"mean {normed32.mean():.2g}, std {normed32.std():.4f}"
)

# %%
claim(np.isinf(var16), "the float16 variance overflows", var=float(var16))
claim(np.all(normed16 == 0), "the float16 layer norm outputs all zeros")
claim(abs(normed32.std() - 1) < 1e-3, "float32 layer_norm: std 1", std=float(normed32.std()))

# %% [markdown]
# The float16 variance is inf, and every normalised value is x / inf = 0: the layer
# outputs a row of zeros. (minimp's `F.layer_norm` accumulates its mean and variance in
# float32 whatever its input dtype, as PyTorch's kernels do; the naive float16 version
# above is what that rule prevents.)
#
# ### a loss
#
# Late in training a regression's errors are small. Take targets of about 0.01 and
# predictions off by about 1e-5: the squared errors are about 1e-10, far below
# float16's 2^-25 (about 3e-8).

# %%
target = 0.01 * rng.standard_normal(1000).astype(np.float32)
prediction = target + 1e-5 * rng.standard_normal(1000).astype(np.float32)
p16 = minimp.tensor(prediction, dtype=minimp.float16)
t16 = minimp.tensor(target, dtype=minimp.float16)
mse16 = F.mse_loss(p16, t16)
with autocast(dtype=minimp.float16):
    mse_autocast = F.mse_loss(p16, t16)
mse_true = float(np.mean((p16.numpy().astype(np.float64) - t16.numpy()) ** 2))
print(f"mse_loss of float16 tensors: {mse16.item()} ({mse16.dtype})")
print(f"under autocast: {mse_autocast.item():.4g} ({mse_autocast.dtype}); exact {mse_true:.4g}")

# %%
claim(mse16.item() == 0.0 and mse_true > 0, "the float16 loss is exactly 0", mse=mse16.item())
claim(
    abs(mse_autocast.item() / mse_true - 1) < 1e-4,
    "autocast's loss is right",
    v=mse_autocast.item(),
)

# %% [markdown]
# The float16 loss is exactly 0 even though its sum was accumulated in float32: the
# mean itself (the exact value printed) is below what float16 can hold. Under autocast the loss is
# float32 and right. (The gradient would still flow, since backward starts from the
# scaled loss in float32; but a logged loss of 0 is a lie.)

# %% [markdown]
# ## 4. Two layouts of mixed precision
#
# - **master weights** (the paper, Apex O2, lessons 3-4, regime `mixed-dynamic`): the
#   model *is* float16; the optimizer updates a float32 copy; each step rounds the
#   copy into the model.
# - **AMP** (PyTorch, regime `amp`): the model is float32, and so are its gradients
#   and the optimizer's state. Inside `autocast`, a matmul casts a float32 weight to
#   float16 on the fly. The float16 copy of each parameter is made once per autocast
#   region and cached, so a layer called twice in one forward pass casts once; the
#   cast is part of the graph, so its backward casts the gradient back to float32 and
#   the parameter receives a float32 gradient. The float32 parameter is, in effect,
#   the master weight.
#
# We look at the cache: two forward passes in one region, and the copies it holds.

# %%
model = run.model
n_params = sum(p.data.size for p in model.parameters())
with autocast(dtype=minimp.float16) as region:
    out = model(minimp.tensor(x_batch))
    copies_after_one = len(region._cache)  # the region's cast cache: one copy per weight
    model(minimp.tensor(x_batch))
    copies_after_two = len(region._cache)
    loss = F.cross_entropy(out, y_batch)
loss.backward()
grad_dtypes = sorted({str(p.grad.dtype) for p in model.parameters()})
model.zero_grad()
n_weights = len(model.parameters())
print(
    f"{n_weights} parameters; cached float16 copies after one pass {copies_after_one}, "
    f"after two {copies_after_two}"
)
print(f"the parameters' gradients: {grad_dtypes}")

# %%
claim(copies_after_one == copies_after_two == n_weights, "one cached copy per parameter")
claim(grad_dtypes == ["float32"], "the float32 parameter receives a float32 gradient")

# %% [markdown]
# **Predict**: which layout stores more bytes in one training step of this MLP? Count
# per parameter: AMP holds a float32 weight, a float32 gradient and (SGD with momentum)
# a float32 momentum, plus the float16 copy while the step runs; master weights hold a
# float16 weight, a float16 gradient, a float32 master, its float32 gradient and the
# momentum.
#
# `minimp.memory.memory_report` gives the **stored** bytes of one step, by category
# (the float16 copies AMP's linears save for backward count as activations);
# `minimp.memory.measure_peak` gives the **peak** bytes the allocator saw during one
# step on this CPU (which includes minimp's float32 temporaries).

# %% tags=["peak"]
layouts = ("amp", "mixed-dynamic")
stored = {name: memory.memory_report(Run(name, digits, CONFIG)) for name in layouts}
peak = {name: memory.measure_peak(Run(name, digits, CONFIG)) for name in layouts}
print(f"{n_params:,} parameters")
print(f"{'bytes':16}" + "".join(f"{name:>15}" for name in layouts))
for category in [*stored["amp"], "total (stored)"]:
    row = [
        sum(m.values()) if category.startswith("total") else m[category] for m in stored.values()
    ]
    print(f"{category:16}" + "".join(f"{b:>15,}" for b in row))
print(f"{'peak (measured)':16}" + "".join(f"{peak[name]:>15,}" for name in layouts))
per_param = {
    name: {k: v / n_params for k, v in m.items() if k != "activations"}
    for name, m in stored.items()
}
for name, row in per_param.items():
    print(f"{name}: bytes per parameter " + ", ".join(f"{k} {v:g}" for k, v in row.items()))
total = {name: sum(m.values()) for name, m in stored.items()}
print(f"stored total, amp ÷ mixed-dynamic: {total['amp'] / total['mixed-dynamic']:.2f}")
print(f"peak, amp ÷ mixed-dynamic: {peak['amp'] / peak['mixed-dynamic']:.2f}")

# %% [markdown]
# Per parameter (the printed bytes per parameter), AMP keeps 4 bytes of weight, 4 of
# gradient and 4 of momentum and no masters; master weights keep 2 + 4 bytes of
# weights and 2 + 4 of gradients, and the same 4 of momentum. AMP's activations are
# larger, because they include the float16 weight copies its linears save. On this MLP
# AMP stores fewer bytes in total, and its measured peak is lower too (both ratios
# printed above). With Adam instead of SGD, each layout adds one more float32 moment,
# 4 bytes per parameter (printed below): AMP then holds 16 bytes per parameter,
# master weights 20 here. The "16 bytes per parameter" usually quoted for master
# weights with Adam (2 + 2 + 4 + 4 + 4) assumes the float32 gradient is not kept as a
# buffer of its own, which minimp's `MasterWeights` does keep. Either way the layouts
# cost about the same per parameter, and AMP keeps the model in float32, where the
# optimizer, checkpoints and any op outside the policy see it.

# %%
with_adam = {name: sum(row.values()) + 4 for name, row in per_param.items()}
print(f"bytes per parameter with Adam (one more float32 moment): {with_adam}")
amp_row, mix_row = per_param["amp"], per_param["mixed-dynamic"]
claim(with_adam == {"amp": 16, "mixed-dynamic": 20}, "with Adam: 16 and 20", b=with_adam)
claim(
    amp_row["parameters"] == 4 and amp_row["master weights"] == 0, "AMP: 4-byte weights, no masters"
)
claim(amp_row["gradients"] == 4 and amp_row["optimizer state"] == 4, "AMP: 4 + 4 bytes")
claim(mix_row["parameters"] == 2 and mix_row["master weights"] == 4, "masters: 2 + 4 bytes")
claim(mix_row["gradients"] == 6 and mix_row["optimizer state"] == 4, "masters: 2 + 4 grads, 4")
claim(
    stored["amp"]["activations"] > stored["mixed-dynamic"]["activations"],
    "AMP's activations larger",
)
claim(total["amp"] < total["mixed-dynamic"], "AMP stores fewer bytes here", total=total)
claim(peak["amp"] < peak["mixed-dynamic"], "AMP's measured peak is lower", peak=peak)

# %% [markdown]
# The figure sets the two halves of this lesson side by side (figure `05_autocast`):
# the logits of section 2 against the line where float16's exp overflows, and the
# stored bytes of each layout.

# %%
fig = plots.autocast_overview(logits32, stored)
save_figure(fig, "05_autocast")
show(fig)

# %% [markdown]
# ## What we measured
#
# - Under autocast each op returns the dtype PyTorch's policy gives it: matmul and
#   linear float16; exp, log, softmax, log-softmax, sums, norms and losses float32.
# - On a trained MLP's logits, float16 breaks each op on the float32 list: exp
#   overflows past 11.09, a naive softmax gives NaN, a float16 softmax flushes small
#   probabilities (their log is -inf) and rounds confident ones to 1.0 (loss 0), a
#   float16 variance overflows, and a small float16 loss is 0.
# - AMP keeps float32 parameters and casts each once per region; it stores no masters
#   and float32 gradients only, and on this MLP less in total than the master-weights
#   layout.

# %%
print(f"largest logit {largest_logit:.4g}; exp(float16 12) = {exp16}")
print(f"naive float16 softmax: {naive_nan_rows} NaN rows; stable float16: {flushed16} zeros")
print(f"loss from float16 probabilities {loss_from16:.4g} vs float32 {loss32:.4g}")
print(f"stored: amp {total['amp']:,} B, mixed-dynamic {total['mixed-dynamic']:,} B")

# %% [markdown]
# ## Exercises
#
# 1. Run section 3's softmax with `logits / 4` (a less confident network): predict how
#    many rows the naive float16 softmax still ruins, then rerun.
# 2. In section 1, wrap a call in `autocast(enabled=False)` inside the region: predict
#    what `F.linear(h32, w)` returns then, and why PyTorch lets you do this for a part
#    of a model that must stay float32.
# 3. Change the activations' standard deviation in the norm cell from 300 to 100:
#    predict whether the float16 variance still overflows (100 × 100 = 10⁴, but the
#    *sum* of 512 such squares?), then rerun. Hint: NumPy's float16 `mean` accumulates
#    in float16 only if told to, as here with `dtype=np.float16`.
