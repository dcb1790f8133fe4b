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
# # Lesson 10: The transformer, trained in every regime
#
# On the digits (lesson 6) every regime trained alike. Does precision matter on the
# model people actually train in 16 bits, a transformer? Here the small GPT of
# `minimp.gpt` (nanoGPT's shape: embeddings, pre-LayerNorm blocks of causal
# self-attention and a GELU MLP, a final LayerNorm and a linear head) learns tiny
# Shakespeare, character by character, in six regimes: float32; pure float16 (weights,
# gradients and Adam's state); float16 with float32 masters, unscaled and with a
# dynamic loss scale; bfloat16 with masters; and **fp16-everywhere**: PyTorch AMP's
# layout, but with autocast's float32 list switched off, so softmax, LayerNorm and the
# loss run in float16 too.
#
# Every run starts from the same float32 weights, sees the same micro-batches in the
# same order, and trains with nanoGPT's recipe: AdamW with weight decay on the
# matrices only, linear warmup then cosine decay, gradient clipping after
# `scaler.unscale_`, and two micro-batches per step, each loss divided by two.
#
# **Predict first**: which runs will fail, and how? Which parameters will pure float16
# stop updating? How large a loss scale will the dynamic scaler settle on?

# %%
import math
import time
import warnings
from dataclasses import replace

import numpy as np

import minimp
from minimp import data, formats
from minimp import functional as F
from minimp.amp import autocast
from minimp.anomaly import detect_anomaly
from minimp.tensor import float16, tensor
from minimp.tools import plots
from minimp.tools.lessons import claim, save_figure, show
from minimp.train import GPT_REGIMES, SHAKESPEARE_GPT, Run

STEPS = 80  # optimizer steps per regime: what fits six regimes in the lesson's 90 s
CONFIG = replace(SHAKESPEARE_GPT, steps=STEPS, warmup=8, eval_every=10)
corpus = data.load_shakespeare(CONFIG.gpt.block_size)
print(CONFIG.gpt, f"\n{STEPS} steps of {CONFIG.accumulate} micro-batches of {CONFIG.batch_size}")

# %% [markdown]
# ## Training the six regimes
#
# Each run trains step by step inside `minimp.anomaly.detect_anomaly` until the first
# inf or NaN appears, which it locates by op, module and tensor; the rest of the run
# goes on unwatched. The float32 run also keeps, four times, the gradients of each
# block's attention and MLP outputs: the true values a 16-bit format must hold.

# %%
runs, first_bad, step_time, kept = {}, {}, {}, []


def keep_activation_grads(info):
    """The attention and MLP output gradients of the float32 run."""
    kept.append({n: t.grad.numpy().copy() for n, t in info.activations})


for name in GPT_REGIMES:
    config = replace(CONFIG, record_every=STEPS // 4) if name == "fp32" else CONFIG
    run = Run(name, corpus, config)
    hooks = [keep_activation_grads] if name == "fp32" else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run of skipped steps is measured below instead
        while run.steps_done < STEPS:
            if name not in first_bad:
                with detect_anomaly(run.model) as found:
                    run.train(1, hooks=hooks)
                if found.first is not None:
                    first_bad[name] = (run.steps_done - 1, found.first)
            else:
                run.train(1, hooks=hooks)
    runs[name] = run
    timed = Run(name, corpus, CONFIG)  # 5 steps unwatched: the check costs when it is on
    start = time.perf_counter()
    timed.train(5)
    step_time[name] = (time.perf_counter() - start) / 5
    h = run.history
    print(f"{name:16} final val loss "
          f"{h.test_loss[-1]:.3f}  skipped {sum(h.skipped):3d}  scale {h.scale[-1]:g}")  # fmt: skip

# %%
val = {name: run.history.test_loss[-1] for name, run in runs.items()}
for name, (step, anomaly) in first_bad.items():
    print(f"{name:16} step {step}: {anomaly}")

# %% [markdown]
# ## (a) The validation loss: where the curves part
#
# Pure float16 is the one run that fails outright: its loss becomes NaN within the
# first few steps and never comes back. The four runs with float32 masters (unscaled,
# dynamically scaled, bfloat16, fp16-everywhere) end within a few hundredths of a nat
# of float32 after this short run; fp16-everywhere, which lost its first steps to
# overflows (section d), ends furthest from it.

# %%
fine = ("mixed-noscale", "mixed-dynamic", "bf16", "fp16-everywhere")
claim(math.isnan(val["fp16"]) and first_bad["fp16"][0] < 10,
      "its loss becomes NaN within the first few steps", step=first_bad["fp16"][0])  # fmt: skip
claim(all(abs(val[n] - val["fp32"]) < 0.1 for n in fine),
      "end within a few hundredths of a nat of float32", val=val)  # fmt: skip
claim(max(fine, key=lambda n: abs(val[n] - val["fp32"])) == "fp16-everywhere",
      "fp16-everywhere ... ends furthest from it", val=val)  # fmt: skip
gradients = {n: np.concatenate([k[n].ravel() for k in kept]) for n in kept[-1]}
settled = runs["mixed-dynamic"].history.scale[-1]
curves = {n: {"eval_step": r.history.eval_step, "test_loss": r.history.test_loss}
          for n, r in runs.items()}  # fmt: skip
layers = {n.replace("blocks.", "block "): v for n, v in gradients.items()}
fig = plots.transformer_regimes(curves, layers, settled)
save_figure(fig, "transformer_regimes")
show(fig)

# %% [markdown]
# The step times, per regime, on this CPU (float16 is emulated: computed in float32 and
# rounded, so the casts cost; on a GPU, lesson 7, the 16-bit regimes are the fast ones):

# %% tags=["timing"]
for name in GPT_REGIMES:
    print(f"{name:16} {step_time[name] * 1000:5.0f} ms per step")

# %% [markdown]
# ## (d) Where the first inf came from
#
# The check names the op. In **pure float16** it is a `linear` in an MLP's output
# projection, a few steps in: the float16 weights it multiplies have grown by orders
# of magnitude since initialisation. The cause is Adam's second moment: `v` is
# `(1 - 0.999) * g^2`, and for a float16 gradient of 2^-12 that is below float16's
# smallest subnormal, so `v` is stored as 0 while the first moment `m` is not, and the
# update `lr * m / (sqrt(v) + eps)` is divided by eps = 1e-8 alone.

# %%
step, anomaly = first_bad["fp16"]
print(anomaly)
replay = Run("fp16", corpus, CONFIG)
replay.train(step)  # the steps before the overflow, again: what did they leave?
zero_v = {}
for pname, p in replay.updated.items():
    state = replay.optimizer.state[id(p)]
    m, v = (state[k].astype(np.float32) for k in ("exp_avg", "exp_avg_sq"))
    zero_v[pname] = float(((m != 0) & (v == 0)).sum() / max((m != 0).sum(), 1))
grown = float(np.abs(replay.updated[anomaly.module + ".weight"].numpy().astype(np.float32)).max())
initial = float(
    np.abs(Run("fp32", corpus, CONFIG).updated[anomaly.module + ".weight"].numpy()).max()
)
share_zero_v = float(np.mean(list(zero_v.values())))
print(f"{anomaly.module}.weight: largest |w| {initial:.3g} at initialisation, {grown:.3g} "
      f"after {step} steps; m != 0 but v == 0 in {share_zero_v:.0%} (tensor mean)")  # fmt: skip
print(
    "(1 - 0.999) * (2^-12)^2 in float16:", formats.round_to(np.float32(1e-3 * 2.0**-24), "float16")
)
claim(anomaly.phase == "forward" and anomaly.op == "linear" and "mlp.proj" in anomaly.module,
      "it is a `linear` in an MLP's output projection", anomaly=str(anomaly))  # fmt: skip
claim(grown > 100 * initial, "have grown by orders of magnitude", grown=grown, initial=initial)
claim(
    share_zero_v > 0.5, "`v` is stored as 0 while the first moment `m` is not", share=share_zero_v
)
claim(
    formats.round_to(np.float32(1e-3 * 2.0**-24), "float16") == 0,
    "below float16's smallest subnormal",
)

# %% [markdown]
# In **fp16-everywhere** the first inf comes at step 0, in a `mul` on a 0-d tensor:
# the float16 loss times the loss scale 2^16. A loss of about 4.2 nats times 65536 is
# past 65504, so the scaled loss itself is inf before backward even starts; the scaler
# skips the step and halves the scale until the product fits. With the loss in float32
# (autocast's float32 list, as in mixed-dynamic) this cannot happen, and mixed-dynamic
# had no inf at all.

# %%
step, anomaly = first_bad["fp16-everywhere"]
first_loss = runs["fp16-everywhere"].history.loss[0]
print(anomaly, f"\nloss at step 0: {first_loss:.4g}; times 2^16: {first_loss * 2**16:.6g}")
claim(
    step == 0 and anomaly.op == "mul" and anomaly.shape == (),
    "at step 0, in a `mul` on a 0-d tensor",
)
claim(first_loss * 2**16 > formats.FLOAT16.max and abs(first_loss - 4.2) < 0.1,
      "A loss of about 4.2 nats times 65536 is past 65504", loss=first_loss)  # fmt: skip
claim(runs["fp16-everywhere"].history.skipped[0], "the scaler skips the step")
claim("mixed-dynamic" not in first_bad and "bf16" not in first_bad, "mixed-dynamic had no inf")

# %% [markdown]
# ### The controlled case: a LayerNorm variance in float16
#
# At this width nothing else overflows. What autocast's float32 list protects in
# large models is a LayerNorm whose statistics are computed in float16: the sum of
# squares of d activations of magnitude m overflows once d * m^2 passes 65504. minimp's
# `layer_norm` (like PyTorch's kernels and autocast's list) accumulates in float32;
# written out in float16, the same statistic becomes inf just past the threshold:

# %%
for d in (CONFIG.gpt.n_embd, 768, 4096):  # this model, GPT-2 small, a 7B LLaMA
    m = math.sqrt(formats.FLOAT16.max / d)
    x = tensor(np.full((1, d), m * 1.01, np.float32), dtype=float16)
    textbook = F.sum(x * x, dim=-1)  # the sum of squares, stored in float16
    with autocast(minimp.float16):
        kept_finite = bool(np.isfinite(F.layer_norm(x, d).numpy()).all())
    print(f"d = {d:4}: m above {m:6.2f} overflows; at 1.01 m the float16 sum of squares is "
          f"{textbook.item()}, layer_norm under autocast finite: {kept_finite}")  # fmt: skip
    claim(math.isinf(textbook.item()) and kept_finite, "becomes inf just past the threshold", d=d)

# %% [markdown]
# GPT-2 small (d = 768) needs activations of magnitude about 9 for it, a 7B LLaMA
# (d = 4096) about 4: the residual streams of large models carry outlier features far
# larger than that (Dettmers et al., "LLM.int8()", 2022), which is why layer_norm is
# on autocast's float32 list.

# %%
claim(round(math.sqrt(65504 / 768)) == 9 and round(math.sqrt(65504 / 4096)) == 4,
      "about 9 ... about 4")  # fmt: skip

# %% [markdown]
# ## (b) What pure float16 freezes
#
# Pure float16 diverged before its updates could be counted, so we take the nearest
# setting where freezing shows: the same pure float16 model at a late learning rate,
# 1e-4 (nanoGPT's final learning rate for this data), for 10 steps. An Adam step moves
# a weight by about lr; a LayerNorm gain sits at 1.0, where half an ulp is 2^-11 (4.9e-4),
# so most of its updates round away, while the matrices, with weights near 0.02, have
# ulps 64 times finer and keep almost all of theirs.

# %%
late = Run(
    "fp16", corpus, replace(CONFIG, lr=1e-4, warmup=0, cosine=False, steps=10, eval_every=10)
)
late.train()


def kind_of(pname):
    if "ln_" in pname:
        return "LayerNorm gains" if pname.endswith("weight") else "LayerNorm biases"
    return "biases" if pname.endswith("bias") else "matrices and embeddings"


by_kind = {}
for pname, (lost, moved) in late.lost_by_parameter.items():
    total = by_kind.setdefault(kind_of(pname), [0, 0])
    total[0], total[1] = total[0] + lost, total[1] + moved
frozen = {k: lost / moved for k, (lost, moved) in by_kind.items()}
for k, share in frozen.items():
    print(f"{k:24} {share:6.1%} of updates rounded away")
half_ulp_gain = float(np.spacing(np.float16(1.0))) / 2
finer = float(np.spacing(np.float16(1.0)) / np.spacing(np.float16(0.02)))
claim(half_ulp_gain == 2.0**-11 and round(half_ulp_gain, 5) == 0.00049, "2^-11 (4.9e-4)")
claim(finer == 64, "ulps 64 times finer", finer=finer)
claim(frozen["LayerNorm gains"] > 0.5, "most of its updates round away", frozen=frozen)
claim(frozen["matrices and embeddings"] < 0.05, "keep almost all of theirs", frozen=frozen)

# %% [markdown]
# ## (c) Activation gradients, and the scale the scaler settles on
#
# The figure's right panel holds the attention and MLP output gradients of the
# float32 run. Without scaling, the share below float16's smallest
# subnormal would be flushed to zero; at this size it is small, and the mixed-noscale
# run trained as well as float32: the effect the digits' large-batch setting showed
# (lesson 4) needs smaller gradients than this model makes in 80 steps.

# %%
flushed = {}
for layer, values in gradients.items():
    counts = formats.count_categories(values, "float16")
    flushed[layer] = counts["flushed_to_zero"] / max(values.size - counts["zero"], 1)
    print(f"{layer:14} {flushed[layer]:7.3%} of nonzero gradients flush to zero in float16")
print(f"the dynamic scale settled at {settled:g} = 2^{math.log2(settled):.0f}")
claim(max(flushed.values()) < 0.05, "at this size it is small", flushed=flushed)
claim(abs(val["mixed-noscale"] - val["fp32"]) < 0.02, "trained as well as float32", val=val)

# %% [markdown]
# The scaler grows the scale by 2 after every 50 steps without an overflow, from
# 2^16: it settled above it, the gradients being small enough for that.

# %%
claim(settled > 2**16, "it settled above it", settled=settled)

# %% [markdown]
# ## (e) What bfloat16 keeps and what it loses
#
# bfloat16 keeps float32's range: none of these gradients flushes in it, with no loss
# scale at all. It loses precision: 8 significant bits against float16's 11, so
# rounding these gradients to bfloat16 costs about 8 times float16's relative error.
# At this size and length the loss does not show it: bf16 ended as close to float32
# as mixed-dynamic did.

# %%
all_grads = np.concatenate(list(gradients.values()))
normal = np.abs(all_grads) >= formats.FLOAT16.min_normal  # where float16 is not subnormal
rel = {
    fmt: float(np.mean(np.abs(formats.round_to(all_grads[normal], fmt) - all_grads[normal])
                       / np.abs(all_grads[normal])))
    for fmt in ("float16", "bfloat16")
}  # fmt: skip
bf16_flushed = formats.count_categories(all_grads, "bfloat16")["flushed_to_zero"]
print(f"mean relative rounding error: float16 {rel['float16']:.2e}, bfloat16 {rel['bfloat16']:.2e}")
print(f"gradients flushed in bfloat16: {bf16_flushed}")
claim(bf16_flushed == 0, "none of these gradients flushes in it")
claim(6 < rel["bfloat16"] / rel["float16"] < 10, "about 8 times float16's relative error", rel=rel)
claim(abs(val["bf16"] - val["fp32"]) < 0.02 and abs(val["mixed-dynamic"] - val["fp32"]) < 0.02,
      "bf16 ended as close to float32 as mixed-dynamic did", val=val)  # fmt: skip

# %% [markdown]
# ## What we saw
#
# On a transformer, float16 without float32 masters fails fast, and the check names the
# op: Adam's second moment underflowed and the update divided by eps alone. Keeping the
# loss in float16 makes the loss scale itself overflow. Masters with a float32 loss
# (and bfloat16, which keeps float32's range) train like float32 at this size; gradient
# flushing and frozen LayerNorm gains needed a longer run or a later learning rate to
# appear, and the float16 LayerNorm variance needs a wider model: both shown above.
