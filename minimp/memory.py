"""Memory: the bytes one training step holds, stored and measured.

Mixed precision halves what the forward pass reads and saves (16-bit weights and
activations) and adds float32 master weights (Micikevicius et al. 2018, sec. 3.1:
"the master copy adds 50% to weight memory, but total training memory roughly
halves because activations are FP16"). Which of the two wins depends on the
network: activations grow with the batch, weights do not.

Two figures, never mixed up:

- **stored** (:func:`memory_report`): the bytes of the arrays a step keeps, by
  category, read off the real arrays: parameters, masters, gradients, optimizer
  state, and the activations each op declared it saves for backward. This is the
  model of a memory budget, and what a GPU with native 16-bit kernels holds.
- **peak** (:func:`measure_peak`): the most bytes allocated at once while one
  step runs, above what the run held before it, measured by the allocator
  (tracemalloc on the CPU, CuPy's memory pool on a GPU). It adds every
  temporary: on the CPU, minimp computes 16-bit ops in float32 and rounds once,
  so its temporaries are float32 and a 16-bit step's peak is far above half of
  float32's. That is the emulation's cost, not the format's.
"""

from __future__ import annotations

import copy
import gc
import tracemalloc
from typing import Any

from minimp import backend
from minimp.tensor import Tensor
from minimp.train import Run

__all__ = ["measure_peak", "memory_report", "saved_arrays"]


def saved_arrays(output: Tensor) -> list[Any]:
    """The arrays the autograd graph behind ``output`` saves for backward, each once:
    what every op declared when it built the graph (``Tensor.from_op``'s ``saved``:
    its inputs, or its own output, as PyTorch's autograd saves them). This is the
    "activations" line of a memory budget. (minimp's graph also keeps each
    intermediate tensor its consumers point to; the measured peak includes that.)"""
    found: dict[int, Any] = {}
    for node in output._topological_order():
        for array in node._saved:
            if getattr(array, "ndim", 0) > 0:
                found[id(array)] = array
    return list(found.values())


def memory_report(run: Run) -> dict[str, int]:
    """Bytes held by one training step of ``run``, by category, from its real arrays:
    parameters (the model, in its dtype), master weights, gradients (the model's and
    the masters'), optimizer state, and the activations the graph saves for backward
    (the input batch included, parameters excluded). Measured by running the run's next
    step on a copy of it, so ``run`` itself is left as it was."""
    run = copy.deepcopy(run, memo={id(run.dataset): run.dataset})
    x, y = run._batch(run.steps_done)
    logits, _ = run._forward(x, keep=False)
    loss = run._loss(logits, y)
    params = {id(p.data) for p in run.model.parameters()}
    activations = sum(a.nbytes for a in saved_arrays(loss) if id(a) not in params)
    run.scaler.scale(loss).backward()
    grads = sum(p.grad.data.nbytes for p in run.model.parameters() if p.grad is not None)
    if run.masters:
        run.masters.copy_grads_to_masters()
        grads += sum(m.grad.data.nbytes for m in run.masters.parameters())
    run.optimizer.step()
    state = sum(
        v.nbytes for s in run.optimizer.state.values() for v in s.values() if hasattr(v, "nbytes")
    )
    run.optimizer.zero_grad()
    run.model.zero_grad()
    return {
        "parameters": sum(p.data.nbytes for p in run.model.parameters()),
        "master weights": sum(m.data.nbytes for m in run.masters.parameters())
        if run.masters
        else 0,
        "gradients": grads,
        "optimizer state": state,
        "activations": activations,
    }


def measure_peak(run: Run) -> int:
    """The peak bytes allocated during one training step of ``run``, above what it held
    before the step, measured by the allocator (see the module docstring). Measured on
    a copy after one warm-up step (which allocates the optimizer state), so the step
    measured is a steady one and ``run`` itself is left as it was."""
    run = copy.deepcopy(run, memo={id(run.dataset): run.dataset})
    run.step(*run.to_device(*run._batch(run.steps_done)))
    x, y = run.to_device(*run._batch(run.steps_done))
    if run.device == "cuda":
        return _cupy_peak(backend.array_module(x.data), lambda: run.step(x, y))
    # No garbage collection inside the measured step: when the collector happens to
    # run would otherwise move the peak by a kilobyte from one run to the next.
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        run.step(x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        if collecting:
            gc.enable()
    return peak - before


def _cupy_peak(cupy: Any, step: Any) -> int:  # pragma: no cover - needs a GPU
    """The pool's high-water mark of bytes in use during ``step()``, above its level before."""
    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()

    class Peak(cupy.cuda.MemoryHook):
        name = "minimp-peak"

        def __init__(self) -> None:
            self.in_use = self.peak = pool.used_bytes()

        def malloc_postprocess(self, **kwargs: Any) -> None:
            self.in_use += kwargs["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kwargs: Any) -> None:
            self.in_use -= kwargs["mem_size"]

    hook = Peak()
    before = hook.in_use
    with hook:
        step()
        cupy.cuda.Device().synchronize()
    return hook.peak - before
