"""The figures: each draws headless from small synthetic data, says what it shows
(labels, titles, log scales), writes the numbers it claims, and saves as PNG."""

import ast
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from minimp import formats
from minimp.tools import plots

REGIMES = ("fp32", "fp16", "mixed-noscale", "mixed-static", "mixed-dynamic", "bf16")


def texts(fig: Figure) -> list[str]:
    """Every string drawn in the figure: titles, labels, annotations, legend entries."""
    return [t.get_text() for t in fig.findobj(Text)]


def saves(fig: Figure, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 1000


def test_the_plots_import_only_numpy_matplotlib_formats_and_each_other():
    """Plots take measured data: they know nothing of training."""
    for path in Path(plots.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots = {m.split(".")[0] for m in modules}
        allowed = {"__future__", "collections", "typing", "math", "re", "numpy", "matplotlib"}
        assert roots <= allowed | {"minimp"}, path.name
        inside = {m for m in modules if m.startswith("minimp")}
        assert all(m == "minimp.formats" or m.startswith("minimp.tools.plots") for m in inside), (
            path.name
        )


def test_every_regime_and_format_has_its_own_colour():
    names = [*REGIMES, "float8_e4m3fn", "float8_e5m2"]
    assert len({plots.COLORS[n] for n in names}) == len(names)
    # the paper's regimes and the formats from Okabe-Ito; the later regimes add Tol's
    assert {plots.COLORS[n] for n in names} <= set(plots.OKABE_ITO.values())
    assert plots.COLORS["float16"] == plots.COLORS["fp16"]
    assert plots.COLORS["bfloat16"] == plots.COLORS["bf16"]


def test_number_line(tmp_path):
    fig = plots.number_line()
    (ax,) = [a for a in fig.axes if a.get_xlabel()]
    assert ax.get_xlabel().startswith("log2 |x|")
    assert "fp16" in ax.get_title()
    drawn = texts(fig)
    assert any("65504" in t for t in drawn) and any("2^{-24}" in t for t in drawn)
    for m in (23, 10, 7, 3, 2):  # each format's eps
        assert any(f"2^{{-{m}}}" in t for t in drawn)
    assert "NaN" in drawn  # e4m3fn has no inf
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith("fp8 e5m2") and labels[-1].startswith("fp32")
    saves(fig, tmp_path)


def test_underflow_histogram_writes_the_measured_fractions(tmp_path):
    rng = np.random.default_rng(0)
    values = (2.0 ** rng.uniform(-40, 0, 20_000) * rng.choice([-1, 1], 20_000)).astype(np.float32)
    values[:100] = 0  # true zeros do not count as flushed
    scales = (1.0, 2.0**12, 2.0**30)
    fig = plots.underflow_histogram(
        values, "float16", scales, scale_window=(2.0**4, 2.0**16), settled_scale=2.0**14
    )
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel().startswith("log2 |value × S|")
    assert "fraction of nonzero values" in ax.get_ylabel()
    assert "fp16" in ax.get_title()
    drawn = " ".join(texts(fig))
    for s in scales:
        counts = formats.count_categories(values * s, "float16")
        nonzero = values.size - counts["zero"]
        flushed, overflow = counts["flushed_to_zero"] / nonzero, counts["overflow"] / nonzero
        for fraction, what in ((flushed, "flushed to zero"), (overflow, "overflow")):
            assert fraction == 0 or fraction >= 0.001  # written to 0.1%, or as 0%
            assert f"{fraction:.1%} {what}" in drawn if fraction else f" 0% {what}" in drawn
    assert "65504" in drawn and "2^{-24}" in drawn and "2^{-14}" in drawn
    assert "settled at S = $2^{14}$" in drawn
    saves(fig, tmp_path)


def test_underflow_histogram_other_format_and_title():
    values = np.float32([1e-12, 1e-3, 1.0, 1e4, 0.0])
    fig = plots.underflow_histogram(values, formats.BFLOAT16, title="bf16 needs no scaling")
    assert fig.axes[0].get_title() == "bf16 needs no scaling"
    assert "0% flushed to zero" in " ".join(texts(fig))


def _records(steps=5, layers=("layers.0", "layers.2", "layers.4")):
    return [
        {
            "step": 10 * step,
            "layer": layer,
            "kind": kind,
            "scale": 1.0,
            "flushed_of_nonzero": 0.05 * i + 0.01 * step,
            "zero": 0.1,
            "subnormal": 0.1,
            "normal": 0.8,
            "overflow": 0.0,
        }
        for step in range(steps)
        for i, layer in enumerate(layers)
        for kind in ("activation", "weight")
    ]


def test_layer_underflow(tmp_path):
    fig = plots.layer_underflow(_records(), title="three layers")
    axes = [a for a in fig.axes if a.lines]
    assert len(axes) == 2
    assert axes[0].get_title().startswith("activation")
    assert axes[1].get_title().startswith("weight")
    assert all(a.get_xlabel() == "training step" for a in axes)
    assert "flushed to zero" in axes[0].get_ylabel()
    assert fig.get_suptitle() == "three layers"
    assert {"layer 1 (input)", "layer 2", "layer 3 (output)"} <= set(texts(fig))
    assert all(len(a.lines) == 3 and len(a.lines[0].get_xdata()) == 5 for a in axes)
    saves(fig, tmp_path)


def _scale_history(n=60, skip_every=17):
    skipped = np.arange(n) % skip_every == skip_every - 1
    scale = 2.0 ** (16 - np.cumsum(np.concatenate([[False], skipped[:-1]])))
    return {"step": np.arange(n), "scale": scale, "found_inf": skipped, "skipped": skipped}


def test_loss_scale_trace_one_run_and_several(tmp_path):
    h = _scale_history()
    fig = plots.loss_scale_trace(h)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "training step"
    assert "loss scale" in ax.get_ylabel()
    assert f"scale S ({int(h['skipped'].sum())} skipped steps)" in texts(fig)
    saves(fig, tmp_path)

    static = {**h, "scale": np.full(60, 1024.0), "skipped": np.zeros(60, bool)}
    fig = plots.loss_scale_trace({"dynamic": h, "static": static}, title="two scalers")
    drawn = texts(fig)
    assert "dynamic: scale S (3 skipped steps)" in drawn
    assert "static: scale S (0 skipped steps)" in drawn
    assert fig.axes[0].get_title() == "two scalers"


def test_loss_scale_trace_without_history():
    empty = {k: np.array([]) for k in ("step", "scale", "found_inf", "skipped")}
    assert isinstance(plots.loss_scale_trace(empty), Figure)


def test_master_weights(tmp_path):
    n = 200
    exact = 1.0 + 1e-4 * np.arange(n)
    master = exact.astype(np.float32)
    trace = {
        "step": np.arange(n),
        "float16": np.ones(n, np.float16),
        "master": master,
        "float16_copy": master.astype(np.float16),
        "exact": exact,
    }
    lost = {"fp16": np.full(n, 0.5), "fp32": np.zeros(n), "mixed-dynamic": np.full(n, np.nan)}
    fig = plots.master_weights(trace, lost, smooth=20)
    left, right = fig.axes[:2]
    assert left.get_ylabel() == "weight value" and left.get_xlabel() == "update step"
    assert "20-step moving average" in right.get_ylabel()
    assert right.get_ylim()[0] <= 0 and right.get_ylim()[1] >= 1
    assert {"fp16", "fp32", "float32 master"} <= set(texts(fig))
    saves(fig, tmp_path)
    assert len(plots.master_weights(trace).axes[0].child_axes) == 1  # the zoom inset


def _history(regime, seed, steps=120):
    rng = np.random.default_rng(seed)
    loss = 2.3 * np.exp(-np.arange(steps) / 30) + 0.05 + rng.uniform(0, 0.01, steps)
    if regime == "fp16" and seed == 1:
        loss[80:] = np.nan
    eval_step = list(range(20, steps + 1, 20))
    return {
        "step": list(range(steps)),
        "loss": list(loss),
        "eval_step": eval_step,
        "test_accuracy": list(np.linspace(0.3, 0.95, len(eval_step))),
        "test_loss": list(np.linspace(2.0, 0.2, len(eval_step))),
    }


def test_regimes_compared(tmp_path):
    histories = {r: [_history(r, seed) for seed in range(2)] for r in REGIMES}
    fig = plots.regimes_compared(histories, smooth=10, test_images=359)
    loss, accuracy = fig.axes
    assert loss.get_yscale() == "log"
    assert "10-step moving average" in loss.get_title()
    assert "training loss" in loss.get_ylabel() and accuracy.get_ylabel() == "test accuracy"
    assert loss.get_xlabel() == "training step" and accuracy.get_xlabel() == "regime"
    # the final accuracy of every seed is a dot of its own, and the title gives the
    # resolution one test image sets
    dots = [line for line in accuracy.lines if line.get_marker() == "o"]
    assert sorted(len(line.get_ydata()) for line in dots) == [2] * len(REGIMES)
    assert "one test image = 0.28%" in accuracy.get_title()
    assert [t.get_text() for t in accuracy.get_xticklabels()] == list(REGIMES)
    drawn = texts(fig)
    assert {"fp32", "mixed-dynamic", "bf16"} <= set(drawn)
    assert "fp16 (NaN/inf loss in 1 of 2 seeds)" in drawn
    assert "mean of 2 seeds" in fig.get_suptitle()
    styles = {(line.get_color(), str(line.get_linestyle())) for line in loss.lines}
    assert len(styles) == len(REGIMES)
    saves(fig, tmp_path)


@pytest.mark.parametrize(("scale", "unit"), [(1, "KiB"), (4096, "MiB")])
def test_memory_bars(tmp_path, scale, unit):
    per_param = {"fp32": (4, 0, 4, 8), "fp16": (2, 0, 2, 4), "mixed-dynamic": (2, 4, 2, 8)}
    memory = {
        r: {
            "parameters": 1000 * scale * p,
            "master weights": 1000 * scale * m,
            "gradients": 1000 * scale * g,
            "optimizer state": 1000 * scale * o,
            "activations": 300 * scale * p,
        }
        for r, (p, m, g, o) in per_param.items()
    }
    fig = plots.memory_bars(memory)
    ax = fig.axes[0]
    assert ax.get_ylabel() == f"memory ({unit})"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(memory)
    drawn = texts(fig)
    assert set(plots.CATEGORY_ORDER) <= set(drawn)
    total = sum(memory["fp32"].values()) / (1024 if unit == "KiB" else 1024**2)
    assert any(t.startswith(f"{total:.3g} {unit}") for t in drawn)
    assert any("0.50× fp32" in t for t in drawn)
    saves(fig, tmp_path)


def _fp8_trace(steps, scale):
    """One layer's record, as lesson 8 builds it from minimp.fp8.TensorScaling."""
    return {
        role: {
            "step": list(range(steps)),
            "scale": [scale] * steps,
            "amax": [2.0**-3] * steps,
            "underflow": [0.5 if scale == 1 else 0.01] * steps,
        }
        for role in ("input", "weight", "grad")
    }


def test_fp8_scaling(tmp_path):
    scaled = {"layers.0": _fp8_trace(30, 2.0**11), "layers.2": _fp8_trace(30, 2.0**12)}
    unscaled = {"layers.0": _fp8_trace(30, 1.0), "layers.2": _fp8_trace(30, 1.0)}
    fig = plots.fp8_scaling(scaled, unscaled, smooth=5)
    assert len([a for a in fig.axes if a.lines]) == 6  # a top and a bottom panel per role
    assert plots.FP8_ROLE_FORMATS["grad"] == "float8_e5m2"
    saves(fig, tmp_path)


def test_one_weight_rounding(tmp_path):
    steps = np.arange(50)
    exact = 1.0 - 1e-4 * steps
    trace = {
        "step": steps,
        "float32": exact,
        "nearest": np.ones(50),
        "kahan": np.round(exact * 128) / 128,
        "stochastic": np.stack([np.round(exact * 128) / 128] * 3, axis=1),
        "stochastic_mean": exact,
        "stochastic_std": np.full(50, 1 / 256),
    }
    fig = plots.one_weight_rounding(trace, ulp=2.0**-7)
    assert len(fig.axes) == 2
    saves(fig, tmp_path)


def test_pure16(tmp_path):
    names = ("fp32", "bf16-pure", "bf16-sr")
    histories = {
        n: {"step": list(range(100)), "loss": list(np.linspace(1, 0.01, 100))} for n in names
    }
    updates = {n: {"unchanged": 0.9, "delivered": 1.0} for n in names}
    per_param = {n: {c: 2.0 for c in plots.CATEGORY_ORDER} for n in names}
    fig = plots.pure16(histories, updates, per_param, smooth=10)
    ax_loss = fig.axes[0]
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == list(names)
    saves(fig, tmp_path)


def test_every_regime_has_its_own_colour():
    from minimp.regimes import ALL_REGIMES

    colours = [plots.COLORS[name] for name in ALL_REGIMES]
    assert len(set(colours)) == len(colours)


def test_outlier_blocks(tmp_path):
    x = np.array([0.01, -0.02, 1000.0, 0.03] * 16, dtype=np.float32)
    zeros = np.where(np.abs(x) < 0.025, 0, x)
    fig = plots.outlier_blocks(x, {"fp8 per tensor": zeros, "mxfp8": x.copy()}, outlier=2, block=8)
    ax_x, ax_bar = fig.axes[:2]
    assert [t.get_text() for t in ax_bar.get_yticklabels()] == ["fp8 per tensor", "mxfp8"]
    bars = [p.get_width() for p in ax_bar.patches]
    others = np.arange(x.size) != 2
    assert bars[0] == pytest.approx(((zeros == 0) & (x != 0))[others].mean()) and bars[1] == 0
    assert "flushed: fp8 per tensor" in texts(fig) and "outlier's block of 8" in ax_x.get_xlabel()
    saves(fig, tmp_path)


def test_accumulation_error(tmp_path):
    fig = plots.accumulation_error([64, 128, 256], {"bfloat16": [0.01, 0.02, 0.1],
                                                   "float32": [0.0, 0.0, 1e-8]})  # fmt: skip
    (ax,) = fig.axes
    assert ax.get_xscale() == ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["bfloat16"].get_color().lower() == plots.COLORS["bfloat16"].lower()
    assert min(lines["float32"].get_ydata()) > 0  # a zero error drawn at the floor
    saves(fig, tmp_path)


def test_spike_scaling(tmp_path):
    sat = {"delayed": [0, 0.9, 0], "current": [0, 0, 0]}
    under = {"delayed": [0, 0, 0.001], "current": [0, 0, 0]}
    fig = plots.spike_scaling(range(3), [1, 64, 1], sat, under)
    assert [a.get_ylabel() for a in fig.axes] == ["amax", "saturated", "flushed"]
    assert list(fig.axes[1].get_lines()[0].get_ydata()) == sat["delayed"]
    assert "delayed" in texts(fig) and fig.axes[0].get_yscale() == "log"


def test_transformer_regimes_marks_a_run_that_became_nan_and_the_two_flush_lines(tmp_path):
    curves = {
        "fp32": {"eval_step": [10, 20], "test_loss": [3.0, 2.8]},
        "fp16": {"eval_step": [10, 20], "test_loss": [3.1, float("nan")]},
    }
    grads = {"block 0.attn": np.array([2.0**-10, 2.0**-30, 0.0])}
    fig = plots.transformer_regimes(curves, grads, 2.0**17)
    ax_loss, ax_hist = fig.axes
    labels = [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert labels == ["fp32", "fp16 (NaN from step 20)"]
    assert [line.get_xdata()[0] for line in ax_hist.lines] == [-24, -41]
    saves(fig, tmp_path)


def test_autocast_overview_marks_where_float16_exp_overflows(tmp_path):
    logits = np.array([-3.0, 0.0, 5.0, 12.0, 20.0])  # two of five beyond ln(65504)
    memory = {
        "amp": {"parameters": 4096, "master weights": 0, "gradients": 4096, "activations": 1024},
        "mixed-dynamic": {"parameters": 2048, "master weights": 4096, "gradients": 6144},
    }
    fig = plots.autocast_overview(logits, memory)
    left, right = fig.axes
    assert plots.EXP_OVERFLOW == pytest.approx(np.log(65504))
    assert [line.get_xdata()[0] for line in left.lines] == [plots.EXP_OVERFLOW]
    drawn = texts(fig)
    assert any("40.0% of the logits" in t for t in drawn)
    assert [t.get_text() for t in right.get_xticklabels()] == list(memory)
    assert "9 KiB" in drawn and "12 KiB" in drawn  # the stored totals on top of the bars
    saves(fig, tmp_path)


def test_underflow_histogram_flushes_only_below_half_the_smallest_subnormal():
    """IEEE: values in [2^-25, 2^-24) round up to 2^-24 (2^-25 itself is a tie, to 0), so
    the flush line is at 2^-25, and the region called flushed ends there."""
    values = np.float32([2.0**-24.5, 2.0**-30, 1e-3])  # the first rounds up to 2^-24
    fig = plots.underflow_histogram(values, "float16")
    ax = fig.axes[0]
    lines = {
        round(float(line.get_xdata()[0]), 6) for line in ax.lines if len(line.get_xdata()) == 2
    }
    assert -25.0 in lines  # the flush line
    (flushed,) = [t for t in ax.texts if t.get_text().startswith("flushed")]
    assert flushed.get_position()[0] < -25
    assert "33.3% flushed to zero" in " ".join(texts(fig))  # only 2^-30 of the three


def test_loss_scale_trace_shows_a_run_that_skips_every_step_above_its_crosses():
    """A static scale that overflows on every step: its line must not hide under the
    crosses of its skipped steps (lesson 4's 04_overflow figure)."""
    n = 40
    static = {"step": np.arange(n), "scale": np.full(n, 2.0**40), "skipped": np.ones(n, bool)}
    fig = plots.loss_scale_trace({"static": static})
    ax = fig.axes[0]
    (line,) = [x for x in ax.lines if x.get_label().startswith("static")]
    (crosses,) = [x for x in ax.lines if x.get_marker() == "x"]
    assert line.get_zorder() > crosses.get_zorder()


def test_memory_compared_plots_the_batch_crossover(tmp_path):
    memory = {"fp32": {"parameters": 4000, "activations": 1000}, "mixed-dynamic": {
        "parameters": 2000, "master weights": 4000, "activations": 500}}  # fmt: skip
    by_batch = {"mixed-dynamic": {64: {"stored": 1.16, "peak": 1.3}, 1024: {"stored": 0.67,
                "peak": 0.9}}}  # fmt: skip
    fig = plots.memory_compared(memory, by_batch, batch=64)
    bars, ratio = fig.axes
    assert ratio.get_xlabel() == "batch size" and ratio.get_xscale() == "log"
    stored, peak = (line for line in ratio.lines if line.get_label().startswith("mixed"))
    assert list(stored.get_xdata()) == [64, 1024] and list(stored.get_ydata()) == [1.16, 0.67]
    assert list(peak.get_ydata()) == [1.3, 0.9] and peak.get_linestyle() == "--"
    assert {"1.16×", "0.67×"} <= set(texts(fig))
    assert "batch 64" in bars.get_title()
    saves(fig, tmp_path)
