"""What precision does to a run: gradient statistics measured during training.

A float16 gradient that underflowed is simply 0: looking at it cannot tell a
flushed value from a true zero. So the statistics here are taken from the
float32 values *before* the cast: at a recorded step, the same batch is run
through a float32 twin of the model (the master weights, or the weights
widened), and its activation and weight gradients, multiplied by the run's loss
scale, are classified against the target format (``formats.classify``): zero,
flushed to zero, subnormal, normal, overflow. That is the measurement of the
paper's Figure 3 (Micikevicius et al. 2018, sec. 3.2).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from minimp import formats, nn
from minimp import functional as F
from minimp.data import Dataset
from minimp.fp8 import Fp8Linear
from minimp.tensor import Tensor, bfloat16, compute, float32, tensor
from minimp.train import ALL_REGIMES, History, Run, TrainConfig, get_regime

__all__ = [
    "GradientRecorder",
    "compare_regimes",
    "float32_gradients",
    "log2_histogram",
    "loss_ratios",
    "loss_scale_window",
    "markdown_table",
    "memory_report",
    "saved_arrays",
    "summarize",
]


def float32_gradients(
    model: nn.Sequential, weights: list[Tensor], inputs: np.ndarray, targets: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Each Linear layer's activation gradient (d loss / d output) and weight gradient,
    computed in float32 on one batch, unscaled, by a float32 twin of ``model`` whose
    parameters hold ``weights`` (in ``model.parameters()`` order) widened to float32.
    """
    if any(isinstance(layer, Fp8Linear) for layer in model.layers):
        raise TypeError(
            "float32_gradients: this model's matmuls run in fp8 (Fp8Linear layers); its "
            "gradients are float32 already, and what fp8 does to them is in each layer's "
            "grad_scaling (last_underflow, last_saturated, amax_history)"
        )
    twin = copy.deepcopy(model)
    for p, w in zip(twin.parameters(), weights, strict=True):
        p.data, p.grad = compute(w.data), None
    h = tensor(inputs, dtype="float32")
    outputs = []
    for i, layer in enumerate(twin.layers):
        h = layer(h)
        if isinstance(layer, nn.Linear):
            outputs.append((f"layers.{i}", layer, h.retain_grad()))
    F.cross_entropy(h, targets).backward()
    return {
        name: {"activation": out.grad.numpy(), "weight": layer.weight.grad.numpy()}
        for name, layer, out in outputs
    }


def log2_histogram(values: np.ndarray, edges: np.ndarray | None = None) -> dict[str, Any]:
    """Counts of log2 |v| over the nonzero finite values, the zeros counted apart (they
    have no logarithm): the data of the paper's Figure 3."""
    values = np.asarray(values, np.float64).ravel()
    finite = values[np.isfinite(values)]
    nonzero = np.abs(finite[finite != 0])
    if edges is None:
        edges = np.arange(-64, 17)
    counts, edges = np.histogram(np.log2(nonzero), bins=edges)
    return {"edges": edges, "counts": counts, "zeros": int(finite.size - nonzero.size)}


@dataclass
class GradientRecorder:
    """A training hook: at each recorded step, what a cast to ``fmt`` does to every
    layer's activation and weight gradients at the run's loss scale.

    ``records`` holds one dict per (step, layer, kind) with the fraction of values in
    each category of ``formats.CATEGORIES``, among all values and among the nonzero ones
    ("flushed_of_nonzero": the share of real gradient signal the cast destroys).
    """

    fmt: Any = "float16"
    records: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, info: Any) -> None:
        weights = info.masters.parameters() if info.masters else info.model.parameters()
        grads = float32_gradients(info.model, weights, info.inputs, info.targets)
        for layer, kinds in grads.items():
            for kind, values in kinds.items():
                counts = formats.count_categories(values * np.float32(info.scale), self.fmt)
                nonzero = values.size - counts["zero"]
                self.records.append(
                    {
                        "step": info.step,
                        "layer": layer,
                        "kind": kind,
                        "scale": info.scale,
                        **{k: v / values.size for k, v in counts.items()},
                        "flushed_of_nonzero": counts["flushed_to_zero"] / nonzero
                        if nonzero
                        else 0.0,
                    }
                )

    def select(self, kind: str, key: str = "flushed_of_nonzero") -> dict[str, np.ndarray]:
        """``{layer: values of key over the recorded steps}`` for one kind of gradient."""
        out: dict[str, list[float]] = {}
        for r in self.records:
            if r["kind"] == kind:
                out.setdefault(r["layer"], []).append(r[key])
        return {layer: np.array(v) for layer, v in out.items()}


# ---- the loss-scale advisor -------------------------------------------------------


def loss_scale_window(
    gradients: Sequence[np.ndarray], keep: float = 0.99, fmt: Any = "float16"
) -> tuple[float, float]:
    """The powers of two S that make the loss scale ``gradients`` need (sec. 3.2).

    Scaling the loss by S scales every gradient by S. ``low`` is the smallest S for
    which a share ``keep`` of the nonzero values satisfies |g| S >= the format's
    smallest subnormal (so at most 1 - keep of the signal flushes to zero); ``high``
    is the largest S for which max |g| S <= the format's max (nothing overflows).
    ``low > high`` means no single scale does both: the values span more binades
    than the format has. Pass float32 gradients of a real step (all layers, both
    activation and weight gradients: one scale multiplies them all).
    """
    fmt = formats.get_format(fmt)
    magnitudes = np.concatenate([np.abs(np.asarray(g, np.float64)).ravel() for g in gradients])
    magnitudes = magnitudes[(magnitudes > 0) & np.isfinite(magnitudes)]
    if magnitudes.size == 0:
        raise ValueError("loss_scale_window: every gradient is zero or non-finite")
    may_flush = math.floor((1.0 - keep) * magnitudes.size)  # values allowed to vanish
    smallest_kept = np.partition(magnitudes, may_flush)[may_flush]
    low = 2.0 ** math.ceil(math.log2(fmt.min_subnormal / smallest_kept))
    high = 2.0 ** math.floor(math.log2(fmt.max / magnitudes.max()))
    return low, high


# ---- memory ------------------------------------------------------------------------


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


# ---- the regimes side by side ---------------------------------------------------


def compare_regimes(
    dataset: Dataset,
    config: TrainConfig = TrainConfig(),
    regimes: Sequence[str] = tuple(ALL_REGIMES),
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool | None = None,
) -> dict[str, list[tuple[History, list[dict[str, Any]]]]]:
    """Run each regime once per seed. Returns, per regime, one (history, gradient
    records) pair per seed; the records say what a cast to the regime's 16-bit format
    does to the float32 gradients, four times per run (see ``minimp.inspect``). Each
    history's ``memory`` is the regime's ``memory_report`` (the same for every seed:
    shapes and dtypes do not depend on it), measured once, before training."""
    results: dict[str, list[tuple[History, list[dict[str, Any]]]]] = {}
    for name in regimes:
        regime = get_regime(name)
        memory = memory_report(Run(regime, dataset, config))
        for seed in seeds:
            run_config = replace(config, seed=seed, record_every=max(config.steps // 4, 1))
            recorder = GradientRecorder("bfloat16" if regime.dtype == bfloat16 else "float16")
            hooks = [recorder] if regime.dtype != float32 else []
            history = Run(regime, dataset, run_config).train(hooks=hooks, progress=progress)
            history.memory = dict(memory)
            results.setdefault(name, []).append((history, recorder.records))
    return results


def summarize(results: dict[str, list[tuple[History, list[dict[str, Any]]]]]) -> list[dict]:
    """One row per regime: mean and spread (standard deviation) over seeds of the final
    test accuracy and of the training loss (mean of the last 100 steps); the share of
    updates lost late in training; skipped steps; and the share of nonzero activation
    gradients the run's format flushes to zero at the last recorded step; the bytes one
    training step holds (``memory_report``, when the history has it)."""
    rows = []
    for name, runs in results.items():
        final_loss = [float(np.mean(h.loss[-100:])) for h, _ in runs]
        accuracy = [h.test_accuracy[-1] for h, _ in runs]
        lost = [float(np.nanmean(h.lost_updates[-100:])) for h, _ in runs]
        flushed = [_late_activation_flush(records) for _, records in runs]
        rows.append(
            {
                "regime": name,
                "accuracy_mean": float(np.mean(accuracy)),
                "accuracy_std": float(np.std(accuracy)),
                "loss_mean": float(np.mean(final_loss)),
                "loss_std": float(np.std(final_loss)),
                "lost_updates": float(np.mean(lost)),
                "skipped": float(np.mean([sum(h.skipped) for h, _ in runs])),
                "activation_flushed": float(np.mean(flushed)) if runs[0][1] else math.nan,
                "memory": sum(runs[0][0].memory.values()) if runs[0][0].memory else math.nan,
            }
        )
    return rows


def loss_ratios(results: dict[str, list], reference: str = "fp32") -> dict[str, list[float]]:
    """Per seed, each regime's final training loss divided by the reference regime's on
    the same seed: the paired comparison, free of seed-to-seed variation."""
    final = {
        name: [float(np.mean(h.loss[-100:])) for h, _ in runs] for name, runs in results.items()
    }
    return {
        name: [a / b for a, b in zip(losses, final[reference], strict=True)]
        for name, losses in final.items()
    }


def _late_activation_flush(records: list[dict[str, Any]]) -> float:
    if not records:
        return math.nan
    last = max(r["step"] for r in records)
    late = [r for r in records if r["step"] == last and r["kind"] == "activation"]
    return float(np.mean([r["flushed_of_nonzero"] for r in late]))


def markdown_table(rows: list[dict]) -> str:
    """The summary as the Markdown table the README shows."""
    lines = [
        "| regime | test accuracy | final training loss | updates lost | skipped steps "
        "| activation grads flushed | memory per step |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        flushed = "n/a" if math.isnan(r["activation_flushed"]) else f"{r['activation_flushed']:.1%}"
        memory = "n/a" if math.isnan(r["memory"]) else f"{r['memory'] / 1024:.0f} KiB"
        lines.append(
            f"| `{r['regime']}` | {r['accuracy_mean']:.2%} ± {r['accuracy_std']:.2%} "
            f"| {r['loss_mean']:.3g} ± {r['loss_std']:.2g} | {r['lost_updates']:.1%} "
            f"| {r['skipped']:.1f} | {flushed} | {memory} |"
        )
    return "\n".join(lines)
