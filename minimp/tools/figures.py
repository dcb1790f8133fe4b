"""Figure recipes that a lesson calls on what it measured.

Each figure in ``figures/`` is drawn by exactly one lesson (``python -m minimp
figures`` runs them all); the ``figure_*`` functions here are the longer recipes a
lesson hands its runs to, each called by one lesson only. Each returns the
matplotlib Figure together with the numbers it drew, so the lesson can print and
check them beside its prose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from minimp import data, formats, memory, stats
from minimp.tools import plots
from minimp.train import REGIMES, Run, TrainConfig


def figure_number_line() -> tuple[Figure, dict]:
    return plots.number_line(), {}


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


def figure_regimes(results: dict, test_images: int) -> tuple[Figure, dict]:
    histories = {name: [h.to_dict() for h, _ in runs] for name, runs in results.items()}
    return plots.regimes_compared(histories, test_images=test_images), {}


def figure_memory(
    config: TrainConfig, batches: tuple[int, ...], shown: tuple[str, ...]
) -> tuple[Figure, dict]:
    """What one step of each regime stores at ``config``'s batch, by category
    (``memory_report``), and, at each of ``batches``, the stored bytes and the measured
    peak (``measure_peak``) of the regimes ``shown`` relative to fp32's at that batch.
    Each number is one step of a fresh run: nothing is trained."""
    digits = data.load_digits()
    held = {name: memory.memory_report(Run(name, digits, config)) for name in REGIMES}
    weighed: dict[str, dict[int, dict[str, float]]] = {}
    for name in ("fp32", *shown):
        for batch in batches:
            run = Run(name, digits, _with(config, batch_size=batch))
            stored = memory.memory_report(run)
            weighed.setdefault(name, {})[batch] = {
                "stored_bytes": sum(stored.values()),
                "peak_bytes": memory.measure_peak(run),
                "activation_share": stored["activations"] / sum(stored.values()),
            }
    by_batch = {
        name: {
            b: {
                "stored": v["stored_bytes"] / weighed["fp32"][b]["stored_bytes"],
                "peak": v["peak_bytes"] / weighed["fp32"][b]["peak_bytes"],
            }
            for b, v in per_batch.items()
        }
        for name, per_batch in weighed.items()
        if name != "fp32"
    }
    fig = plots.memory_compared(held, by_batch, batch=config.batch_size)
    return fig, {"stored": held, "by_batch": by_batch, "weighed": weighed}


def _with(config: TrainConfig, **changes: Any) -> TrainConfig:
    from dataclasses import replace

    return replace(config, **changes)
