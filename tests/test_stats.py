"""Gradient statistics, the loss-scale advisor and memory accounting, on cases
computed by hand."""

import numpy as np
import pytest

from minimp import data, formats, stats
from minimp.train import Run, TrainConfig

DIGITS = data.load_digits()
SMALL = TrainConfig(sizes=(64, 32, 10), steps=20, eval_every=10, record_every=5)


def test_the_flush_boundaries_by_hand():
    values = np.array([2.0**-25, 2.0**-24, 1.5 * 2.0**-25, 2.0**-14, 70000.0, 0.0], np.float32)
    counts = formats.count_categories(values, "float16")
    assert counts["flushed_to_zero"] == 1  # 2^-25: a tie, to even, is 0
    assert counts["subnormal"] == 2  # 2^-24 survives; 1.5 * 2^-25 rounds up to it
    assert counts["normal"] == 1 and counts["overflow"] == 1 and counts["zero"] == 1


def test_log2_histogram_puts_each_power_of_two_in_its_bin():
    h = stats.log2_histogram(np.array([0.0, 2.0**-24, 2.0**-24, 1.0, -1.0, np.inf]))
    assert h["zeros"] == 1
    assert h["counts"][list(h["edges"]).index(-24)] == 2
    assert h["counts"][list(h["edges"]).index(0)] == 2
    assert h["counts"].sum() == 4


def test_loss_scale_window_by_hand():
    """Gradients from 2^-30 to 2^-4: to lift the smallest above 2^-24 needs S >= 2^6;
    to keep 2^-4 * S <= 65504 allows S <= 2^19 (2^20 * 2^-4 = 65536 overflows)."""
    grads = [2.0 ** np.arange(-30, -3, dtype=np.float64)]
    assert stats.loss_scale_window(grads, keep=1.0) == (2.0**6, 2.0**19)
    # Keeping 90% of the 27 values lets at most 2 go (2.7 rounded down): 2^-28 must
    # survive, so S >= 2^4.
    assert stats.loss_scale_window(grads, keep=0.9)[0] == 2.0**4
    assert stats.loss_scale_window(grads, fmt="bfloat16", keep=1.0)[0] == 1.0 / 2.0**103
    with pytest.raises(ValueError, match="zero"):
        stats.loss_scale_window([np.zeros(3)])


def test_recorder_measures_what_the_cast_does_at_the_runs_scale():
    recorder = stats.GradientRecorder()
    Run("mixed-noscale", DIGITS, SMALL).train(hooks=[recorder])
    assert sorted({r["step"] for r in recorder.records}) == [0, 5, 10, 15]
    layers = {r["layer"] for r in recorder.records}
    assert layers == {"layers.0", "layers.2"}
    for r in recorder.records:
        total = r["zero"] + r["flushed_to_zero"] + r["subnormal"] + r["normal"] + r["overflow"]
        assert total == pytest.approx(1.0)
    # The same batch and weights, recomputed here: the recorder's first record agrees.
    run = Run("mixed-noscale", DIGITS, SMALL)
    x, y = run._batch(0)
    grads = stats.float32_gradients(run.model, run.masters.parameters(), x, y)
    expected = formats.count_categories(grads["layers.2"]["activation"], "float16")
    first = next(r for r in recorder.records if r["layer"] == "layers.2" and r["step"] == 0)
    assert (
        first["flushed_to_zero"]
        == expected["flushed_to_zero"] / grads["layers.2"]["activation"].size
    )


def test_float32_gradients_match_a_float32_run():
    run = Run("fp32", DIGITS, SMALL)
    x, y = run._batch(0)
    grads = stats.float32_gradients(run.model, run.model.parameters(), x, y)
    loss = run._loss(run._forward(x, keep=False)[0], y)
    loss.backward()
    np.testing.assert_array_equal(
        grads["layers.0"]["weight"], run.model.layers[0].weight.grad.numpy()
    )


def test_float32_gradients_of_an_fp8_model_says_where_to_look():
    run = Run("fp8", DIGITS)
    with pytest.raises(TypeError, match="grad_scaling"):
        stats.float32_gradients(
            run.model, run.model.parameters(), DIGITS.x_train[:4], DIGITS.y_train[:4]
        )
