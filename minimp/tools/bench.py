"""Timing a training step: what one step of a precision regime costs, on a device.

The method, the same for every regime so that ratios measured in one run are fair:

- **Same work.** Every regime trains the same MLP from the same float32
  initialisation (``seed``), on the same batches in the same order, with the same
  optimizer settings; only precision changes. The step is ``Run.step``, the one
  the training loop runs (forward in the regime's dtype, loss in float32 with
  master weights, scale, backward, copy gradients to the masters, unscale, step or
  skip, update the scale, refresh the 16-bit weights), without its bookkeeping.
  The baselines (``minimp.tools.baselines``: the same network by hand in NumPy/CuPy,
  and in PyTorch eager) start from the same weights and take the same batches.
- **Data already there.** The batches are drawn once, converted to the regime's
  dtype and moved to the device before any clock starts, as a data loader would
  deliver them: a step's time is compute, not transfer.
- **Warm-up.** ``warmup`` steps run first and are not timed: the first calls pay
  for allocation, CuPy's kernel compilation and cuBLAS's set-up, costs a long run
  pays once.
- **Median of repeats.** ``repeats`` blocks of ``steps`` steps are timed with
  ``time.perf_counter``; a block's time divided by ``steps`` is one sample, and
  the median sample is reported (with the fastest and slowest beside it), so one
  block disturbed by another process does not move the result.
- **Interleaved.** Contenders compared in one call take their timed blocks in turn
  (one block of each, then the next round), so a load that comes and goes during
  the run falls on all of them alike.
- **Synchronised.** GPU kernels run asynchronously: the device is synchronised
  before each clock read, so a block's time includes all of its work.

Memory is measured from the arrays one step holds, by the categories of
``minimp.memory.memory_report`` (parameters, master weights, gradients,
optimizer state, activations saved for backward): array bytes, the same on any
device; a GPU memory pool may reserve more.

Only ratios measured in one run on one machine mean anything; no test asserts a time.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from minimp import backend
from minimp.data import Dataset
from minimp.memory import memory_report
from minimp.tensor import Tensor
from minimp.train import Regime, Run, TrainConfig

__all__ = [
    "compare_training_steps",
    "device_name",
    "synchronize",
    "time_interleaved",
    "time_steps",
    "time_training_steps",
]


def device_name(device: str) -> str:
    """A label for what was measured: the GPU's name, or the CPU's and its core count."""
    backend.check_device(device)
    if device == "cuda":
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        return f"cuda: {name} (CuPy {cupy.__version__})"
    return f"cpu: {_cpu_model()}, {os.cpu_count()} cores (NumPy {np.__version__})"


def _cpu_model() -> str:
    try:  # Linux names the model here; platform.processor() often says only "x86_64"
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def synchronize(device: str) -> None:
    """Wait until every kernel queued on ``device`` has finished (a no-op on the CPU)."""
    if device == "cuda":
        import cupy

        cupy.cuda.Device().synchronize()


def time_steps(
    step: Callable[[], Any],
    *,
    steps: int = 20,
    repeats: int = 5,
    warmup: int = 3,
    device: str = "cpu",
) -> dict[str, Any]:
    """Seconds per call of ``step``: the median over ``repeats`` timed blocks of ``steps``
    calls each, after ``warmup`` untimed calls. Any step function will do (minimp's,
    hand-written NumPy, another framework's), so all are timed the same way."""
    return time_interleaved(
        {"step": step}, steps=steps, repeats=repeats, warmup=warmup, device=device
    )["step"]


def time_interleaved(
    contenders: Mapping[str, Callable[[], Any]],
    *,
    steps: int = 20,
    repeats: int = 5,
    warmup: int = 3,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """``time_steps`` for several step functions at once, their blocks taken in turn
    (repeat 1 of each, then repeat 2 of each, ...): a load that comes and goes while
    the benchmark runs then falls on every contender alike, so their ratios stay fair."""
    if steps < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need steps >= 1, repeats >= 1, warmup >= 0; got {steps}, {repeats}, {warmup}"
        )
    for step in contenders.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, step in contenders.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / steps)
    return {
        name: {
            "step_time_s": statistics.median(times),
            "step_time_min_s": min(times),
            "step_time_max_s": max(times),
            "samples_s": times,
        }
        for name, times in samples.items()
    }


class _RunSteps:
    """A ``Run``'s training step as a callable for the timer: each call is ``run.step``
    on the next batch, the batches converted and moved to the device beforehand."""

    def __init__(self, run: Run, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.run = run
        self.name = run.regime.name
        self.batches = [run.to_device(x, y) for x, y in batches]

        self.loss: Tensor | None = None

    def __call__(self) -> Tensor:
        x, y = self.batches[self.run.steps_done % len(self.batches)]
        self.loss = self.run.step(x, y).loss
        return self.loss

    def loss_value(self) -> float:
        """The last step's loss (a GPU synchronises to read it)."""
        if self.loss is None:
            raise RuntimeError(f"{self.name}: no step has run yet")
        return self.loss.item()

    def memory(self) -> dict[str, int]:
        return memory_report(self.run)


# The same network written without minimp, side by side with it (minimp.tools.baselines).
BASELINES = ("numpy fp32", "numpy mixed", "torch fp32", "torch amp")


def _baseline(name: str, config: TrainConfig, batches: Sequence[Any], device: str) -> Any:
    from minimp.tools import baselines

    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    kind, precision = name.split()
    if config.optimizer != "sgd":
        raise ValueError(f"baselines train with SGD; this config uses {config.optimizer!r}")
    options = dict(
        sizes=config.sizes, batches=batches, lr=config.lr, momentum=config.momentum,
        seed=config.seed, device=device, precision=precision,
        init_scale=config.init_scale, growth_interval=config.growth_interval,
    )  # fmt: skip
    return (baselines.NumpyMLP if kind == "numpy" else baselines.TorchMLP)(**options)


def time_training_steps(
    regime: str | Regime,
    sizes: Sequence[int] | None = None,
    batch_size: int | None = None,
    steps: int = 20,
    **options: Any,
) -> dict[str, Any]:
    """Time one regime's training step: ``compare_training_steps`` with one regime."""
    name = regime if isinstance(regime, str) else regime.name
    return compare_training_steps([regime], sizes, batch_size, steps, **options)[name]


def compare_training_steps(
    regimes: Sequence[str | Regime],
    sizes: Sequence[int] | None = None,
    batch_size: int | None = None,
    steps: int = 20,
    *,
    baselines: Sequence[str] = (),
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 3,
    seed: int = 0,
    config: TrainConfig = TrainConfig(),
    data: tuple[np.ndarray, np.ndarray] | None = None,
    n_batches: int = 8,
) -> dict[str, dict[str, Any]]:
    """Time each regime's training step on ``device``, and each of ``baselines`` (names
    from ``BASELINES``: the same network without minimp), their timed blocks
    interleaved (see the module docstring).

    ``sizes`` and ``batch_size`` default to ``config``'s, which also gives the
    optimizer, learning rate and scaler settings. ``data`` is (inputs, class indices),
    of which the first ``n_batches`` batches are cycled; without it, inputs are
    standard normal and classes uniform, drawn from ``seed``: the same for every
    contender. Returns, per name: the median step time (and min, max, every
    sample), examples per second, the bytes one step holds by category, the loss on
    the first batch after timing, and what was measured where.
    """
    sizes = tuple(config.sizes if sizes is None else sizes)
    batch_size = config.batch_size if batch_size is None else batch_size
    config = replace(config, sizes=sizes, batch_size=batch_size, seed=seed)
    if data is None:
        rng = np.random.default_rng(seed)
        inputs = rng.standard_normal((n_batches * batch_size, sizes[0]), dtype=np.float32)
        targets = rng.integers(0, sizes[-1], n_batches * batch_size)
    else:
        inputs, targets = data
    n = min(n_batches, len(inputs) // batch_size)
    if n < 1:
        raise ValueError(f"{len(inputs)} examples do not make a batch of {batch_size}")
    batches = [
        (
            inputs[i * batch_size : (i + 1) * batch_size],
            targets[i * batch_size : (i + 1) * batch_size],
        )
        for i in range(n)
    ]
    dataset = Dataset(inputs, targets, *batches[0], name="bench", n_classes=sizes[-1])
    contenders = [_RunSteps(Run(r, dataset, config, device), batches) for r in regimes]
    contenders += [_baseline(name, config, batches, device) for name in baselines]
    named = {c.name: c for c in contenders}
    if len(named) < len(contenders):
        names = [c.name for c in contenders]
        raise ValueError(f"each contender may be timed once, got {names}")
    timings = time_interleaved(named, steps=steps, repeats=repeats, warmup=warmup, device=device)
    label = device_name(device)
    results = {}
    for name, contender in named.items():
        loss = contender.loss_value()
        memory = contender.memory()
        results[name] = {
            "name": name,
            "minimp": isinstance(contender, _RunSteps),
            "device": device,
            "device_name": label,
            "sizes": list(sizes),
            "batch_size": batch_size,
            "steps": steps,
            "repeats": repeats,
            "warmup": warmup,
            **timings[name],
            "examples_per_s": batch_size / timings[name]["step_time_s"],
            "memory": memory,
            "memory_total": sum(memory.values()),
            "loss": loss,
        }
    return results


# ---- the benchmark: workloads, targets, report -------------------------------------


@dataclass(frozen=True)
class Workload:
    """An MLP and a batch size to time. ``small`` is overhead-bound (Python and
    per-op costs dominate); ``large`` is compute-bound (the matmuls dominate)."""

    name: str
    sizes: tuple[int, ...]
    batch_size: int


WORKLOADS = {
    "cpu": (
        Workload("small", (64, 256, 256, 10), 128),
        Workload("large", (1024, 2048, 2048, 10), 512),
    ),
    "cuda": (
        Workload("small", (64, 256, 256, 10), 128),
        Workload("large", (4096, 4096, 4096, 10), 4096),
    ),
}


@dataclass(frozen=True)
class Target:
    """A claim about speed or memory, as a ratio of two contenders measured in one
    run: ``numerator / denominator`` (of step times, or of ``memory`` bytes) must be
    at most ``limit``."""

    device: str
    workload: str
    numerator: str
    denominator: str
    limit: float
    what: str
    memory: tuple[str, ...] = ()  # categories summed; empty: step time

    def ratio(self, results: Mapping[str, Mapping[str, Any]]) -> float | None:
        """The measured ratio, or None when a contender was not measured."""
        if self.numerator not in results or self.denominator not in results:
            return None
        if self.memory:
            a, b = (
                sum(results[n]["memory"][c] for c in self.memory)
                for n in (self.numerator, self.denominator)
            )
        else:
            a, b = results[self.numerator]["step_time_s"], results[self.denominator]["step_time_s"]
        return a / b


# What minimp should reach (issues 6 and 18), each a ratio measured in one run.
_MEMORY = ("activations", "parameters")  # what the forward pass reads and keeps
TARGETS = (
    Target("cpu", "large", "fp32", "numpy fp32", 1.05, "engine overhead vs hand-written NumPy"),
    Target("cpu", "large", "fp32", "torch fp32", 1.5, "float32 vs PyTorch eager"),
    Target("cpu", "large", "mixed-dynamic", "fp32", 1.5, "mixed vs float32 (casts are the floor)"),
    Target("cpu", "small", "fp32", "numpy fp32", 1.5, "engine overhead vs hand-written NumPy"),
    Target("cpu", "small", "fp32", "torch fp32", 1.5, "float32 vs PyTorch eager"),
    Target("cpu", "large", "mixed-dynamic", "fp32", 0.55, "activation + weight memory", _MEMORY),
    Target("cuda", "large", "mixed-dynamic", "fp32", 1 / 4, "mixed at least 4x faster than fp32"),
    Target("cuda", "large", "mixed-dynamic", "torch amp", 1.2, "mixed vs PyTorch eager AMP"),
    Target("cuda", "large", "matmul minimp", "matmul bare", 2.0, "fp16 linear vs bare CuPy matmul"),
    Target("cuda", "large", "mixed-dynamic", "fp32", 0.6, "activation + weight memory", _MEMORY),
)

# The small network's rows are overhead-bound, and the load of a shared machine moves
# them: they are timed in this many independent rounds and kept only when every
# round's median is within REPRODUCE of the others (issue 18: rows printed once were
# not what the next run measured).
ROUNDS, REPRODUCE = 3, 1.10


# Left out by default: too slow to time in a benchmark, for a reason that is not minimp's.
NOT_TIMED = {
    ("cpu", "large", "torch amp"): (
        "PyTorch's float16 matmul on a CPU without AMX-FP16 has no fast kernel: "
        "a step takes seconds (time it with compare_training_steps(..., "
        "baselines=['torch amp']))"
    ),
}


def run_benchmark(
    device: str = "cpu",
    quick: bool = False,
    baselines: Sequence[str] = BASELINES,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every regime that runs on ``device`` and the available ``baselines`` on
    each of the device's ``WORKLOADS``, all in this one run, and check ``TARGETS``.
    ``quick`` takes 2 blocks of 2 steps, enough to show the benchmark works, not to
    measure. Returns a JSON-ready dict; ``report`` formats it."""
    from minimp.tensor import bfloat16
    from minimp.tools import baselines as baseline_module
    from minimp.train import REGIMES

    backend.check_device(device)
    on_gpu = [n for n, r in REGIMES.items() if bfloat16 not in (r.param_dtype, r.compute_dtype)]
    regimes = list(REGIMES) if device == "cpu" else on_gpu  # CuPy holds no bfloat16
    torch_ok = baseline_module.torch_available(device)
    chosen = [b for b in baselines if torch_ok or not b.startswith("torch")]
    workloads = {}
    for workload in WORKLOADS[device]:
        if log:
            log(f"timing {workload.name}: MLP {'-'.join(map(str, workload.sizes))}, "
                f"batch {workload.batch_size}, on {device} ...")  # fmt: skip
        large = workload.name == "large"
        if quick:
            steps, repeats, warmup = 2, 2, 1
        else:  # blocks of about a second each
            steps, repeats, warmup = (3 if device == "cpu" else 10) if large else 30, 5, 2
        skipped = {
            b: why for (d, w, b), why in NOT_TIMED.items() if (d, w) == (device, workload.name)
        }
        rounds = [
            compare_training_steps(
                regimes,
                workload.sizes,
                workload.batch_size,
                steps,
                baselines=[b for b in chosen if b not in skipped],
                device=device,
                repeats=repeats,
                warmup=warmup,
            )
            for _ in range(1 if large or quick else ROUNDS)
        ]
        results, unreproduced = reproduced(rounds)
        skipped.update(unreproduced)
        if device == "cuda" and large:
            results.update(time_linear(workload, repeats=repeats, steps=steps))
        workloads[workload.name] = {
            "sizes": list(workload.sizes),
            "batch_size": workload.batch_size,
            "results": results,
            # a baseline left out by choice (no torch) is not listed; every other is, and why
            "not_timed": {b: why for b, why in skipped.items() if b in chosen or b in regimes},
        }
    checks = []
    for target in TARGETS:
        if target.device != device:
            continue
        ratio = target.ratio(workloads[target.workload]["results"])
        checks.append(
            {
                **asdict(target),
                "ratio": ratio,
                "met": None if ratio is None else ratio <= target.limit,
            }
        )
    if log:
        log(f"timing the transformer on {device} ...")
    workloads["transformer"] = transformer_steps(device, quick)
    return {
        "device": device,
        "device_name": device_name(device),
        "date": time.strftime("%Y-%m-%d"),
        "quick": quick,
        "threads": _threads(),
        "versions": _versions(),
        "workloads": workloads,
        "targets": checks,
    }


def reproduced(
    rounds: Sequence[Mapping[str, dict[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """From independent rounds of one workload: each contender's row (the round with
    the median step time, its per-round medians added) if the rounds agree within
    ``REPRODUCE``, and, for those that do not, why they are left out."""
    kept, left_out = {}, {}
    for name in rounds[0]:
        rows = sorted((r[name] for r in rounds), key=lambda row: row["step_time_s"])
        medians = [row["step_time_s"] for row in rows]
        if medians[-1] > REPRODUCE * medians[0]:
            ms = ", ".join(f"{1e3 * m:.2f}" for m in medians)
            left_out[name] = (
                f"not reproduced: {len(rounds)} rounds gave medians of {ms} ms, more than "
                f"{REPRODUCE - 1:.0%} apart"
            )
        else:
            kept[name] = {**rows[len(rows) // 2], "round_medians_s": medians}
    return kept, left_out


def transformer_steps(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """The small GPT's training step (``minimp.gpt``'s default shape, batch 16, AdamW),
    in float32 and in AMP (autocast float16, dynamic loss scale), timed interleaved."""
    from minimp import data, gpt, optim
    from minimp.amp import GradScaler, autocast

    config, batch = gpt.GPTConfig(), 16
    text = data.load_shakespeare(block_size=config.block_size)
    host = [text.batch("train", batch, np.random.default_rng(i)) for i in range(4)]
    contenders, models = {}, {}
    for name, amp in (("gpt fp32", False), ("gpt amp", True)):
        model = gpt.GPT(config, device=device, generator=np.random.default_rng(0))
        xp = backend.array_module(model.parameters()[0].data)
        batches = [(xp.asarray(x), xp.asarray(y)) for x, y in host]
        opt = optim.AdamW(model.parameters(), lr=1e-3)
        scaler = GradScaler(enabled=amp)
        calls = [0]

        def step(model=model, batches=batches, opt=opt, scaler=scaler, calls=calls, amp=amp):
            x, y = batches[calls[0] % len(batches)]
            calls[0] += 1
            with autocast("float16", enabled=amp):
                _, loss = model(x, y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            return loss

        contenders[name], models[name] = step, model
    steps, repeats, warmup = (1, 2, 1) if quick else (3, 5, 2)
    timings = time_interleaved(
        contenders, steps=steps, repeats=repeats, warmup=warmup, device=device
    )
    results = {
        name: {
            "name": name,
            "minimp": True,
            "steps": steps,
            "repeats": repeats,
            **t,
            "examples_per_s": batch / t["step_time_s"],
        }
        for name, t in timings.items()
    }
    return {
        "sizes": [config.n_layer, config.n_head, config.n_embd, config.block_size],
        "batch_size": batch,
        "description": f"GPT {config.n_layer} layers, {config.n_head} heads, "
        f"{config.n_embd} wide, context {config.block_size}",
        "results": results,
        "not_timed": {},
    }


def time_linear(workload: Workload, repeats: int = 5, steps: int = 10) -> dict[str, dict[str, Any]]:
    """The large workload's widest layer as one float16 matmul on the GPU: minimp's
    ``F.linear`` (forward only) against a bare CuPy ``x @ w.T`` of the same shapes: what
    the engine's wrapping costs on top of cuBLAS."""
    import cupy

    from minimp import functional as F

    n_in, n_out = workload.sizes[1], workload.sizes[2]
    rng = cupy.random.default_rng(0)
    x = rng.standard_normal((workload.batch_size, n_in), dtype=cupy.float32).astype(cupy.float16)
    w = rng.standard_normal((n_out, n_in), dtype=cupy.float32).astype(cupy.float16)
    xt, wt = Tensor(x), Tensor(w)
    timings = time_interleaved(
        {"matmul minimp": lambda: F.linear(xt, wt), "matmul bare": lambda: x @ w.T},
        steps=steps, repeats=repeats, warmup=2, device="cuda",
    )  # fmt: skip
    flops = 2 * workload.batch_size * n_in * n_out
    return {
        name: {
            **t,
            "name": name,
            "minimp": name == "matmul minimp",
            "tflops": flops / t["step_time_s"] / 1e12,
        }
        for name, t in timings.items()
    }


def _threads() -> dict[str, Any]:
    """What may run in parallel: BLAS and PyTorch threads, as the environment sets them."""
    threads: dict[str, Any] = {"cpu_count": os.cpu_count(), "blas": blas()}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            threads[var] = os.environ[var]
    try:
        import torch

        threads["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    return threads


def blas() -> str:
    """Which BLAS NumPy calls, which kernel it chose for this CPU, and with how many
    threads (threadpoolctl): OpenBLAS's AVX2 (Haswell) and AVX-512 (SkylakeX) kernels
    time float32 differently, and so every ratio to it."""
    from threadpoolctl import threadpool_info

    found = [
        f"{p.get('internal_api', '?')} {p.get('version') or ''} kernel "
        f"{p.get('architecture') or '?'}, {p.get('num_threads')} threads".replace("  ", " ")
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]
    return "; ".join(found) or "no BLAS found by threadpoolctl"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("torch", "cupy"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return versions


def report(result: Mapping[str, Any]) -> str:
    """The benchmark as Markdown: per workload a table of step time, throughput and
    memory with ratios to minimp's float32, then each target's measured ratio."""
    lines = [
        f"Measured {result['date']} on {result['device_name']}"
        + (" (quick mode: a smoke test, not a measurement)" if result["quick"] else ""),
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + "; threads: " + ", ".join(
            f"{k}={v}" for k, v in result["threads"].items() if k != "blas"
        ),
        f"BLAS: {result['threads'].get('blas', 'not recorded')}",
    ]  # fmt: skip
    for name, workload in result["workloads"].items():
        rows = workload["results"]
        sample = next(iter(rows.values()))
        shape = workload.get("description") or "MLP " + "-".join(map(str, workload["sizes"]))
        rounds = len(sample.get("round_medians_s", [0]))
        lines += [
            "",
            f"**{name}**: {shape}, batch {workload['batch_size']}; "
            f"median of {sample['repeats']} blocks of {sample['steps']} steps"
            + (f", the middle of {rounds} rounds that agree within 10%" if rounds > 1 else ""),
            "",
            "| contender | ms/step | spread | examples/s | time vs fp32 | memory MiB "
            "| memory vs fp32 | loss |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        base = rows.get("fp32", rows.get("gpt fp32"))
        for row in rows.values():
            t = row["step_time_s"]
            # the blocks' range around their median, as a fraction of it
            spread = f"±{(row['step_time_max_s'] - row['step_time_min_s']) / 2 / t:.0%}"
            if "tflops" in row:  # a bare matmul
                lines.append(
                    f"| {row['name']} | {t * 1e3:.3f} | {spread} | {row['tflops']:.1f} TFLOP/s "
                    "| | | | |"
                )
                continue
            if "memory" not in row:  # the transformer: time only
                vs_time = f"{t / base['step_time_s']:.2f}x" if base else ""
                lines.append(
                    f"| {row['name']} | {t * 1e3:.2f} | {spread} | {row['examples_per_s']:,.0f} "
                    f"| {vs_time} | | | |"
                )
                continue
            mib = row["memory_total"] / 2**20
            vs_time = f"{t / base['step_time_s']:.2f}x" if base else ""
            vs_mem = f"{row['memory_total'] / base['memory_total']:.2f}x" if base else ""
            label = row["name"] if row["minimp"] else f"*{row['name']}*"
            lines.append(
                f"| {label} | {t * 1e3:.2f} | {spread} | {row['examples_per_s']:,.0f} "
                f"| {vs_time} | {mib:.1f} | {vs_mem} | {row['loss']:.3f} |"
            )
        for name, why in workload["not_timed"].items():
            lines += ["", f"Not timed: *{name}*: {why}."]
    lines += ["", "| target | workload | measured | limit | |", "| --- | --- | ---: | ---: | --- |"]
    for check in result["targets"]:
        ratio = "not measured" if check["ratio"] is None else f"{check['ratio']:.2f}x"
        verdict = {None: "", True: "met", False: "**missed**"}[check["met"]]
        what = f"{check['what']} ({check['numerator']} / {check['denominator']})"
        lines.append(
            f"| {what} | {check['workload']} | {ratio} | {check['limit']:.2f}x | {verdict} |"
        )
    return "\n".join(lines)
