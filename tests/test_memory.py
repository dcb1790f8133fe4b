"""minimp.memory: stored bytes from what each op declares, and the measured peak."""

from pathlib import Path

import numpy as np

import minimp
from minimp import data, memory
from minimp.train import Run, TrainConfig

DIGITS = data.load_digits()


def test_saved_arrays_are_the_activations_the_graph_keeps():
    x = minimp.tensor(np.ones((4, 3)), requires_grad=True)
    w = minimp.tensor(np.ones((3, 2)), requires_grad=True)
    h = minimp.functional.relu(x @ w)  # matmul saves x and w; relu saves its output
    saved = memory.saved_arrays(h.sum())
    assert sorted(a.nbytes for a in saved) == sorted([4 * 3 * 4, 3 * 2 * 4, 4 * 2 * 4])


def test_memory_report_halves_parameters_and_activations_in_float16():
    """The default network: float16 activations are half of float32's, except the
    float32 pieces of the loss (log-probabilities) and the integer targets."""
    fp32 = memory.memory_report(Run("fp32", DIGITS))
    mixed = memory.memory_report(Run("mixed-dynamic", DIGITS))
    assert mixed["parameters"] * 2 == fp32["parameters"]
    assert mixed["master weights"] == fp32["parameters"]
    assert mixed["activations"] < 0.55 * fp32["activations"]
    assert fp32["master weights"] == 0
    # On a network this small the weights dominate: the masters make mixed cost more.
    assert sum(mixed.values()) > sum(fp32.values())


def test_an_op_saves_only_what_its_backward_needs():
    """As PyTorch: x @ w with a constant x saves x (for dw) and not w."""
    x = minimp.tensor(np.ones((4, 3)))
    w = minimp.tensor(np.ones((3, 2)), requires_grad=True)
    saved = memory.saved_arrays((x @ w).sum())
    assert [a.shape for a in saved] == [(4, 3)]
    y = x @ w
    y.sum().backward()
    assert y._saved == ()  # backward freed them


def test_no_module_measures_by_reading_closures():
    package = Path(minimp.__file__).parent
    readers = [p.name for p in package.rglob("*.py") if "__closure__" in p.read_text()]
    assert readers == []


def test_the_measured_peak_holds_at_least_what_the_step_stores():
    """The allocator's peak during a step covers the activations and gradients the
    stored model counts (less the input batch, allocated before the step); on the CPU
    a 16-bit step computes in float32 temporaries, so its peak is no half of fp32's."""
    peaks, stored, activations = {}, {}, {}
    for name in ("fp32", "mixed-dynamic"):
        run = Run(name, DIGITS, TrainConfig(batch_size=256))
        report = memory.memory_report(run)
        batch = run.to_device(*run._batch(0))[0].data.nbytes
        peaks[name] = memory.measure_peak(run)
        stored[name] = report["activations"] + report["gradients"]
        activations[name] = report["activations"]
        assert peaks[name] >= stored[name] - batch, name
    assert activations["mixed-dynamic"] < 0.6 * activations["fp32"]
    assert peaks["mixed-dynamic"] > 0.6 * peaks["fp32"]
