"""Every figure in ``figures/``, measured afresh: ``python -m minimp figures``.

Each ``figure_*`` function trains or measures what its figure shows (on the
shipped digits, with the documented defaults of ``train.TrainConfig``) and
returns the matplotlib Figure together with the numbers it drew, so a lesson or a
test can use both. ``make_all`` writes them all as PNGs, in about a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from minimp import data, experiments, formats, memory, nn, optim, plots, stats
from minimp.amp import MasterWeights
from minimp.tensor import float16, tensor
from minimp.train import REGIMES, Run, TrainConfig

__all__ = ["FIGURES", "make_all"]

FIGURES_DIR = Path(__file__).resolve().parents[1] / "figures"
DPI = 110


def figure_number_line() -> tuple[Figure, dict]:
    return plots.number_line(), {}


def figure_master_weights(results: dict) -> tuple[Figure, dict]:
    """A float16 weight of 1.0 fed 2000 updates of -1e-4 (a fifth of its half-ulp,
    2^-11), beside the same updates applied to a float32 master; and, from the
    regime runs, the share of updates each regime's optimizer rounded away."""
    steps, update = 2000, 1e-4
    pure = nn.Linear(1, 1, bias=False, dtype=float16)
    mixed = nn.Linear(1, 1, bias=False, dtype=float16)
    for layer in (pure, mixed):
        layer.weight.data[...] = 1.0
    masters = MasterWeights(mixed)
    sgd_pure = optim.SGD(pure.parameters(), lr=update)
    sgd_master = optim.SGD(masters.parameters(), lr=update)
    trace: dict[str, list[float]] = {"float16": [], "master": [], "float16_copy": []}
    for _ in range(steps):
        for layer in (pure, mixed):
            layer.weight.grad = tensor([[-1.0]], dtype=float16)
        sgd_pure.step()
        masters.copy_grads_to_masters()
        sgd_master.step()
        masters.copy_masters_to_model()
        trace["float16"].append(pure.weight.item())
        trace["master"].append(masters.masters[0].item())
        trace["float16_copy"].append(mixed.weight.item())
    arrays = {k: np.array(v) for k, v in trace.items()}
    arrays["step"] = np.arange(1, steps + 1)
    arrays["exact"] = 1.0 + update * arrays["step"]
    lost = {
        name: np.array(runs[0][0].lost_updates)
        for name, runs in results.items()
        if name in ("fp32", "fp16", "mixed-dynamic")
    }
    numbers = {
        "float16_final": float(arrays["float16"][-1]),
        "master_final": float(arrays["master"][-1]),
        "exact_final": float(arrays["exact"][-1]),
    }
    return plots.master_weights(arrays, lost), numbers


def figure_underflow_histogram(run: Run) -> tuple[Figure, dict]:
    """All activation gradients of the dynamic-scaled run's network at its last step,
    in float32 (a float32 twin on the next batch), unscaled and at the scale the
    dynamic scaler settled on, with the advisor's window of safe scales."""
    x, y = run._batch(run.steps_done)
    grads = stats.float32_gradients(run.model, run.masters.parameters(), x, y)
    activations = np.concatenate([g["activation"].ravel() for g in grads.values()])
    everything = [g[k] for g in grads.values() for k in ("activation", "weight")]
    window = stats.loss_scale_window(everything, keep=0.99)
    settled = float(run.history.scale[-1])
    fig = plots.underflow_histogram(
        activations,
        "float16",
        scales=(1.0, settled),
        title=f"Activation gradients of the digits MLP after {run.steps_done} steps",
        scale_window=window,
        settled_scale=settled,
        window_share=0.99,
    )
    counts = formats.count_categories(activations, "float16")
    nonzero = activations.size - counts["zero"]
    return fig, {
        "flushed_unscaled": counts["flushed_to_zero"] / nonzero,
        "window": window,
        "settled_scale": settled,
    }


def figure_layer_underflow(config: TrainConfig) -> tuple[Figure, dict]:
    recorder = stats.GradientRecorder()
    record_every = max(config.steps // 20, 1)
    Run("mixed-noscale", data.load_digits(), _with(config, record_every=record_every)).train(
        hooks=[recorder]
    )
    fig = plots.layer_underflow(
        recorder.records, title="mixed-noscale: what float16 flushes, layer by layer"
    )
    return fig, {"records": recorder.records}


def figure_loss_scale(results: dict) -> tuple[Figure, dict]:
    histories = {}
    for name, label in (("mixed-dynamic", "dynamic"), ("mixed-static", "static")):
        h = results[name][0][0]
        skipped = np.array(h.skipped)
        histories[label] = {
            "step": np.array(h.step),
            "scale": np.array(h.scale),
            "found_inf": skipped,
            "skipped": skipped,
        }
    fig = plots.loss_scale_trace(histories, title="Loss scale over training (seed 0)")
    return fig, {"skipped": int(histories["dynamic"]["skipped"].sum())}


def figure_regimes(results: dict) -> tuple[Figure, dict]:
    histories = {name: [h.to_dict() for h, _ in runs] for name, runs in results.items()}
    return plots.regimes_compared(histories), {}


def figure_memory(config: TrainConfig) -> tuple[Figure, dict]:
    digits = data.load_digits()
    memory = {name: memory.memory_report(Run(name, digits, config)) for name in REGIMES}
    return plots.memory_bars(memory, title="Bytes held by one training step, measured"), memory


def _with(config: TrainConfig, **changes: Any) -> TrainConfig:
    from dataclasses import replace

    return replace(config, **changes)


FIGURES = (
    "number_line",
    "underflow_histogram",
    "layer_underflow",
    "loss_scale",
    "master_weights",
    "regimes",
    "memory",
)


def make_all(out_dir: Path = FIGURES_DIR, config: TrainConfig = TrainConfig(), seeds=(0, 1, 2)):
    """Measure and draw every figure into ``out_dir``; returns the numbers drawn."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = data.load_digits()
    results = experiments.compare_regimes(digits, config, tuple(REGIMES), seeds=seeds)
    dynamic = Run("mixed-dynamic", digits, config)
    dynamic.train()
    made = {
        "number_line": figure_number_line(),
        "underflow_histogram": figure_underflow_histogram(dynamic),
        "layer_underflow": figure_layer_underflow(config),
        "loss_scale": figure_loss_scale(results),
        "master_weights": figure_master_weights(results),
        "regimes": figure_regimes(results),
        "memory": figure_memory(config),
    }
    numbers = {}
    for name, (fig, values) in made.items():
        fig.savefig(out_dir / f"{name}.png", dpi=DPI)
        numbers[name] = values
    return numbers
