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
# # Lesson 7: On the GPU
#
# Everything so far was about what 16-bit numbers do to training. This lesson is about
# what they are *for*: speed and memory on the hardware the paper was written for.
# On NVIDIA GPUs, tensor cores multiply float16 matrices, accumulating the products in
# float32 (Micikevicius et al. 2018, sec. 3.3), at a much higher rate than the float32
# units (section 5 sets a datasheet's numbers beside the lesson's matmuls), and every
# float16 number is half the bytes to store and to move.
#
# minimp runs on a CUDA GPU through CuPy, a NumPy-compatible array library: a float16
# tensor on the GPU holds a real CuPy float16 array, and its matmul goes to cuBLAS,
# NVIDIA's matrix library. In this lesson we:
#
# - find out which device this machine has;
# - write the mixed-precision training loop out by hand, on that device;
# - time a training step per regime, the careful way, and weigh its memory;
# - compute what a GPU's datasheet says about these matmuls: peak rates, arithmetic
#   intensity, the multiple-of-8 rule;
# - and say what the measurements mean, and what they cannot tell us.
#
# **This lesson measures whatever it runs on.** Without a GPU it runs every measurement
# on the CPU, says so, and explains what a GPU would change, without inventing numbers
# it did not measure.

# %%
import itertools
from dataclasses import replace

import numpy as np
from matplotlib.figure import Figure

import minimp
import minimp.data
import minimp.functional as F
from minimp import backend, nn, optim
from minimp.amp import GradScaler, MasterWeights
from minimp.tools import bench
from minimp.tools.lessons import claim, save_figure, show
from minimp.tools.plots import COLORS
from minimp.train import Run, TrainConfig

DEVICE = "cuda" if backend.cuda_available() else "cpu"  # the device everything runs on
CONFIG = TrainConfig()  # the README's digits MLP: 64-128-128-10, SGD + momentum, batch 64
TRAIN_STEPS = 500  # steps of the hand-written loop of section 3
# Two problems to time: the digits MLP, and a wide MLP whose matmuls dominate the step.
# The wide one is sized for the device: large enough for a GPU's tensor cores to matter,
# small enough for a two-core CPU to finish in seconds.
PROBLEMS = {
    "digits MLP": (CONFIG.sizes, CONFIG.batch_size),
    "wide MLP": ((1024, 4096, 4096, 10), 4096)
    if DEVICE == "cuda"
    else ((512, 1024, 1024, 10), 256),
}
# bfloat16 is CPU-only in minimp (section 1), so it is timed only when we are on the CPU.
TIMED = ("fp32", "mixed-dynamic") + (("bf16",) if DEVICE == "cpu" else ())
# How each step time is measured (section 4): `warmup` untimed steps, then `repeats`
# blocks of `steps` steps; the median block gives the step time.
TIMING = {
    "digits MLP": {"steps": 20, "repeats": 5, "warmup": 3},
    "wide MLP": {"steps": 4, "repeats": 5, "warmup": 1},
}

digits = minimp.data.load_digits()

# %% [markdown]
# ## 1. Which device?
#
# `minimp.backend.cuda_available()` is true when CuPy is installed and finds a CUDA GPU.
# A tensor is placed with `device=` when it is made, and moved with `.to("cuda")` or
# `.to("cpu")`, as in PyTorch; a model moves its parameters with `model.to(device)`, or
# is built there with `nn.MLP(..., device=...)`.
#
# One format stays home: **bfloat16 is CPU-only in minimp**. NumPy has no bfloat16;
# minimp's comes from the `ml_dtypes` package, and CuPy cannot hold `ml_dtypes` arrays,
# so a bfloat16 tensor refuses to move to the GPU (real GPUs do have bfloat16; CuPy's
# arrays just cannot express it).

# %%
device_label = bench.device_name(DEVICE)
if DEVICE == "cuda":
    print(f"CUDA GPU found: everything below runs on it ({device_label}).")
else:
    print("=" * 78)
    print("NO CUDA GPU FOUND (CuPy missing, or no device): everything below runs on the CPU,")
    print(f"{device_label}. The numbers are CPU numbers; none is a GPU measurement.")
    print("=" * 78)

x = minimp.tensor([[1.0, 2.0]], dtype=minimp.float16, device=DEVICE)
model = nn.MLP([2, 3, 1], device=DEVICE, generator=np.random.default_rng(0))
print(f"\nx lives on {x.device}; the model's parameters on {model.parameters()[0].device}")
try:
    minimp.tensor([1.0], dtype=minimp.bfloat16).to("cuda")
    bf16_moves = True
except (TypeError, RuntimeError) as error:
    bf16_moves = False
    print(f"a bfloat16 tensor .to('cuda'): {type(error).__name__}: {error}")
claim(not bf16_moves, "a bfloat16 tensor refuses to move to the GPU")
claim(x.device == DEVICE and model.parameters()[0].device == DEVICE,
      "a tensor is placed with device= when it is made", device=x.device)  # fmt: skip

# %% [markdown]
# ## 2. Why not `minimp.train.Run`?
#
# `Run` is the loop every earlier lesson used, and it has no device argument. Reading
# `minimp/train.py`, three places tie it to the CPU:
#
# - the model is built by `nn.MLP(...)` without `device=`, so the weights are NumPy
#   arrays;
# - each batch becomes a tensor with `tensor(x, dtype=...)` in `Run._forward`, again on
#   the CPU;
# - the `bf16` regime would need to refuse a GPU, as above.
#
# Everything else already follows its arrays: `MasterWeights` copies each weight where
# it lives, the optimizers and `GradScaler` compute with the array module of the arrays
# they are given, and the loss accepts NumPy class indices and moves them. So a `device`
# field in `TrainConfig`, passed to `nn.MLP` and to `tensor()`, would be most of the
# change. We do not change `train.py` here; instead we write the loop out, which is
# worth seeing once anyway.
#
# ## 3. The loop, by hand, on the device
#
# The `mixed-dynamic` regime, step by step, in the order of the paper's recipe: forward
# in float16; loss in float32 (sec. 3.3); scale the loss and backward (sec. 3.2); copy
# the float16 gradients into the float32 masters (sec. 3.1); unscale them, step (or
# skip the step if a gradient overflowed), adjust the scale; round the masters back into
# the float16 model. The batches come in the same order as `Run` draws them: a fresh
# permutation of the training set each epoch, from `(seed, epoch)`.

# %%
half = minimp.float16
model = nn.MLP(
    CONFIG.sizes, CONFIG.activation, device=DEVICE, generator=np.random.default_rng(CONFIG.seed)
).to(half)  # the float32 initialisation every regime shares, rounded to float16
masters = MasterWeights(model)  # float32 copies, on the same device
optimizer = optim.SGD(masters.parameters(), CONFIG.lr, CONFIG.momentum)
scaler = GradScaler(
    init_scale=CONFIG.init_scale,
    growth_interval=CONFIG.growth_interval,
    min_scale=CONFIG.min_scale,
)


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Run's data order: a pure function of (seed, step)."""
    per_epoch = len(digits.x_train) // CONFIG.batch_size
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng((CONFIG.seed, epoch)).permutation(len(digits.x_train))
    rows = order[i * CONFIG.batch_size : (i + 1) * CONFIG.batch_size]
    return digits.x_train[rows], digits.y_train[rows]


losses = []
for step in range(TRAIN_STEPS):
    x, y = batch(step)
    logits = model(minimp.tensor(x, dtype=half, device=DEVICE))  # float16 forward
    loss = F.cross_entropy(logits.float(), y)  # the loss in float32
    scaler.scale(loss).backward()  # float16 gradients of the scaled loss
    masters.copy_grads_to_masters()  # widened to float32, exactly
    scaler.unscale_(optimizer)  # divided by the scale; inf/NaN recorded
    scaler.step(optimizer)  # updates the masters, or skips the step
    scaler.update()  # halve the scale after an overflow, grow it after a clean run
    masters.copy_masters_to_model()  # round the masters into the float16 model
    optimizer.zero_grad()
    model.zero_grad()
    losses.append(loss.item())

with minimp.no_grad():
    test_logits = model(minimp.tensor(digits.x_test, dtype=half, device=DEVICE)).numpy()
accuracy = float(np.mean(test_logits.argmax(axis=1) == digits.y_test))
print(f"{TRAIN_STEPS} steps on {DEVICE}: first loss {losses[0]:.3f}, mean of the last 100")
print(f"losses {np.mean(losses[-100:]):.5f}, test accuracy {accuracy:.2%}")
weight, master = model.parameters()[0], masters.parameters()[0]
print(f"weights on {weight.device} ({weight.dtype}), masters on {master.device} ({master.dtype})")
print(f"final loss scale {scaler.get_scale():g}")
claim(np.mean(losses[-100:]) < losses[0] / 10 and accuracy > 0.9,
      "the hand-written loop trains", first=losses[0], last=np.mean(losses[-100:]),
      accuracy=accuracy)  # fmt: skip
claim(weight.device == master.device == DEVICE, "weights and masters live on the device",
      weights=weight.device, masters=master.device)  # fmt: skip

# %% [markdown]
# Is it the same loop as `Run`'s? **Predict:** on the CPU, will the two agree exactly,
# or only closely? Train `Run("mixed-dynamic")` on the CPU with the same
# settings and compare the losses step by step. On the CPU the two must agree bit for
# bit. On a GPU, expect them to agree closely but not exactly: cuBLAS sums the products
# in its own order, and adds a layer's bias in float16 after rounding the matmul's
# result, a second rounding the CPU path does not make; small differences then grow
# along the run, so compare the final losses too.

# %%
reference = Run("mixed-dynamic", digits, replace(CONFIG, steps=TRAIN_STEPS)).train().loss
same_bits = losses == reference
largest_gap = max(abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True))
print(f"hand-written loop on {DEVICE} vs Run on cpu: identical losses: {same_bits}")
print(f"largest relative difference of a step's loss: {largest_gap:.2g}")
final_gap = abs(np.mean(losses[-100:]) / np.mean(reference[-100:]) - 1)
print(f"relative difference of the mean of the last 100 losses: {final_gap:.2g}")
if DEVICE == "cpu":
    claim(same_bits and largest_gap == 0, "on the CPU the two must agree bit for bit",
          largest_gap=largest_gap)  # fmt: skip
else:
    claim(final_gap < 0.25, "on a GPU, expect them to agree closely", final_gap=final_gap)

# %% [markdown]
# ## 4. Timing a step, the careful way
#
# A single timing of a single step says little: the first steps pay for allocating
# memory (and, on a GPU, for compiling CuPy's kernels and setting up cuBLAS), other
# programs steal time at random, and a GPU runs its kernels *asynchronously*, so the
# Python call can return before the work is done. `minimp.tools.bench.time_training_steps`
# (`compare_training_steps` for several regimes at once) therefore:
#
# - builds each regime from the same seed, on the same batches, moved to the device
#   before any clock starts (a step's time is compute, not data transfer);
# - runs a few **warm-up** steps untimed;
# - times several **repeats** of a block of steps, waiting for the device to finish
#   before each clock read, and reports the **median** block (per step), with the
#   fastest and slowest beside it;
# - takes the regimes' timed blocks in turn, one block of each per round, so that a
#   load that comes and goes while it runs falls on every regime alike;
# - and weighs the bytes one step holds, by category, from its real arrays.
#
# The step is the training loop's step (`minimp.train`'s order, without its
# bookkeeping). We time two problems: the digits MLP on the digits, and a wide MLP,
# where the matrix multiplies dominate, on random inputs and labels (drawn from the
# same seed for every regime; a step's time depends on the shapes, hardly on the
# values). Their sizes are printed with the times.
#
# **Predict:** on this machine, will a `mixed-dynamic` step take less time than an
# `fp32` one, or more? For which problem is the gap larger?

# %% tags=["timing"]
timings = {}
for problem, (sizes, batch_size) in PROBLEMS.items():
    data = (digits.x_train, digits.y_train) if problem == "digits MLP" else None
    timings[problem] = bench.compare_training_steps(
        TIMED, sizes, batch_size, device=DEVICE, config=CONFIG, data=data, **TIMING[problem]
    )

print(f"measured on {device_label}\n")
for problem, by_regime in timings.items():
    sizes, batch_size = PROBLEMS[problem]
    print(f"{problem}: sizes {sizes}, batch {batch_size}")
    reference_time = by_regime["fp32"]["step_time_s"]
    for regime, r in by_regime.items():
        print(
            f"  {regime:14} {r['step_time_s'] * 1e3:9.3f} ms/step "
            f"[{r['step_time_min_s'] * 1e3:.3f} .. {r['step_time_max_s'] * 1e3:.3f}]  "
            f"{r['examples_per_s']:>12,.0f} examples/s  "
            f"{r['step_time_s'] / reference_time:5.2f} x fp32's time"
        )
step_times = {p: {reg: r["step_time_s"] for reg, r in by.items()} for p, by in timings.items()}
devices = {r["device"] for by in timings.values() for r in by.values()}
claim(devices == {DEVICE}, "everything below runs on the device found", devices=devices)

# %% [markdown]
# ## 5. What the times mean
#
# Read the ratios in the last column rather than the milliseconds: the milliseconds
# belong to this machine and its load at that moment, while the ratios compare regimes
# measured the same way, in the same run.

# %% tags=["timing"]
for problem, by_regime in timings.items():
    ratio = by_regime["mixed-dynamic"]["step_time_s"] / by_regime["fp32"]["step_time_s"]
    word = "longer" if ratio > 1 else "shorter"
    print(f"{problem}: on {DEVICE}, a mixed-dynamic step took {ratio:.2f} x fp32's time ({word})")
if DEVICE == "cpu":
    print(
        "\nThese are CPU times. No GPU was measured: the GPU expectations in the text "
        "below are\nexplanations, not measurements. Run this lesson on a CUDA machine "
        "to measure them."
    )

# %% [markdown]
# **On a CPU**, expect mixed precision to cost time, not save it. NumPy has no float16
# arithmetic worth using (its float16 matmul has no BLAS behind it), so minimp computes
# every 16-bit op in float32 and rounds the result to 16 bits: the arithmetic is
# float32's, and the casts come on top. A mixed step also does more work than a float32
# one: it copies gradients to the masters, checks them for inf, unscales them, and
# rounds the masters back into the model.
#
# How much does a cast cost? `bench.time_steps` times any function the same way; here,
# rounding a float32 array of a million values to float16 and to bfloat16, and widening
# it back, beside a plain float32 copy of the same array. (The widening of a float16
# array is a table lookup in minimp, `backend.widen`.)

# %% tags=["timing"]
values = backend.to_device(
    np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32), DEVICE
)
as_half = backend.narrow(values, minimp.float16)
casts = {"float32 copy": lambda: values.copy()}
casts["to float16"] = lambda: backend.narrow(values, minimp.float16)
casts["float16 to float32"] = lambda: backend.widen(as_half)
if DEVICE == "cpu":  # bfloat16 arrays exist only on the CPU
    as_bf16 = backend.narrow(values, minimp.bfloat16)
    casts["to bfloat16"] = lambda: backend.narrow(values, minimp.bfloat16)
    casts["bfloat16 to float32"] = lambda: backend.widen(as_bf16)
cast_times = {
    name: bench.time_steps(fn, steps=5, repeats=5, warmup=1, device=DEVICE)["step_time_s"]
    for name, fn in casts.items()
}
for name, t in cast_times.items():
    print(
        f"{name:20} {t * 1e3:7.3f} ms for {values.size:,} values "
        f"({t / cast_times['float32 copy']:5.1f} x a float32 copy)"
    )

# %% [markdown]
# Where both were timed (on the CPU), compare the float16 and bfloat16 lines. A bfloat16
# number is the top half of a float32 (same sign, same 8 exponent bits, the first 7
# fraction bits), so rounding to it is a few integer operations; a float16 has its own
# exponent bias and its own subnormals, which makes its cast more work. Keep that in
# mind when reading the `bf16` ratio beside `mixed-dynamic`'s (`bf16` also runs no loss
# scaler).
#
# **On a GPU** the balance is different. A float16 matmul goes to cuBLAS and runs on the
# tensor cores, which multiply float16 numbers and accumulate in float32, exactly the
# rule minimp emulates on the CPU, at a rate far above the float32 units' (by the
# hardware's specifications). Every float16 array is also half the bytes to read and
# write. So for the wide MLP, where the matmuls dominate, expect mixed precision to be
# faster there. For the small digits MLP expect little or nothing: its matrices are so
# small that a step's time goes to launching kernels and running Python, and a mixed
# step launches more kernels (casts, the masters, the scaler) than a float32 one. The
# scaler also makes the CPU wait: it reads each gradient's inf/NaN check back to Python
# (`bool(...)` in `GradScaler.unscale_`), which waits for the GPU to finish. Those are
# expectations; only a run of this lesson on a GPU measures them.
#
# ### What a datasheet says, and what it means for these matmuls
#
# **Question:** a GPU's datasheet promises many times more float16 tensor-core
# operations per second than float32 ones. Would the digits MLP see that speed-up?
#
# The numbers below are NVIDIA's, from the *NVIDIA H100 Tensor Core GPU* datasheet (H100
# SXM5 column), not measurements of this lesson: peak float32 (non-tensor) 67 TFLOPS,
# peak float16 tensor core 1,979 TFLOPS *with sparsity*, half of that, 989.5 TFLOPS,
# dense (the rate for ordinary matrices), and 3.35 TB/s of HBM3 memory bandwidth.
#
# A matmul (M x K) @ (K x N) does 2MKN floating-point operations and must at least read
# both inputs and write the output once: (MK + KN + MN) numbers. Its **arithmetic
# intensity** is the ratio, operations per byte moved. The GPU's **ridge point** is its
# peak rate divided by its bandwidth: a matmul whose intensity is below it waits for
# memory, not for the tensor cores (the *roofline* model, Williams et al. 2009), and
# can run at most intensity x bandwidth.
#
# And a rule of the hardware: tensor cores multiply small tiles, so cuBLAS uses them
# fully only when the matrix dimensions are **multiples of 8** for float16 (NVIDIA's
# *Deep Learning Performance Guide*, "Matrix Multiplication Background"; multiples of 64
# bytes, 32 half values, are better still on A100 and later). A dimension such as 10
# classes is padded, or the matmul falls back to slower code. Let us compute all three
# for this lesson's matmuls.

# %%
H100_SXM = {  # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM5 column
    "fp32 TFLOPS": 67.0,
    "fp16 tensor TFLOPS (dense)": 1979.0 / 2,  # the datasheet's 1,979 is with 2:4 sparsity
    "memory TB/s": 3.35,
}
speedup = H100_SXM["fp16 tensor TFLOPS (dense)"] / H100_SXM["fp32 TFLOPS"]
ridge = {
    "float32": H100_SXM["fp32 TFLOPS"] / H100_SXM["memory TB/s"],
    "float16": H100_SXM["fp16 tensor TFLOPS (dense)"] / H100_SXM["memory TB/s"],
}
print(f"H100 SXM (datasheet): fp16 tensor cores dense / fp32 = {speedup:.1f} x")
print("ridge point, flops per byte: "
      + ", ".join(f"{k} {v:.0f}" for k, v in ridge.items()))  # fmt: skip


def intensity(m: int, k: int, n: int, itemsize: int) -> float:
    """Operations per byte of (m x k) @ (k x n): 2mkn over the bytes of both inputs and
    the output, each moved once."""
    return 2 * m * k * n / ((m * k + k * n + m * n) * itemsize)


matmuls = {}
for problem, (sizes, batch_size) in PROBLEMS.items():
    for i, (k, n) in enumerate(itertools.pairwise(sizes)):
        matmuls[f"{problem}, layer {i}"] = (batch_size, k, n)
print(f"\n{'matmul (forward)':24} {'M x K x N':>18} {'float16 flop/B':>15} "
      f"{'bound by (H100)':>16} {'dims % 8':>9}")  # fmt: skip
bound = {}
for name, (m, k, n) in matmuls.items():
    a16 = intensity(m, k, n, 2)
    bound[name] = "compute" if a16 > ridge["float16"] else "memory"
    aligned = all(d % 8 == 0 for d in (m, k, n))
    print(f"{name:24} {f'{m} x {k} x {n}':>18} {a16:>15.1f} {bound[name]:>16} "
          f"{'yes' if aligned else 'NO':>9}")  # fmt: skip
digits_best = max(intensity(*matmuls[n], 2) for n in matmuls if n.startswith("digits"))
print(f"\nat best, the digits MLP's matmuls reach {digits_best * H100_SXM['memory TB/s']:.0f}"
      f" TFLOPS on an H100 (intensity x bandwidth), "
      f"{digits_best * H100_SXM['memory TB/s'] / H100_SXM['fp16 tensor TFLOPS (dense)']:.0%}"
      " of its float16 peak")  # fmt: skip
unaligned = [name for name, dims in matmuls.items() if any(d % 8 for d in dims)]
print("dimensions not a multiple of 8: " + ", ".join(unaligned))

# %% [markdown]
# The datasheet's ratio, printed above, is more than ten times. But every one of the
# digits MLP's matmuls lies far below the float16 ridge point: they are bound by memory,
# not by the tensor cores, and could use at most about a tenth of the float16 peak
# (printed above) even with no Python and no kernel launches around them. The wide
# MLP's hidden layers have a far higher intensity. Both output layers (10 classes)
# break the multiple-of-8 rule. Halving the bytes still helps a memory-bound matmul
# (twice the numbers per byte moved),
# which is why float16 pays even where the tensor cores idle.

# %%
claim(speedup > 10, "the datasheet's ratio is more than ten times", speedup=speedup)
claim(all(bound[n] == "memory" for n in matmuls if n.startswith("digits")),
      "every one of the digits MLP's matmuls is bound by memory", bound=bound)  # fmt: skip
share_of_peak = digits_best * H100_SXM["memory TB/s"] / H100_SXM["fp16 tensor TFLOPS (dense)"]
claim(share_of_peak < 0.15, "could use at most about a tenth of the float16 peak",
      share=share_of_peak)  # fmt: skip
wide_hidden = intensity(*matmuls["wide MLP, layer 1"], 2)
claim(wide_hidden > 5 * digits_best, "the wide MLP's hidden layers have a far higher intensity",
      wide=wide_hidden, digits=digits_best)  # fmt: skip
claim(all(any(d % 8 for d in matmuls[f"{p}, layer {len(PROBLEMS[p][0]) - 2}"]) for p in PROBLEMS),
      "both output layers (10 classes) break the multiple-of-8 rule",
      unaligned=unaligned)  # fmt: skip

# %% [markdown]
# ## 6. Memory per regime
#
# The bytes one step holds, by category: they depend on dtypes and shapes only, so they
# are the same on either device (a GPU's memory pool may reserve more than the arrays
# use). The float16 model is half of float32's; the float32 masters add a full float32
# copy, and their gradients too; the saved activations are float16.

# %%
memory = {p: {reg: r["memory"] for reg, r in by.items()} for p, by in timings.items()}
for problem, by_regime in memory.items():
    print(f"{problem}, bytes:")
    regimes = list(by_regime)
    print(f"  {'':16}" + "".join(f"{reg:>15}" for reg in regimes))
    for category in [*by_regime["fp32"], "total"]:
        row = [sum(m.values()) if category == "total" else m[category] for m in by_regime.values()]
        print(f"  {category:16}" + "".join(f"{b:>15,}" for b in row))

# %% [markdown]
# These are **stored** bytes (`minimp.memory.memory_report`, from the arrays' sizes),
# not a measured peak. In both problems the mixed model's parameters are half of fp32's
# and its masters exactly as large as fp32's parameters, and its activations are
# smaller than fp32's. Whether the total goes down depends on how much of it is
# activations, which grow with the batch (lesson 6 plots that).

# %%
for problem, by_regime in memory.items():
    fp32, mixed_memory = by_regime["fp32"], by_regime["mixed-dynamic"]
    claim(2 * mixed_memory["parameters"] == fp32["parameters"]
          and mixed_memory["master weights"] == fp32["parameters"]
          and 0 < mixed_memory["activations"] < fp32["activations"],
          "the mixed model's parameters are half of fp32's, its masters as large as fp32's "
          "parameters, its activations smaller", problem=problem)  # fmt: skip
#
# ## 7. The figure
#
# Step time per regime for both problems: the bar is the median step, the whisker the
# fastest and slowest block. The title names the device measured.

# %% tags=["timing"]


def step_time_bars(timings: dict, device_label: str) -> Figure:
    """Median step time per regime (bars), fastest to slowest block (whiskers)."""
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    axes = fig.subplots(1, len(timings))
    for ax, (problem, by_regime) in zip(np.atleast_1d(axes), timings.items(), strict=True):
        names = list(by_regime)
        median = np.array([by_regime[n]["step_time_s"] for n in names]) * 1e3
        low = median - np.array([by_regime[n]["step_time_min_s"] for n in names]) * 1e3
        high = np.array([by_regime[n]["step_time_max_s"] for n in names]) * 1e3 - median
        ax.bar(
            names,
            median,
            yerr=[low, high],
            capsize=4,
            color=[COLORS.get(n, "grey") for n in names],
        )
        for i, (top, t) in enumerate(zip(median + high, median, strict=True)):
            ax.text(i, top, f"{t / median[0]:.2f}×", ha="center", va="bottom", fontsize=9)
        sizes, batch_size = by_regime[names[0]]["sizes"], by_regime[names[0]]["batch_size"]
        ax.set_title(f"{problem}: {'-'.join(map(str, sizes))}, batch {batch_size}", fontsize=10)
        ax.set_ylabel("ms per training step (median)")
        ax.set_ylim(0, max(median + high) * 1.2)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    title = f"Training step time, measured on {device_label}\n(× = relative to fp32)"
    fig.suptitle(title, fontsize=10)
    return fig


fig = step_time_bars(timings, device_label)
# The README's figure is a GPU's: only a run on a GPU writes it. A CPU run saves its own
# under another name, which git ignores, so running every lesson without a GPU (the
# main job, `python -m minimp figures`) never rewrites the tracked figure.
save_figure(fig, "step_time" if DEVICE == "cuda" else "step_time_cpu")
show(fig)

# %% [markdown]
# ## What we measured
#
# - Which device this lesson ran on, and that the hand-written mixed-precision loop is
#   `Run`'s loop (bit for bit on the CPU).
# - The median step time of each regime on two problem sizes, with the spread of the
#   repeats, and the ratio to fp32 measured in the same run.
# - What a cast costs, beside a plain copy.
# - The bytes each regime holds: half-size float16 weights plus full-size float32
#   masters.
#
# What we did not measure, unless the device line says cuda: any GPU time. The GPU's
# peak rates are its datasheet's; the arithmetic intensities are computed from the
# shapes, not timed.
#
# ## Exercises
#
# 1. Change the wide MLP to `(512, 1024, 1024, 16)` (16 classes). Predict which line of
#    the intensity table changes its "dims % 8" column, then rerun that cell.
# 2. At what batch size does the digits MLP's first layer (64 x 128) cross the H100's
#    float16 ridge point? Work it out with `intensity` before you try batch sizes.
# 3. On the CPU, predict whether `bf16` or `mixed-dynamic` takes longer per step on the
#    wide MLP (think of what each does besides the matmuls), then compare with the
#    ratios printed in section 5.

# %% tags=["timing"]
print(f"device: {device_label}")
print(f"hand-written loop == Run: {same_bits} (largest relative gap {largest_gap:.2g})")
print(f"after {TRAIN_STEPS} steps: loss {np.mean(losses[-100:]):.5f}, test accuracy {accuracy:.2%}")
for problem, by_regime in step_times.items():
    fp32 = by_regime["fp32"]
    print(
        f"{problem}: "
        + ", ".join(f"{reg} {t * 1e3:.3f} ms ({t / fp32:.2f} x)" for reg, t in by_regime.items())
    )
print("casts: " + ", ".join(f"{name} {t * 1e3:.3f} ms" for name, t in cast_times.items()))
for problem, by_regime in memory.items():
    totals = {reg: sum(m.values()) for reg, m in by_regime.items()}
    print(f"{problem} bytes: " + ", ".join(f"{reg} {b:,}" for reg, b in totals.items()))
print("GPU numbers: " + ("measured above" if DEVICE == "cuda" else "none (no GPU found)"))
