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
# # Lesson 11: Below 8 bits and inside the accumulator
#
# Lesson 7 gave every fp8 tensor one scale. What low-precision training runs on now
# goes further in two directions:
#
# - **a scale per block**: the OCP Microscaling formats (MXFP8, MXFP4: 32 values share
#   a power-of-two scale), NVIDIA's NVFP4 (16 four-bit values share an e4m3 scale, and a
#   float32 scale per tensor sits above them), DeepSeek-V3's fp8 tiles (1x128 and
#   128x128). Blocks run along each matmul's reduction axis, so a weight is quantized
#   along one axis in the forward pass and along the other in backward;
# - **the accumulator**: a dot product of K terms rounds its running sum K times, and
#   DeepSeek-V3 (arXiv 2412.19437, sec. 3.3.2) reports that Hopper's fp8 tensor cores
#   keep only about 14 bits of it, so they promote the partial sum to float32 every 128
#   products.
#
# You will measure: (1) what one outlier does to one scale per tensor and to a scale
# per block; (2) how a dot product's error grows with K in each accumulator; (3) the
# digits network trained with MXFP8 and NVFP4 matmuls beside per-tensor fp8 and
# bfloat16; (4) delayed against current per-tensor scaling on a spike.

# %%
from dataclasses import replace

import numpy as np

from minimp import data
from minimp.formats import FLOAT4_E2M1FN, FLOAT8_E4M3FN, FLOAT32, round_to
from minimp.regimes import Regime
from minimp.scaling import (
    MXFP4,
    MXFP8_E4M3,
    NVFP4,
    BlockFormat,
    BlockScaling,
    CurrentScaling,
    DelayedScaling,
    TensorScaling,
    quantize,
)
from minimp.scaling.accumulate import matmul, running_sum
from minimp.tools import plots
from minimp.tools.lessons import claim, save_figure, show
from minimp.train import SHAKESPEARE_GPT, Run, TrainConfig

N_VALUES, SIGMA, OUTLIER = 4096, 0.01, 1000  # section 1: N(0, SIGMA) and one value of 1000
LENGTHS = [2**k for k in range(6, 14)]  # section 2: the dot products' lengths K
STEPS = 400  # section 3: training steps per regime (the digits MLP, SGD, batch 64)
SPIKE_STEP, CASTS = 20, 40  # section 4: a 64x spike at cast 20 of 40
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. One outlier, one scale per tensor or one per block
#
# Take 4096 activations of size about 0.01 and one of 1000 (outliers like it are
# routine in transformer activations). A per-tensor scale must fit the outlier into the
# format's max, so every other value lands far down the format's range, in its
# subnormals or below them. A "block" as long as the tensor is exactly one per-tensor
# scale, so the same quantizer shows both; the per-tensor scale here is amax / max
# (current scaling).
#
# **Predict** before running: which values does MXFP8 flush, and which does one fp8
# scale per tensor flush? What does a 4-bit format with one scale per tensor keep?

# %%
x = (rng.standard_normal(N_VALUES) * SIGMA).astype(np.float32)
x[OUTLIER] = 1000.0
per_tensor_fp8 = BlockFormat("fp8 per tensor", FLOAT8_E4M3FN, (N_VALUES, 1), FLOAT32, "amax")
per_tensor_fp4 = BlockFormat("fp4 per tensor", FLOAT4_E2M1FN, (N_VALUES, 1), FLOAT32, "amax")
schemes = {"fp8 per tensor": per_tensor_fp8, "mxfp8": MXFP8_E4M3, "fp4 per tensor": per_tensor_fp4,
           "nvfp4": NVFP4, "mxfp4": MXFP4}  # fmt: skip
dequantized = {name: quantize(x, fmt).values for name, fmt in schemes.items()}
others = np.arange(N_VALUES) != OUTLIER
flushed = {n: float(((q == 0) & (x != 0))[others].mean()) for n, q in dequantized.items()}
error = {
    n: float(np.sqrt(np.mean((q - x)[others] ** 2) / np.mean(x[others] ** 2)))
    for n, q in dequantized.items()
}
for name in schemes:
    print(f"{name:15s} flushes {flushed[name]:7.2%} of the other values, "
          f"relative RMS error {error[name]:.3g}")  # fmt: skip
mx_flushed = np.flatnonzero((dequantized["mxfp8"] == 0) & (x != 0))
print("MXFP8 flushed indices:", mx_flushed, "(the outlier's block:", OUTLIER // 32 * 32, "...)")

# %% [markdown]
# One e4m3 scale for the whole tensor flushes a sizeable share of the small values to
# zero (about one in six here) and leaves the rest with an error several times MXFP8's;
# MXFP8 flushes only values inside the outlier's own block of 32, and the rest keep
# e4m3's full precision. With 4-bit elements a single scale per tensor flushes
# everything but the outlier; the block scales of NVFP4 and MXFP4 keep the tensor, at
# an error of about a tenth, the price of 4 bits (NVFP4's e4m3 block scales a little
# closer than MXFP4's powers of two).

# %%
claim(flushed["fp8 per tensor"] > 0.1, "one e4m3 scale flushes a sizeable share",
      flushed=flushed["fp8 per tensor"])  # fmt: skip
claim(error["fp8 per tensor"] > 3 * error["mxfp8"], "an error several times MXFP8's", error=error)
claim(set(mx_flushed // 32) <= {OUTLIER // 32}, "MXFP8 flushes only inside the outlier's block",
      blocks=sorted(set(mx_flushed // 32)))  # fmt: skip
claim(flushed["fp4 per tensor"] == 1.0, "a 4-bit scale per tensor flushes everything else",
      flushed=flushed["fp4 per tensor"])  # fmt: skip
claim(max(error["nvfp4"], error["mxfp4"]) < 0.2 and error["nvfp4"] <= error["mxfp4"],
      "block scales keep the tensor at an error of about a tenth", error=error)  # fmt: skip

# %%
fig = plots.outlier_blocks(x, dequantized, OUTLIER)
save_figure(fig, "block_outlier")
show(fig)

# %% [markdown]
# ## 2. The accumulator
#
# A running sum in a format with p significant bits stops growing once each term is
# below half an ulp of the sum. The simplest case: a bfloat16 sum of ones (8 bits)
# stops at 2^8 = 256, a float16 one (11 bits) at 2048.

# %%
ones = np.ones(4096)
stops = {acc: float(running_sum(ones, acc)) for acc in ("bfloat16", "float16", "float32")}
print("a running sum of 4096 ones:", stops)
claim(stops["bfloat16"] == 256 and stops["float16"] == 2048, "stops at 256 and at 2048",
      stops=stops)  # fmt: skip

# %% [markdown]
# Now dot products of fp8 (e4m3) operands, as an fp8 GEMM computes them: positive
# values in [0, 1), so the sum grows with K, and the relative error against the exact
# sum (float64) for each accumulator: float16 and bfloat16 running sums; the 14-bit
# accumulator of Hopper's fp8 tensor cores (e8m13) with and without promotion to
# float32 every 128 products; float32 (BLAS).
#
# **Predict**: which curves grow with K, and which stay flat?

# %%
a = round_to(rng.uniform(0, 1, (4, LENGTHS[-1])), FLOAT8_E4M3FN).astype(np.float32)
b = round_to(rng.uniform(0, 1, (LENGTHS[-1], 1)), FLOAT8_E4M3FN).astype(np.float32)
accumulators = ("float16", "bfloat16", "e8m13", "e8m13_promote128", "float32")
dot_error = {acc: [] for acc in accumulators}
for k in LENGTHS:
    exact = a[:, :k].astype(np.float64) @ b[:k].astype(np.float64)
    for acc in accumulators:
        got = matmul(a[:, :k], b[:k], acc).astype(np.float64)
        dot_error[acc].append(float(np.median(np.abs(got - exact) / exact)))
for acc, errs in dot_error.items():
    print(f"{acc:17s}", " ".join(f"{e:8.2g}" for e in errs))

# %% [markdown]
# The bfloat16 and float16 sums are off by tens of percent at the longest K (a
# bfloat16 sum of thousands of terms has lost most of them); the 14-bit accumulator
# without promotion grows with K, to more than ten times its error at K = 64 and above
# 10^-3 at K = 8192; promoted every
# 128 products it stays flat, within a factor of a few of its short-K error, because
# no partial sum is longer than 128 terms. float32 stays below 10^-6.

# %%
last = {acc: errs[-1] for acc, errs in dot_error.items()}
claim(min(last["bfloat16"], last["float16"]) > 0.1, "off by tens of percent", last=last)
e14, promoted = dot_error["e8m13"], dot_error["e8m13_promote128"]
claim(e14[-1] > 10 * e14[0] and e14[-1] > 1e-3, "without promotion grows with K", errors=e14)
claim(max(promoted) < 4 * promoted[0] and promoted[-1] < e14[-1] / 10,
      "promoted every 128 products it stays flat", errors=promoted)  # fmt: skip
claim(max(dot_error["float32"]) < 1e-6, "float32 stays below 10^-6", errors=dot_error["float32"])

# %%
fig = plots.accumulation_error(LENGTHS, dot_error)
save_figure(fig, "accumulation")
show(fig)

# %% [markdown]
# ## 3. Training in MXFP8 and NVFP4
#
# The regimes `mxfp8` and `nvfp4` (`python -m minimp policies`) replace every hidden
# layer's `Linear` by a `BlockLinear`: forward x and W quantized along K, the input
# gradient's GEMM with the output gradient and W along the output axis, the weight
# gradient's GEMM with the output gradient and x along the batch. The classifier head
# stays float32, as the recipes in use keep it in higher precision. Beside them: `fp8`
# (one delayed scale per tensor), `bf16` (bfloat16 compute, float32 masters) and
# `fp32`, on the digits MLP of the earlier lessons, the same initialisation and batches;
# and, to find where it breaks, MXFP4: 4-bit elements with MX's power-of-two scales.
#
# **Predict**: which of these end near fp32's training loss?

# %%
mxfp4 = Regime("mxfp4", "MXFP4 matmuls", "float32", "float32", "float32",
               matmul=BlockScaling("mxfp4", MXFP4, MXFP4, MXFP4))  # fmt: skip
digits = data.load_digits()
config = TrainConfig(steps=STEPS, eval_every=STEPS)
histories = {}
for regime in ("fp32", "bf16", "fp8", "mxfp8", "nvfp4", mxfp4):
    run = Run(regime, digits, config)
    histories[run.regime.name] = run.train()
final = {name: float(np.mean(h.loss[-100:])) for name, h in histories.items()}
ratio = {name: loss / final["fp32"] for name, loss in final.items()}
for name, h in histories.items():
    print(f"{name:6s} final training loss {final[name]:.4f} ({ratio[name]:.2f}x fp32), "
          f"test accuracy {h.test_accuracy[-1]:.2%}")  # fmt: skip

# %% [markdown]
# bfloat16, per-tensor fp8 and MXFP8 end within an eighth of fp32's training loss:
# 8 bits with a good scale are enough for this network. The 4-bit formats are where it
# starts to break: NVFP4 and MXFP4 end clearly above fp32 (by 15% or more) and above
# every 8-bit regime, the price of elements with one bit of mantissa, though both
# still train.

# %%
eight_bit = max(ratio[n] for n in ("bf16", "fp8", "mxfp8"))
four_bit = min(ratio["nvfp4"], ratio["mxfp4"])
claim(eight_bit < 1.125, "within an eighth of fp32's training loss", ratio=ratio)
claim(four_bit > 1.15 and four_bit > eight_bit, "4-bit ends clearly above fp32", ratio=ratio)
claim(max(ratio.values()) < 2 and all(np.isfinite(h.loss).all() for h in histories.values()),
      "both still train", ratio=ratio)  # fmt: skip

# %%
fig = plots.regimes_compared({n: [h.to_dict()] for n, h in histories.items()}, smooth=25,
                             title="The digits MLP, block-scaled matmuls")  # fmt: skip
save_figure(fig, "block_training")
show(fig)

# %% [markdown]
# ### The transformer's matmuls
#
# The same recipes on the small GPT of lesson 10 (`SHAKESPEARE_GPT`: 2 layers, 32
# wide, a 32-character context), cut to 30 steps to fit the lesson's minute: every
# `Linear` of attention and MLP becomes a `BlockLinear` (their widths, 32, 96 and 128,
# are whole blocks of 32 and of 16), the 65-wide head stays float32. The attention
# products q k^T and softmax(.) v are not `Linear` layers and stay in float32 here.
#
# **Predict**: after 30 steps, does NVFP4's validation loss stand out as its training
# loss did on the digits?

# %%
GPT_STEPS = 30
gpt_config = replace(SHAKESPEARE_GPT, steps=GPT_STEPS, eval_every=GPT_STEPS)
corpus = data.load_shakespeare(gpt_config.gpt.block_size)
gpt_val = {}
for regime in ("fp32", "fp8", "mxfp8", "nvfp4"):
    history = Run(regime, corpus, gpt_config).train()
    gpt_val[regime] = history.test_loss[-1]
    print(f"{regime:6s} validation loss after {GPT_STEPS} steps {gpt_val[regime]:.4f} "
          f"({gpt_val[regime] / gpt_val['fp32']:.3f}x fp32)")  # fmt: skip

# %% [markdown]
# It does not: every recipe ends within 2% of fp32's validation loss (printed above).
# Thirty steps of a model this small are dominated by learning the character
# frequencies, which 4 bits with a good scale per 16 values carry; the digits run above,
# trained to a loss a thousand times smaller, is where the elements' single mantissa bit
# shows. On a transformer at scale the cost is what NVIDIA's NVFP4 pretraining report
# (arXiv 2509.25149: a 12B model, 10T tokens) measures; this one is too small and too
# short to show it.

# %%
claim(all(np.isfinite(v) for v in gpt_val.values()), "every recipe trains", val=gpt_val)
claim(max(abs(v / gpt_val["fp32"] - 1) for v in gpt_val.values()) < 0.02,
      "within 2% of fp32's validation loss", val=gpt_val)  # fmt: skip

# %% [markdown]
# ## 4. Delayed or current scaling on a spike
#
# Per-tensor fp8 scales come from the tensor's amax. Delayed scaling (Transformer
# Engine's default) takes it from the history of past casts, so it costs no extra pass
# over the tensor, but a spike arrives with the scale of the steps before it; current
# scaling measures this cast's amax first. Here: a tensor cast 40 times, with values
# of size 1 and, at cast 20, a batch 64 times larger (a bad batch, a loss spike).
#
# **Predict**: at the spike, which recipe clips values to e4m3's max? And after it?

# %%
casts = [rng.standard_normal(N_VALUES).astype(np.float32) for _ in range(CASTS)]
casts[SPIKE_STEP] = casts[SPIKE_STEP] * 64
recipes = {"delayed": DelayedScaling(), "current": CurrentScaling()}
saturated, underflow = {}, {}
for name, recipe in recipes.items():
    scaling = TensorScaling(FLOAT8_E4M3FN, recipe)
    saturated[name], underflow[name] = [], []
    for array in casts:
        scaling.cast(array)
        saturated[name].append(scaling.last_saturated)
        underflow[name].append(scaling.last_underflow)
amax = [float(np.abs(c).max()) for c in casts]
print("saturated at the spike:", {n: f"{s[SPIKE_STEP]:.2%}" for n, s in saturated.items()})
after = slice(SPIKE_STEP + 1, SPIKE_STEP + 1 + DelayedScaling().amax_history_len)
print("flushed after the spike (mean over the history):",
      {n: f"{np.mean(u[after]):.3%}" for n, u in underflow.items()})  # fmt: skip

# %% [markdown]
# At the spike, delayed scaling clips most of the values to ±448 (its scale
# was set for values 64 times smaller), and current scaling clips none. After it the
# delayed recipe remembers the spike for its whole amax history (16 casts): its scale
# stays 64 times too small, and it flushes more of the ordinary values to zero than
# current scaling does, until the spike leaves the history.

# %%
claim(saturated["delayed"][SPIKE_STEP] > 0.5 and saturated["current"][SPIKE_STEP] == 0,
      "delayed clips most of the values, current none", saturated=saturated)  # fmt: skip
claim(np.mean(underflow["delayed"][after]) > np.mean(underflow["current"][after]),
      "after it delayed flushes more than current", underflow=underflow)  # fmt: skip

# %%
fig = plots.spike_scaling(range(CASTS), amax, saturated, underflow)
save_figure(fig, "spike_scaling")
show(fig)

# %% [markdown]
# ## What you measured
#
# - One scale per tensor hands an outlier's range to every value; a scale per 32 or 16
#   values confines it to one block, and lets 4-bit elements hold a tensor at all.
# - The accumulator matters as much as the operands: long sums need float32, or short
#   low-precision pieces promoted to it (DeepSeek-V3's every 128).
# - On the digits MLP 8-bit block formats train like fp32; 4-bit ones train, measurably
#   worse.
# - Delayed scaling saves a pass over the tensor and pays for it at a spike.
