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
# # Lesson 8: Beyond float16: bfloat16 and FP8
#
# The 2018 recipe (Micikevicius et al., "Mixed Precision Training") was built around
# float16, a format with enough precision but too little range: gradients fall below
# its smallest number, hence the loss scale (sec. 3.2). Two formats came after it,
# trading range against precision differently:
#
# - **bfloat16** keeps float32's range and gives up precision. Kalamkar et al. ("A
#   Study of BFLOAT16 for Deep Learning Training", 2019) trained image, speech,
#   language and recommendation networks with bfloat16 tensors to float32's results,
#   with float32's hyper-parameters and no loss scaling.
# - **FP8**, two 8-bit formats (Micikevicius et al., "FP8 Formats for Deep Learning",
#   2022): e4m3 for weights and activations, e5m2 for gradients. Their range is so
#   narrow that every tensor gets a scale of its own.
#
# You will see, measured on the digits network of the earlier lessons:
#
# - the four 16- and 8-bit formats side by side: range against precision;
# - that bfloat16 flushes none of the gradients float16 flushes, and what its coarser
#   rounding costs instead;
# - what one unscaled fp8 cast does to real gradients, and what a per-tensor scale does;
# - how **delayed scaling** (NVIDIA Transformer Engine's recipe) makes each scale follow
#   its tensor over training;
# - and training in fp8 with and without those scales, where it matters and where it
#   does not.

# %%
import math
from dataclasses import replace

import numpy as np

from minimp import data, formats, stats
from minimp.formats import BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2, FLOAT16, FLOAT32
from minimp.fp8 import Fp8Linear, TensorScaling
from minimp.tensor import no_grad, tensor
from minimp.tools import plots
from minimp.tools.lessons import claim, save_figure, show
from minimp.train import BEYOND_FP16, LARGE_BATCH_ADAM, Run, TrainConfig

# Section 2 (and the check at the end of 3): the README's digits setting, SGD, batch 64.
# 1000 steps rather than the README's 2000, so that the lesson runs in a minute.
CONFIG = TrainConfig(steps=1000)
# Section 3: large-batch Adam (README, "When scaling matters"), where gradients are tiny.
# Shortened from its 3000 steps to 300 (about 214 passes over the training set) so that
# the lesson runs in a minute.
FP8_CONFIG = replace(LARGE_BATCH_ADAM, steps=300, eval_every=100)
FINAL = 100  # the final training loss is the mean over this many last steps
ROLES = ("input", "weight", "grad")  # the three tensors of an fp8 matmul, as minimp.fp8 names them

digits = data.load_digits()
print(f"{digits.name}: {len(digits.x_train)} training images; model {CONFIG.sizes}")

# %% [markdown]
# ## 1. Range versus precision
#
# A format's **range** is set by its exponent bits: from its smallest **subnormal** (the
# tiniest positive number it holds; half of it or less rounds to 0, **flushed to
# zero**) up to its largest finite value, `max`. We count it in **binades**, powers of
# two: log2(max / smallest subnormal). Its **precision** is set by its fraction bits m:
# `eps` = 2^-m is the gap between 1 and the next number, and a normal number carries
# m + 1 significant bits. `minimp.formats` derives all of it from the bit layouts
# (lesson 1 draws them on one number line, figure `number_line`).

# %%
FORMATS = (FLOAT32, FLOAT16, BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2)


def pow2(x: float) -> str:
    return f"2^{math.log2(x):.0f}"


print(
    f"{'format':14} {'exp/frac':>8} {'max':>10} {'min normal':>11} {'min subnormal':>14}"
    f" {'eps':>8} {'sig. bits':>9} {'binades':>8}"
)
table = {}
for fmt in FORMATS:
    table[fmt.name] = {
        "max": fmt.max,
        "min_normal": fmt.min_normal,
        "min_subnormal": fmt.min_subnormal,
        "eps": fmt.eps,
        "significant_bits": fmt.mantissa_bits + 1,
        "binades": math.log2(fmt.max / fmt.min_subnormal),
    }
    row = table[fmt.name]
    print(
        f"{fmt.name:14} {fmt.exponent_bits:>4}/{fmt.mantissa_bits:<3} {fmt.max:>10.4g}"
        f" {pow2(fmt.min_normal):>11} {pow2(fmt.min_subnormal):>14} {pow2(fmt.eps):>8}"
        f" {row['significant_bits']:>9} {row['binades']:>8.1f}"
    )
bf16, fp16 = table["bfloat16"], table["float16"]
print(
    f"bfloat16: max {bf16['max'] / FLOAT32.max:.4f} x float32's, smallest normal "
    f"{'equal to' if bf16['min_normal'] == FLOAT32.min_normal else 'unlike'} float32's; "
    f"{bf16['binades'] / fp16['binades']:.1f} x float16's binades"
)
print(
    f"significant bits: bfloat16 {bf16['significant_bits']}, float16 {fp16['significant_bits']}"
    f"; eps ratio {bf16['eps'] / fp16['eps']:g}"
)
print(
    f"binades: e4m3 {table['float8_e4m3fn']['binades']:.1f}, e5m2 "
    f"{table['float8_e5m2']['binades']:.1f}, float16 {fp16['binades']:.1f}"
)
claim(bf16["min_normal"] == FLOAT32.min_normal and 0.99 < bf16["max"] / FLOAT32.max < 1,
      "bfloat16: the same smallest normal number as float32, nearly the same max",
      bf16=bf16)  # fmt: skip
claim(bf16["binades"] > 200 and 6 <= bf16["binades"] / fp16["binades"] < 7,
      "a range of hundreds of binades, about six times float16's", bf16=bf16)  # fmt: skip
claim((bf16["significant_bits"], fp16["significant_bits"]) == (8, 11)
      and bf16["eps"] / fp16["eps"] == 8,
      "8 significant bits against float16's 11, eps 2^3 = 8 times larger")  # fmt: skip
e4m3, e5m2 = table["float8_e4m3fn"], table["float8_e5m2"]
claim(e4m3["significant_bits"] == e5m2["significant_bits"] + 1
      and e4m3["binades"] < e5m2["binades"] < fp16["binades"],
      "e4m3 has one more significant bit, e5m2 more range; both span fewer binades than "
      "float16", e4m3=e4m3, e5m2=e5m2)  # fmt: skip

# %% [markdown]
# Read it in pairs:
#
# - **bfloat16 against float16**, both 16 bits. bfloat16 has float32's 8 exponent bits:
#   the same smallest normal number, nearly the same max, and a range of hundreds of
#   binades, about six times float16's. It pays with precision: 8 significant bits
#   against float16's 11, so its eps is 2^3 = 8 times larger (section 2 measures what
#   that does to a cast).
# - **e4m3 against e5m2**, both 8 bits. e4m3 has one more significant bit, e5m2 more
#   range; both span fewer binades than float16. The FP8 paper gives e4m3 to weights and
#   activations, which need precision, and e5m2 to gradients, which need range.

# %% [markdown]
# ## 2. bfloat16 needs no loss scaling
#
# Lessons 2 and 6 measured how many gradients a cast to float16 flushes to zero. A
# float16 gradient that underflowed is just 0, so that count is taken on the float32
# gradients *before* the cast: `minimp.stats.GradientRecorder` is a training hook
# that, at a few steps, runs the batch through a float32 twin of the network and
# classifies every **activation gradient** (dL/d output of a layer) and weight gradient
# against a format. We train the float32 baseline once on `CONFIG`, with two recorders,
# float16 and bfloat16, looking at the very same gradients.
#
# **Predict:** bfloat16 has three fewer fraction bits than float16. Will it flush more
# gradients to zero, or fewer?

# %%
recorders = {name: stats.GradientRecorder(name) for name in ("float16", "bfloat16")}
fp32_run = Run("fp32", digits, replace(CONFIG, record_every=CONFIG.steps // 4))
fp32_run.train(hooks=list(recorders.values()))
last_step = max(r["step"] for r in recorders["float16"].records)
flushed_fp16 = recorders["float16"].select("activation")
print(f"share of the nonzero activation gradients flushed to zero, at step {last_step}:")
for layer, values in flushed_fp16.items():
    print(
        f"  {layer}: float16 {values[-1]:6.1%}   "
        f"bfloat16 {recorders['bfloat16'].select('activation')[layer][-1]:6.1%}"
    )
bf16_flushed_ever = max(r["flushed_of_nonzero"] for r in recorders["bfloat16"].records)
fp16_flushed_late = float(np.mean([v[-1] for v in flushed_fp16.values()]))
print(f"float16, mean over the layers: {fp16_flushed_late:.1%}")
print(f"bfloat16, largest share at any recorded step, layer or kind: {bf16_flushed_ever:.1%}")
claim(fp16_flushed_late > 0.3, "float16 flushes a large share of the activation gradients",
      share=fp16_flushed_late)  # fmt: skip
claim(bf16_flushed_ever == 0.0, "bfloat16 flushes none, at any recorded step, in any layer",
      share=bf16_flushed_ever)  # fmt: skip

# %% [markdown]
# float16 flushes a large share of the activation gradients; bfloat16 flushes none,
# at any recorded step, in any layer. Its smallest numbers are float32's, so a gradient
# small enough to vanish in bfloat16 would vanish in float32 as well. No loss scale is
# needed, and none can help: there is nothing to lift back into range.
#
# **What bfloat16 gives up.** Precision: round the trained network's float32 weights,
# and its hidden activations on one batch, to each 16-bit format, and compare the
# relative error |round(x) - x| / |x| of the nonzero values.

# %%
x_batch, y_batch = fp32_run._batch(fp32_run.steps_done)
with no_grad():
    h, hidden = tensor(x_batch, dtype="float32"), []
    for layer in fp32_run.model.layers[:-1]:
        h = layer(h)
        hidden.append(h.numpy())
tensors_to_round = {
    "weights": np.concatenate([p.numpy().ravel() for p in fp32_run.model.parameters()]),
    "activations": np.concatenate([a.ravel() for a in hidden]),
}
rounding_error = {}
for what, values in tensors_to_round.items():
    values = values[values != 0].astype(np.float64)
    rounding_error[what] = {
        fmt.name: float(np.mean(np.abs(formats.round_to(values, fmt) - values) / np.abs(values)))
        for fmt in (FLOAT16, BFLOAT16)
    }
    e = rounding_error[what]
    print(
        f"{what:11} mean relative rounding error: float16 {e['float16']:.2e}, "
        f"bfloat16 {e['bfloat16']:.2e}  ({e['bfloat16'] / e['float16']:.1f} x)"
    )
for what, e in rounding_error.items():
    claim(6 < e["bfloat16"] / e["float16"] < 10, "about eight times float16's error",
          what=what, ratio=e["bfloat16"] / e["float16"])  # fmt: skip

# %% [markdown]
# About eight times float16's error, the 2^3 that three fewer fraction bits predict. Is
# that a problem for training? With float32 master weights (sec. 3.1), the optimizer's
# small updates accumulate in float32, and only the forward and backward passes see the
# coarse copy. Train the `bf16` regime (bfloat16 compute, float32 masters, no loss
# scale) and the float16 `mixed-dynamic` regime (float32 masters, dynamic loss scale)
# on the same batches, and compare their final training loss (mean of the last `FINAL`
# steps) with float32's.

# %%
final_loss = {"fp32": float(np.mean(fp32_run.history.loss[-FINAL:]))}
for name in ("bf16", "mixed-dynamic"):
    run = Run(name, digits, CONFIG)
    run.train()
    final_loss[name] = float(np.mean(run.history.loss[-FINAL:]))
bf16_ratios = {name: loss / final_loss["fp32"] for name, loss in final_loss.items()}
for name, loss in final_loss.items():
    print(f"{name:14} final training loss {loss:.3e}  ({bf16_ratios[name]:.3f} x fp32)")
claim(abs(bf16_ratios["bf16"] - 1) < 0.03 and abs(bf16_ratios["mixed-dynamic"] - 1) < 0.03,
      "bf16 ends within a few percent of fp32, as mixed-dynamic does",
      ratios=bf16_ratios)  # fmt: skip

# %% [markdown]
# bf16 ends within a few percent of fp32, as mixed-dynamic does, with no loss scale.
# The coarser rounding is there in every matmul, but the float32 masters keep it out of
# the weights. (Lesson 9 takes the masters away: then the rounding hits the updates.)

# %% [markdown]
# ## 3. FP8: one scale per tensor
#
# An fp8 number is one byte: half of float16's memory and bandwidth, and GPUs with fp8
# tensor cores multiply fp8 matrices faster than 16-bit ones. The range is the problem.
# float16's range was wide enough that *one* loss scale could lift every gradient into
# it; e5m2 spans fewer binades than float16 and e4m3 fewer still, and a network's
# weights, activations and gradients sit in different bands of magnitude (section 4
# measures how far apart). So each tensor gets its own **scale** S, a power of two
# chosen so that its largest magnitude, the **amax**, lands just under the format's
# max (the FP8 paper leaves the choice of scales to software):
#
#     stored = round_to_fp8(x * S)          the value it stands for: stored / S
#     S = 2^floor(log2(fmt.max / amax))
#
# `minimp.scaling.TensorScaling` is one such scale. **Delayed scaling** (Transformer
# Engine's `DelayedScaling`) does not read the amax of the tensor about to be cast
# (that would cost a second pass over it): it uses the largest amax of the last few
# casts of the same tensor, so the scale is one step late, and the very first cast of
# every tensor uses S = 1.
#
# **Predict:** e5m2 reaches eight binades less far down than float16 (section 1). Of a
# late-training gradient that float16 flushes by half, how much will an unscaled e5m2
# cast flush? And how much after one scale?
#
# What does this do to real gradients? We train the float32 baseline on `FP8_CONFIG`
# (large-batch Adam, shortened: the setting where gradients get small), take the
# gradients of the next batch in float32, and cast each layer's output gradient (the
# operand the fp8 recipe stores in e5m2) through a fresh `TensorScaling` twice: the
# first cast has S = 1; the second uses the scale learned from the first.

# %%
print(
    f"FP8_CONFIG: {FP8_CONFIG.optimizer}, lr {FP8_CONFIG.lr}, batch {FP8_CONFIG.batch_size}, "
    f"{FP8_CONFIG.steps} steps"
)
big_fp32 = Run("fp32", digits, FP8_CONFIG)
big_fp32.train()
x_big, y_big = big_fp32._batch(big_fp32.steps_done)
grads = stats.float32_gradients(big_fp32.model, big_fp32.model.parameters(), x_big, y_big)

print(
    f"{'layer':9} {'amax':>9} {'binades':>8} | flushed to 0: {'float16':>8} {'bfloat16':>8}"
    f" {'e5m2 S=1':>9} {'e5m2 scaled':>11}  S"
)
one_cast = {}
for layer, kinds in grads.items():
    g = kinds["activation"]
    nonzero = np.abs(g[g != 0])
    flushed = {
        fmt.name: float(np.mean(formats.classify(nonzero, fmt) == formats.Category.FLUSHED_TO_ZERO))
        for fmt in (FLOAT16, BFLOAT16)
    }
    scaling = TensorScaling(FLOAT8_E5M2)
    scaling.quantize(g)  # the first cast: S = 1
    flushed["e5m2_unscaled"] = scaling.last_underflow
    stored = scaling.quantize(g)  # the second: S from the amax of the first
    flushed["e5m2_scaled"] = scaling.last_underflow
    # how much of the gradient those flushed values carried: their share of sum |g|
    lost = (g != 0) & (stored == 0)
    flushed["e5m2_scaled_magnitude"] = float(np.abs(g[lost]).sum() / np.abs(g).sum())
    one_cast[layer] = {
        "amax": float(nonzero.max()),
        "binades": float(np.log2(nonzero.max() / nonzero.min())),
        "above_e5m2_floor": float(np.log2(nonzero.max() / FLOAT8_E5M2.min_subnormal)),
        "scale": scaling.last_scale,
        "amax_scaled_over_max": float(nonzero.max()) * scaling.last_scale / FLOAT8_E5M2.max,
        **flushed,
    }
    c = one_cast[layer]
    print(
        f"{layer:9} {c['amax']:9.2e} {c['binades']:8.1f} |               {c['float16']:8.1%}"
        f" {c['bfloat16']:8.1%} {c['e5m2_unscaled']:9.1%} {c['e5m2_scaled']:11.1%}"
        f"  2^{math.log2(c['scale']):.0f}"
    )
fp16_extra = math.log2(FLOAT8_E5M2.min_subnormal / FLOAT16.min_subnormal)
print(
    f"e5m2 spans {table['float8_e5m2']['binades']:.1f} binades; float16 reaches "
    f"{fp16_extra:.0f} binades further down"
)
print(
    "amax, binades above e5m2's smallest subnormal: "
    + ", ".join(f"{layer} {c['above_e5m2_floor']:.1f}" for layer, c in one_cast.items())
)
print(
    "amax x S / e5m2's max, on the second cast: "
    + ", ".join(f"{layer} {c['amax_scaled_over_max']:.2f}" for layer, c in one_cast.items())
)
scale_spread = max(math.log2(c["scale"]) for c in one_cast.values()) - min(
    math.log2(c["scale"]) for c in one_cast.values()
)
# One scale for all three, the smallest (the only one that overflows none of them):
# what would each tensor lose to it?
common = min(c["scale"] for c in one_cast.values())
common_flushed = {
    layer: float(
        np.mean(
            formats.round_to(kinds["activation"][kinds["activation"] != 0] * common, "float8_e5m2")
            == 0
        )
    )
    for layer, kinds in grads.items()
}
print(f"the layers' scales lie within {scale_spread:.0f} binades of each other")
print(
    f"one common scale 2^{math.log2(common):.0f} would flush: "
    + ", ".join(f"{layer} {v:.1%}" for layer, v in common_flushed.items())
)
print(
    "share of sum |g| the scaled cast flushes: "
    + ", ".join(f"{layer} {c['e5m2_scaled_magnitude']:.2g}" for layer, c in one_cast.items())
)
LAYERS = list(one_cast)
LAST = LAYERS[-1]
e5m2_binades = table["float8_e5m2"]["binades"]
claim(fp16_extra == 8, "float16 reaches eight binades further down", extra=fp16_extra)
for layer, c in one_cast.items():
    claim(c["e5m2_unscaled"] > 0.5, "cast as they are, most of these gradients vanish in e5m2",
          layer=layer, share=c["e5m2_unscaled"])  # fmt: skip
    claim(c["above_e5m2_floor"] < 8, "their largest values lie only a few binades above "
          "e5m2's smallest subnormal", layer=layer, binades=c["above_e5m2_floor"])  # fmt: skip
    claim(0.2 < c["float16"] < c["e5m2_unscaled"] and c["bfloat16"] == 0.0,
          "float16 flushes fewer, but still many (a fifth or more); bfloat16 none",
          layer=layer, c=c)  # fmt: skip
    claim(0.5 < c["amax_scaled_over_max"] <= 1 and c["e5m2_scaled"] < c["e5m2_unscaled"] / 2,
          "the second cast lands the amax in the top binade, and far fewer flush",
          layer=layer, c=c)  # fmt: skip
    claim(math.log2(c["scale"]) == round(math.log2(c["scale"])), "S is a power of two",
          scale=c["scale"])  # fmt: skip
    claim(c["e5m2_scaled"] <= common_flushed[layer] <= c["e5m2_scaled"] + 0.1
          and common_flushed[layer] < c["e5m2_unscaled"] / 2,
          "one common scale flushes somewhat more than the per-tensor scales, far less than "
          "no scale", layer=layer, common=common_flushed[layer])  # fmt: skip
claim(all(one_cast[layer]["e5m2_scaled"] < 0.01 for layer in LAYERS[:-1]),
      "in the first two layers, almost none", one_cast=one_cast)  # fmt: skip
claim(one_cast[LAST]["e5m2_scaled"] > 0.01 and one_cast[LAST]["binades"] > e5m2_binades + 10,
      "not so in the last layer: its values spread over far more binades than e5m2 spans",
      last=one_cast[LAST])  # fmt: skip
claim(one_cast[LAST]["e5m2_scaled_magnitude"] < 1e-3,
      "the values the scaled cast flushes carry a tiny share of the total magnitude",
      share=one_cast[LAST]["e5m2_scaled_magnitude"])  # fmt: skip
claim(scale_spread <= 4, "the three scales lie within a few binades of each other",
      spread=scale_spread)  # fmt: skip

# %% [markdown]
# Cast as they are, most of these gradients vanish in e5m2: even their largest values
# lie only a few binades above e5m2's smallest subnormal, and the bulk lies below it.
# (float16 at S = 1 flushes fewer, reaching eight binades further down, but still
# many, a fifth or more; bfloat16 none.) The second cast lifts each tensor so that its
# amax lands in the top binade below e5m2's max, and far fewer flush: in the first two
# layers, almost none. Not so in the last layer: its nonzero values spread over far more binades,
# smallest to largest, than e5m2 spans. A scale can align the top of a tensor with the
# top of the format; whatever lies further below the top than the format's span still
# flushes. One scale per tensor is a compromise that keeps the largest values: the
# values the scaled cast flushes carry a tiny share of the tensor's total magnitude
# (sum of |g|).
#
# The three scales lie within a few binades of each other. One common scale for the
# three, the smallest (the only one that overflows none of them), flushes somewhat more
# than the per-tensor scales, but far less than no scale: for the gradients of a
# network this small, one well-chosen loss scale would nearly do. Per-tensor scales make
# no such assumption: each tensor finds its own, whatever the network.

# %% [markdown]
# ## 4. Training in FP8
#
# The regime `fp8` (`minimp.train.BEYOND_FP16`) keeps float32 weights, the optimizer's
# masters, and runs every matmul in fp8, as Transformer Engine's `Linear` does: the
# layer input x and weight W are cast to e4m3, the output gradient dL/dy to e5m2, each
# through its own `TensorScaling`; products accumulate in float32; bias, activations and
# loss stay float32. `fp8-unscaled` is the same with every scale fixed at 1.
# **Predict:** on large-batch Adam, which of the two ends closer to float32's loss, and
# which tensor role (input, weight, output gradient) needs its scale most? The recipe
# of each (`minimp.scaling.DelayedScaling`):

# %%
for name in ("fp8", "fp8-unscaled"):
    print(f"{name:13} {BEYOND_FP16[name].matmul}   ({BEYOND_FP16[name].description})")


# %% [markdown]
# The layers are `minimp.fp8.Fp8Linear` modules, each holding `input_scaling`,
# `weight_scaling` and `grad_scaling`. After every cast a `TensorScaling` reports the
# scale it used (`last_scale`), the tensor's amax (`last_amax`) and the share of its
# nonzero values that became 0 (`last_underflow`). A training hook (called after each
# backward pass, when all three casts of the step are done) records them.


# %%
def scaling_recorder():
    """A trace {layer: {role: {"step", "scale", "amax", "underflow", "saturated"}}} and
    the hook that fills it from the model's Fp8Linear layers."""
    trace: dict = {}

    def hook(info) -> None:
        for i, layer in enumerate(info.model.layers):
            if isinstance(layer, Fp8Linear):
                for role in ROLES:
                    scaling = getattr(layer, f"{role}_scaling")
                    record = trace.setdefault(f"layers.{i}", {}).setdefault(role, {})
                    for key, value in (
                        ("step", info.step),
                        ("scale", scaling.last_scale),
                        ("amax", scaling.last_amax),
                        ("underflow", scaling.last_underflow),
                        ("saturated", scaling.last_saturated),
                    ):
                        record.setdefault(key, []).append(value)

    return trace, hook


traces, fp8_runs = {}, {}
for name in ("fp8", "fp8-unscaled"):
    traces[name], hook = scaling_recorder()
    fp8_runs[name] = Run(name, digits, replace(FP8_CONFIG, record_every=1))
    fp8_runs[name].train(hooks=[hook])
print(f"trained {', '.join(fp8_runs)}: {FP8_CONFIG.steps} steps each")

# %% [markdown]
# **The first step is unscaled.** Every scale starts at 1, so on step 0 the scaled run
# casts exactly as the unscaled one does; from step 1 on it uses the amax it has seen.

# %%
first = {
    name: {
        layer: {role: traces[name][layer][role]["underflow"][0] for role in ROLES}
        for layer in traces[name]
    }
    for name in traces
}
first_scales = {s for t in traces["fp8"].values() for r in t.values() for s in r["scale"][:1]}
print(f"scales used on step 0: {sorted(first_scales)}")
print(f"step 0 flushes the same in both runs: {first['fp8'] == first['fp8-unscaled']}")
print(
    "step 0, output gradients flushed: "
    + ", ".join(f"{layer} {first['fp8'][layer]['grad']:.1%}" for layer in first["fp8"])
)
claim(sorted(first_scales) == [1.0] and first["fp8"] == first["fp8-unscaled"],
      "on step 0 the scaled run casts exactly as the unscaled one does",
      scales=sorted(first_scales))  # fmt: skip

# %% [markdown]
# **The scale follows the amax.** The figure's top row shows, for each layer and tensor
# role of the `fp8` run, the tensor's amax (solid) and the largest magnitude the scale
# lets fp8 hold, fmt.max / S (dashed): the dashed line rides just above the solid one,
# stepping down by factors of two as the amax falls. The grey lines are the format's own
# max and smallest subnormal, all that fp8 holds with S = 1. The bottom row is the share
# of nonzero values flushed to zero, with the scales (solid) and without (dotted). This
# is the README figure `fp8_scaling`.

# %%
fig = plots.fp8_scaling(traces["fp8"], traces["fp8-unscaled"])
save_figure(fig, "fp8_scaling")
# where each role's tensors sit: log2 of the amax, median over steps and layers
role_log2_amax = {
    role: float(np.median(np.log2([a for t in traces["fp8"].values() for a in t[role]["amax"]])))
    for role in ROLES
}
# how much of the inputs and weights e4m3 flushes, with and without the scales: the
# largest mean over a run, over the layers
forward_flushed = {
    name: max(
        float(np.mean(t[role]["underflow"])) for t in traces[name].values() for role in ROLES[:2]
    )
    for name in traces
}
print("median amax: " + ", ".join(f"{role} 2^{v:.1f}" for role, v in role_log2_amax.items()))
print(
    "inputs and weights flushed by e4m3 (largest mean over a run): "
    + ", ".join(f"{name} {v:.2%}" for name, v in forward_flushed.items())
)
show(fig)

# %% [markdown]
# The three roles sit in different bands: inputs and weights within a few binades of 1,
# output gradients many binades lower. The inputs and weights hardly flush in e4m3,
# with or without scales; the output gradients are where the scale matters. (So the
# bottom row's input and weight panels are flat lines at nearly zero, scaled and
# unscaled alike: what they show is that nothing happens there, printed above as the
# largest share either run flushed.)

# %%
claim(abs(role_log2_amax["input"]) < 3 and abs(role_log2_amax["weight"]) < 3
      and role_log2_amax["grad"] < min(role_log2_amax["input"], role_log2_amax["weight"]) - 5,
      "inputs and weights within a few binades of 1, output gradients many binades lower",
      amax=role_log2_amax)  # fmt: skip
claim(max(forward_flushed.values()) < 0.02, "the inputs and weights hardly flush in e4m3",
      flushed=forward_flushed)  # fmt: skip
#
# How closely does each scale follow its tensor? Where S puts the amax, amax × S,
# tells: the recipe aims for the top binade below the format's max, (max/2, max]. It
# lands lower while a larger amax from the last few steps is still in the history, and
# higher (the largest values **saturate**: they are clipped to ±max) when a tensor has
# grown since the last step.

# %%
follow = {}
for role in ROLES:
    fmt_max = (FLOAT8_E5M2 if role == "grad" else FLOAT8_E4M3FN).max
    landed = np.concatenate(
        [
            np.asarray(t[role]["amax"][1:]) * np.asarray(t[role]["scale"][1:]) / fmt_max
            for t in traces["fp8"].values()
        ]
    )
    landed = landed[landed > 0]
    saturated = max(max(t[role]["saturated"]) for t in traces["fp8"].values())
    follow[role] = {
        "top_binade": float(np.mean((landed > 0.5) & (landed <= 1))),
        "within_4x": float(np.mean((landed > 0.25) & (landed <= 1))),
        "max_saturated": saturated,
    }
    f = follow[role]
    print(
        f"{role:6}: amax x S in the top binade (max/2, max] on {f['top_binade']:.1%} of the "
        f"steps, within 4x of max on {f['within_4x']:.1%}; largest share saturated "
        f"{f['max_saturated']:.2%}"
    )
claim(all(follow[r]["top_binade"] > 0.95 for r in ("input", "weight")),
      "for inputs and weights the amax lands in the top binade on nearly every step",
      follow=follow)  # fmt: skip
claim(follow["grad"]["top_binade"] < min(follow[r]["top_binade"] for r in ("input", "weight"))
      and follow["grad"]["within_4x"] > 0.9,
      "the output gradients land there less often, though nearly always within a factor of "
      "four", follow=follow)  # fmt: skip
claim(all(f["max_saturated"] < 0.01 for f in follow.values()), "very little ever saturates",
      follow=follow)  # fmt: skip

# %% [markdown]
# For inputs and weights, which change slowly, the amax lands in the top binade on
# nearly every step. The output gradients change from batch to batch and shrink as the
# loss falls, so their scale, one step late and set by the largest recent amax, lands
# them there less often, though nearly always within a factor of four of the max. Very
# little ever saturates.

# %% [markdown]
# **Where it counts: the output gradients.** Gradients shrink as the loss falls. With
# S = 1 they sink below e5m2's smallest subnormal, the last layer's output gradient (the
# one every other gradient is computed from) most of all. Over the last `FINAL` steps:

# %%
last_layer = list(traces["fp8"])[-1]
late_flushed = {
    name: {
        layer: float(np.mean(traces[name][layer]["grad"]["underflow"][-FINAL:]))
        for layer in traces[name]
    }
    for name in traces
}
for name, per_layer in late_flushed.items():
    print(
        f"{name:13} output gradients flushed: "
        + ", ".join(f"{layer} {v:.1%}" for layer, v in per_layer.items())
    )
unscaled, scaled = late_flushed["fp8-unscaled"], late_flushed["fp8"]
claim(unscaled[last_layer] > 0.9 and unscaled[last_layer] == max(unscaled.values()),
      "without scales, nearly all of the last layer's output gradient is zero, most of all",
      unscaled=unscaled)  # fmt: skip
claim(0 < scaled[last_layer] < unscaled[last_layer] / 2, "with the scales, far less flushes",
      scaled=scaled)  # fmt: skip

# %% [markdown]
# Without scales, nearly all of the last layer's output gradient is zero in e5m2, and
# the gradients of every layer below are computed from the little that survives. With
# the scales, far less flushes: the tail that lies further below the amax than e5m2
# spans (section 3). And the loss:

# %%
final_fp8 = {"fp32": float(np.mean(big_fp32.history.loss[-FINAL:]))}
final_fp8.update({n: float(np.mean(r.history.loss[-FINAL:])) for n, r in fp8_runs.items()})
fp8_ratios = {name: loss / final_fp8["fp32"] for name, loss in final_fp8.items()}
for name, loss in final_fp8.items():
    print(
        f"{name:13} final training loss {loss:.3e} ({fp8_ratios[name]:.2f} x fp32), "
        f"test accuracy {(fp8_runs.get(name) or big_fp32).history.test_accuracy[-1]:.2%}"
    )
fp8_accuracy = {
    name: run.history.test_accuracy[-1] for name, run in [("fp32", big_fp32), *fp8_runs.items()]
}
accuracy_gap = max(fp8_accuracy.values()) - min(fp8_accuracy.values())
print(f"test accuracies span {accuracy_gap:.2%} = {accuracy_gap * len(digits.x_test):.0f} "
      f"test images of {len(digits.x_test)} (one image: {1 / len(digits.x_test):.2%})")  # fmt: skip
fig = plots.regimes_compared(
    {"fp32": [big_fp32.history.to_dict()]}
    | {n: [r.history.to_dict()] for n, r in fp8_runs.items()},
    title=f"fp8 matmuls on large-batch Adam ({FP8_CONFIG.steps} steps, one seed)",
    test_images=len(digits.x_test),
)
save_figure(fig, "fp8_training")
show(fig)

# %% [markdown]
# The unscaled run falls behind as its gradients vanish: its final training loss ends
# well above fp32's. With one delayed scale per tensor, fp8 ends much closer (figure
# `fp8_training`). Test accuracy hardly tells them apart, as in lesson 6: the three
# runs end within a few test images of each other (printed above), one seed each,
# and one image is 0.28% of the accuracy; at that resolution the order of the dots in
# the figure's right panel is noise, not a ranking.

# %%
claim(fp8_ratios["fp8-unscaled"] > 1.15, "the unscaled run's final training loss ends well "
      "above fp32's", ratios=fp8_ratios)  # fmt: skip
claim(fp8_ratios["fp8"] - 1 < (fp8_ratios["fp8-unscaled"] - 1) / 2, "fp8 ends much closer",
      ratios=fp8_ratios)  # fmt: skip
claim(accuracy_gap * len(digits.x_test) <= 6,
      "the three runs end within a few test images of each other",
      images=accuracy_gap * len(digits.x_test))  # fmt: skip

# %% [markdown]
# **Does this generalise?** The FP8 paper (Micikevicius et al. 2022) trained image and
# language models, GPT-style up to 175B parameters, with e4m3 forward and e5m2 backward
# tensors and per-tensor scales, and matched 16-bit training's results; it did not
# report how unscaled fp8 fares. This run is a toy: 1,438 images, large-batch Adam, 300
# steps, memorised far past what any real training set allows. That is why its
# gradients are so small and an unscaled e5m2 loses nearly all of them. The mechanism
# carries over (a gradient below e5m2's smallest subnormal is zero; a scale lifts the
# top of a tensor to the top of the format); how much a real network loses without
# scales depends on how far its gradients sit below 2^-16.
#
#
# **Where the scale does not matter.** The failure above needs small gradients and an
# optimizer that cares about them. **Predict:** on the default digits setting
# (`CONFIG`: SGD, batch 64), will unscaled fp8 train as well as float32? Train
# `fp8-unscaled` beside the float32 run of section 2:

# %%
small_trace, hook = scaling_recorder()
small = Run("fp8-unscaled", digits, replace(CONFIG, record_every=1))
small.train(hooks=[hook])
small_ratio = float(np.mean(small.history.loss[-FINAL:])) / final_loss["fp32"]
small_flushed = float(np.mean(small_trace[last_layer]["grad"]["underflow"][-FINAL:]))
print(f"CONFIG: {CONFIG.optimizer}, batch {CONFIG.batch_size}, {CONFIG.steps} steps")
print(f"fp8-unscaled final training loss: {small_ratio:.3f} x fp32")
print(f"its last layer's output gradient flushed over the last {FINAL} steps: {small_flushed:.1%}")
claim(abs(small_ratio - 1) < 0.05, "here unscaled fp8 trains about as well as float32",
      ratio=small_ratio)  # fmt: skip
claim(small_flushed > 0.5, "most of the last layer's output gradient flushes here too",
      flushed=small_flushed)  # fmt: skip

# %% [markdown]
# Here unscaled fp8 trains about as well as float32, although most of the last layer's
# output gradient flushes here too. The likely reason is the one lesson 6 measured for
# float16: the values that flush are the smallest, and SGD moves a weight in proportion
# to its gradient, so losing them changes little. Adam divides each weight's step by the
# size of its recent gradients: a weight whose gradients are all tiny still takes a
# full step in float32, and none at all when fp8 has flushed them. A recipe must hold
# for the networks where it matters, which is why FP8 training comes with per-tensor
# scales.
#
# ## What we measured
#
# - bfloat16 keeps float32's exponent range with 8 significant bits; float16 has 11 bits
#   and a range of about forty binades; e4m3 and e5m2 span fewer still.
# - On the same gradients, a cast to float16 flushes a large share of the activation
#   gradients and a cast to bfloat16 none, so bf16 trains with no loss scale; its
#   rounding error is about eight times float16's, and with float32 masters it ends as
#   close to fp32 as mixed-dynamic does.
# - One unscaled e5m2 cast flushes most of a late-training gradient; a per-tensor scale
#   saves most of them, but not the tail beyond e5m2's span.
# - Delayed scaling keeps each tensor's amax near the format's max, one step late; the
#   first step of every tensor is unscaled. Inputs and weights hardly need it here; the
#   output gradients do.
# - On large-batch Adam, fp8 without scales loses nearly all of the last layer's
#   gradient and ends well above fp32's loss; with scales it ends much closer. On SGD at
#   batch 64, unscaled fp8 trains about as well as fp32.

# %% [markdown]
# ## Exercises
#
# 1. Set `FP8_CONFIG`'s `batch_size` to 64 (still Adam). Predict whether
#    `fp8-unscaled`'s final loss ratio moves toward 1 or away from it, then rerun
#    sections 3 and 4.
# 2. Replace `FLOAT8_E5M2` by `FLOAT8_E4M3FN` for the gradient cast of section 3
#    (`TensorScaling(FLOAT8_E4M3FN)`). Predict the flushed shares with and without the
#    scale before you run the cell.
# 3. In `one_cast`, the last layer still flushes after scaling. Compute from the table
#    how many binades it spans, and predict which format of section 1 would hold all of
#    it at one scale.

# %%
print(
    f"binades: float16 {fp16['binades']:.1f}, bfloat16 {bf16['binades']:.1f}, "
    f"e4m3 {table['float8_e4m3fn']['binades']:.1f}, e5m2 {table['float8_e5m2']['binades']:.1f}"
)
print(
    f"activation gradients flushed: float16 {fp16_flushed_late:.1%}, "
    f"bfloat16 {bf16_flushed_ever:.1%}"
)
print(
    f"rounding error bfloat16 / float16: weights "
    f"{rounding_error['weights']['bfloat16'] / rounding_error['weights']['float16']:.1f} x"
)
print(
    f"final loss / fp32 on CONFIG: bf16 {bf16_ratios['bf16']:.3f}, "
    f"mixed-dynamic {bf16_ratios['mixed-dynamic']:.3f}"
)
print(
    f"{last_layer} output gradient, one e5m2 cast: {one_cast[last_layer]['e5m2_unscaled']:.1%} "
    f"flushed unscaled, {one_cast[last_layer]['e5m2_scaled']:.1%} scaled"
)
print(
    f"{last_layer} output gradient flushed late in training: "
    f"fp8-unscaled {late_flushed['fp8-unscaled'][last_layer]:.1%}, "
    f"fp8 {late_flushed['fp8'][last_layer]:.1%}"
)
print(
    f"final loss / fp32 on FP8_CONFIG: fp8 {fp8_ratios['fp8']:.2f}, "
    f"fp8-unscaled {fp8_ratios['fp8-unscaled']:.2f}; on CONFIG, fp8-unscaled {small_ratio:.3f}"
)
