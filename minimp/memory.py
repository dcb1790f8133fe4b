"""Memory: the bytes one training step holds, by category.

Mixed precision halves what the forward pass reads and saves (16-bit weights and
activations) and adds float32 master weights (Micikevicius et al. 2018, sec. 3.1:
"the master copy adds 50% to weight memory, but total training memory roughly
halves because activations are FP16"). Which of the two wins depends on the
network: activations grow with the batch, weights do not.
"""

from __future__ import annotations

import copy
from typing import Any

from minimp.tensor import Tensor
from minimp.train import Run

__all__ = ["memory_report", "saved_arrays"]


def saved_arrays(output: Tensor) -> list[Any]:
    """The arrays the autograd graph behind ``output`` keeps alive for backward: what
    each op's closure holds (its inputs' arrays, or its own output), each array once.
    This is the "activations" line of a memory budget, measured, not estimated."""
    found: dict[int, Any] = {}
    for node in output._topological_order():
        for cell in getattr(node._backward, "__closure__", None) or ():
            for value in _flatten(cell.cell_contents):
                if isinstance(value, Tensor):
                    value = value.data
                if hasattr(value, "nbytes") and getattr(value, "ndim", 0) > 0:
                    found[id(value)] = value
    return list(found.values())


def _flatten(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


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
