"""Experiments: every regime trained side by side, and the README's tables.

``compare_regimes`` runs each regime over seeds with the gradient statistics of
:mod:`minimp.stats` recorded; ``summarize`` and ``markdown_table`` turn the runs into
the rows ``python -m minimp regimes`` prints into the README.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from minimp.data import CharCorpus, Dataset
from minimp.memory import measure_peak, memory_report
from minimp.stats import GradientRecorder
from minimp.tensor import float32
from minimp.train import (
    BEYOND_FP16,
    GPT_REGIMES,
    REGIMES,
    SHAKESPEARE_GPT,
    History,
    Run,
    TrainConfig,
    get_regime,
)

__all__ = [
    "GPT_TABLE",
    "compare_gpt_regimes",
    "compare_regimes",
    "gpt_markdown_table",
    "gpt_summarize",
    "loss_ratios",
    "markdown_table",
    "summarize",
]

# The README's transformer table: lesson 10's model and recipe, shortened to 24 steps
# so that its test reruns all 2 x 6 runs within a minute.
GPT_TABLE = replace(SHAKESPEARE_GPT, steps=24, warmup=4, eval_every=24)


def compare_regimes(
    dataset: Dataset,
    config: TrainConfig = TrainConfig(),
    regimes: Sequence[str] = (*REGIMES, *BEYOND_FP16),
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool | None = None,
    hooks: Sequence[Callable[[Any], None]] = (),
) -> dict[str, list[tuple[History, list[dict[str, Any]]]]]:
    """Run each regime once per seed. Returns, per regime, one (history, gradient
    records) pair per seed; the records say what a cast to the regime's 16-bit format
    does to the float32 gradients, four times per run (see ``minimp.stats``). Each
    history's ``memory`` is the regime's ``memory_report`` (stored bytes) and its
    ``peak_memory`` the ``measure_peak`` of a step (the same for every seed: shapes and
    dtypes do not depend on it), measured once, before training. ``hooks`` are called
    beside the recorder, at the same steps of every run (a lesson that wants to look
    closer at one run's gradients looks there, instead of training that run again)."""
    results: dict[str, list[tuple[History, list[dict[str, Any]]]]] = {}
    for name in regimes:
        regime = get_regime(name)
        run = Run(regime, dataset, config)
        memory, peak = memory_report(run), measure_peak(run)
        for seed in seeds:
            run_config = replace(config, seed=seed, record_every=max(config.steps // 4, 1))
            recorder = GradientRecorder(regime.compute_dtype.name)
            watch = [recorder] if regime.compute_dtype != float32 else []
            history = Run(regime, dataset, run_config).train(
                hooks=[*watch, *hooks], progress=progress
            )
            history.memory, history.peak_memory = dict(memory), peak
            results.setdefault(name, []).append((history, recorder.records))
    return results


def summarize(results: dict[str, list[tuple[History, list[dict[str, Any]]]]]) -> list[dict]:
    """One row per regime: mean and spread (standard deviation) over seeds of the final
    test accuracy and of the training loss (mean of the last 100 steps); the share of
    updates lost late in training; skipped steps; and the share of nonzero activation
    gradients the run's format flushes to zero at the last recorded step; the bytes one
    training step stores (``memory_report``) and its measured peak (``measure_peak``),
    when the history has them."""
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
                "peak_memory": runs[0][0].peak_memory or math.nan,
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
    columns = ("regime", "test accuracy", "final training loss", "updates lost",
               "skipped steps", "activation grads flushed", "stored per step",
               "peak per step (CPU)")  # fmt: skip
    cells = []
    for r in rows:
        flushed = "n/a" if math.isnan(r["activation_flushed"]) else f"{r['activation_flushed']:.1%}"
        memory, peak = (
            "n/a" if math.isnan(r[key]) else f"{r[key] / 1024:.0f} KiB"
            for key in ("memory", "peak_memory")
        )
        cells.append((
            f"`{r['regime']}`", f"{r['accuracy_mean']:.2%} ± {r['accuracy_std']:.2%}",
            f"{r['loss_mean']:.3g} ± {r['loss_std']:.2g}", f"{r['lost_updates']:.1%}",
            f"{r['skipped']:.1f}", flushed, memory, peak,
        ))  # fmt: skip
    return _markdown(columns, cells)


def _markdown(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the header, its rule, one line per row of cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def compare_gpt_regimes(
    corpus: CharCorpus,
    config: TrainConfig = GPT_TABLE,
    regimes: Sequence[str] = GPT_REGIMES,
    seeds: Sequence[int] = (0, 1),
) -> dict[str, list[History]]:
    """The transformer in each regime, once per seed: the histories."""
    return {
        name: [Run(name, corpus, replace(config, seed=seed)).train() for seed in seeds]
        for name in regimes
    }


def gpt_summarize(results: dict[str, list[History]]) -> list[dict]:
    """One row per regime: mean and spread over seeds of the final validation loss and
    next-character accuracy (NaN when a seed's loss became NaN: the row says how many
    did), and the mean number of skipped steps."""
    rows = []
    for name, runs in results.items():
        loss = [h.test_loss[-1] for h in runs]
        finite = [v for v in loss if math.isfinite(v)]
        accuracy = [
            h.test_accuracy[-1] for h, v in zip(runs, loss, strict=True) if math.isfinite(v)
        ]
        rows.append(
            {
                "regime": name,
                "val_loss_mean": float(np.mean(finite)) if finite else math.nan,
                "val_loss_std": float(np.std(finite)) if finite else math.nan,
                "accuracy_mean": float(np.mean(accuracy)) if accuracy else math.nan,
                "nan_runs": len(loss) - len(finite),
                "seeds": len(loss),
                "skipped": float(np.mean([sum(h.skipped) for h in runs])),
            }
        )
    return rows


def gpt_markdown_table(rows: list[dict]) -> str:
    """The transformer summary as the Markdown table the README shows."""
    columns = ("regime", "validation loss", "next-character accuracy",
               "runs that became NaN", "skipped steps")  # fmt: skip
    cells = []
    for r in rows:
        if r["nan_runs"] == r["seeds"]:
            loss, accuracy = "NaN", "n/a"
        else:
            loss = f"{r['val_loss_mean']:.3f} ± {r['val_loss_std']:.3f}"
            accuracy = f"{r['accuracy_mean']:.1%}"
        cells.append((f"`{r['regime']}`", loss, accuracy, f"{r['nan_runs']} of {r['seeds']}",
                      f"{r['skipped']:.1f}"))  # fmt: skip
    return _markdown(columns, cells)
