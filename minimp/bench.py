"""Timing a training step: what one step of a precision regime costs, on a device.

The method, the same for every regime so that ratios measured in one run are fair:

- **Same work.** Every regime trains the same MLP from the same float32
  initialisation (``seed``), on the same batches in the same order, with the same
  optimizer settings; only precision changes. The step is ``minimp.train``'s loop
  (forward in the regime's dtype, loss in float32 with master weights, scale,
  backward, copy gradients to the masters, unscale, step or skip, update the
  scale, refresh the 16-bit weights), without its bookkeeping.
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
- **Interleaved.** Regimes compared in one call take their timed blocks in turn
  (one block of each, then the next round), so a load that comes and goes during
  the run falls on all of them alike.
- **Synchronised.** GPU kernels run asynchronously: the device is synchronised
  before each clock read, so a block's time includes all of its work.

Memory is measured from the arrays one step holds, by the categories of
``minimp.inspect.memory_report`` (parameters, master weights, gradients,
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
from dataclasses import replace
from typing import Any

import numpy as np

from minimp import backend
from minimp.data import Dataset
from minimp.inspect import memory_report
from minimp.tensor import Tensor, no_grad
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
    on the next of a few batches already converted and moved to the device."""

    def __init__(self, run: Run, n_batches: int) -> None:
        self.run = run
        self.batches = [run.to_device(*run._batch(i)) for i in range(n_batches)]

    def __call__(self) -> Tensor:
        x, y = self.batches[self.run.steps_done % len(self.batches)]
        return self.run.step(x, y).loss


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
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 3,
    seed: int = 0,
    config: TrainConfig = TrainConfig(),
    data: tuple[np.ndarray, np.ndarray] | None = None,
    n_batches: int = 8,
) -> dict[str, dict[str, Any]]:
    """Time each regime's training step on ``device``, their timed blocks interleaved
    (see the module docstring).

    ``sizes`` and ``batch_size`` default to ``config``'s, which also gives the
    optimizer, learning rate and scaler settings. ``data`` is (inputs, class indices),
    of which the first ``n_batches`` batches are cycled; without it, inputs are
    standard normal and classes uniform, drawn from ``seed``: the same for every
    regime. Returns, per regime name: the median step time (and min, max, every
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
    test = (inputs[:batch_size], targets[:batch_size])
    dataset = Dataset(inputs, targets, *test, name="bench", n_classes=sizes[-1])
    steppers = [_RunSteps(Run(r, dataset, config, device), n) for r in regimes]
    contenders = {s.run.regime.name: s for s in steppers}
    if len(contenders) < len(steppers):
        names = [s.run.regime.name for s in steppers]
        raise ValueError(f"each regime may be timed once, got {names}")
    timings = time_interleaved(
        contenders, steps=steps, repeats=repeats, warmup=warmup, device=device
    )
    label = device_name(device)
    results = {}
    for name, stepper in contenders.items():
        run = stepper.run
        memory = memory_report(run)
        with no_grad():
            x, y = stepper.batches[0]
            loss = run._loss(run._forward(x, keep=False)[0], y)
        results[name] = {
            "regime": name,
            "dtype": str(run.regime.dtype),
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
            "loss": loss.item(),
        }
    return results
