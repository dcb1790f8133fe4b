"""The claims lesson 07 (on the GPU) makes, checked on its quick-mode run.

The lesson only states relative, measured facts, so nothing here asserts a time or a
speed ratio: only that the lesson recorded where it ran, that every time is a sane
positive number, and the facts that do not depend on the machine's speed (the loop
is Run's loop, bytes follow the dtypes).
"""

import math

import pytest

from minimp import backend

CATEGORIES = {"parameters", "master weights", "gradients", "optimizer state", "activations"}


@pytest.fixture(scope="module")
def m(lesson_run):
    proc, figures, measured = lesson_run("07")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the committed figure is redrawn only on a GPU; a CPU run saves an ignored twin
    assert (figures / f"step_time{'' if backend.cuda_available() else '_cpu'}.png").exists()
    if not backend.cuda_available():
        assert "NO CUDA GPU FOUND" in proc.stdout  # said clearly, before any number
    return measured


def test_the_lesson_recorded_the_device_it_ran_on(m):
    expected = "cuda" if backend.cuda_available() else "cpu"
    assert m["device"] == expected
    assert m["device_name"].startswith(expected + ":")
    assert m["timing_devices"] == [expected]
    assert m["weights_device"] == m["masters_device"] == expected
    assert m["bf16_moves_to_cuda"] is False


def test_bf16_is_timed_only_on_the_cpu(m):
    assert ("bf16" in m["timed_regimes"]) == (m["device"] == "cpu")
    assert m["timed_regimes"][:2] == ["fp32", "mixed-dynamic"]


def test_the_hand_written_loop_is_runs_loop(m):
    if m["device"] == "cpu":
        assert m["loop_matches_run_bitwise"] is True and m["loop_largest_gap"] == 0
    else:  # cuBLAS's own summation order and its float16 bias add: close, not equal
        assert m["loop_final_gap"] < 0.25
    assert m["loop_last_loss"] < m["loop_first_loss"] / 10  # it trains
    assert m["loop_accuracy"] > 0.9


def test_every_time_is_a_positive_number_for_every_timed_regime(m):
    for times in m["step_times"].values():
        assert list(times) == m["timed_regimes"]
        assert all(t > 0 and math.isfinite(t) for t in times.values())
    assert all(t > 0 and math.isfinite(t) for t in m["cast_times"].values())


def test_bytes_follow_the_dtypes(m):
    for problem, memory in m["memory"].items():
        fp32, mixed = memory["fp32"], memory["mixed-dynamic"]
        assert set(fp32) == set(mixed) == CATEGORIES
        assert 2 * mixed["parameters"] == fp32["parameters"], problem
        assert mixed["master weights"] == fp32["parameters"], problem
        assert 0 < mixed["activations"] < fp32["activations"], problem
