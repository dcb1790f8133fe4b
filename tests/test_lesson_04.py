"""The claims lesson 04 (loss scaling, step by step) makes, checked on its quick-mode run.

Exact facts (a power-of-two scale multiplies and divides exactly, widening float16 to
float32 is exact, the dynamic rule halves and doubles) are asserted exactly; measurements
with the margin the lesson's words allow ("most", "far fewer", "inside the window").
"""

import math

import pytest

from minimp.formats import FLOAT16


@pytest.fixture(scope="module")
def m(lesson_run):
    proc, figures, measured = lesson_run("04")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("04_overflow", "loss_scale"):
        assert (figures / f"{name}.png").exists(), name
    return measured


def test_the_step_scales_and_unscales_exactly(m):
    assert math.log2(m["walk_scale"]) == round(math.log2(m["walk_scale"]))  # a power of two
    assert m["walk_scale_exact"]
    assert m["walk_widened_exact"]
    assert m["walk_unscale_exact"]


def test_the_scaled_float16_gradients_are_finite_and_below_the_max(m):
    assert m["walk_grad_dtypes"] == ["float16"]
    assert m["walk_nonfinite"] == 0
    assert m["walk_headroom_log2"] > 0  # "even the largest stays below float16's max"


def test_some_true_gradients_are_below_anything_float16_holds(m):
    assert m["walk_below_fp16"] > 0


def test_clipping_must_come_after_unscaling(m):
    assert m["walk_norm"] < m["walk_clip"]  # this step is left alone ...
    assert m["walk_norm"] * m["walk_scale"] > m["walk_clip"]  # ... but would be clipped scaled


def test_the_step_runs_and_most_masters_are_not_float16_numbers(m):
    assert m["walk_stepped"] is True
    assert m["walk_moved"] > 0
    assert m["walk_fraction_differing"] > 0.5  # "most master weights"


def test_the_scale_keeps_most_of_the_flushed_logit_gradients(m):
    assert m["bought"]["unscaled"] > 0.3  # "a large share"
    assert m["bought"]["scaled"] < m["bought"]["unscaled"] / 2  # "far fewer"


def test_an_overflowing_step_is_skipped_and_changes_nothing(m):
    first = m["overflow_first"]
    assert first["scale"] == m["overflow_big_scale"]
    assert first["nonfinite"] > 0
    assert first["stepped"] is False
    assert m["overflow_masters_untouched"]


def test_the_dynamic_scale_backs_off_then_grows_after_growth_interval_clean_steps(m):
    skips = m["overflow_first_clean"]
    assert skips > 0
    assert m["overflow_halved_each_skip"]
    assert m["overflow_clean_scale"] == m["overflow_big_scale"] * 0.5**skips  # exact halvings
    assert m["overflow_clean_before_growth"] == m["overflow_growth_interval"]
    assert m["overflow_growth_doubles"]
    assert m["overflow_later_skips"] > 0  # "overflow now and then"
    assert m["overflow_loss_last"] < m["overflow_loss_first_clean"]  # "the loss falls"


def test_a_static_scale_that_large_never_trains(m):
    assert m["static_ran"] == 0
    assert m["static_moved"] is False


def test_the_real_runs_scales_follow_the_rule(m):
    assert m["real_static_constant"]
    assert m["real_dynamic_max"] > m["real_dynamic_init"]  # it grows
    assert m["real_dynamic_skipped"] >= 1  # and overflows at least once
    assert m["real_replay_matches"]


def test_the_dynamic_scale_settles_inside_the_advisors_window(m):
    assert m["settle_same_run"]
    low, high = m["settle_window"]
    assert low <= m["settle_scale"] <= high


def test_a_collapsing_scale_raises_with_an_explanation(m):
    assert m["underflow_raised"]
    # from 2^4 down to the floor 1, halving each step: 4 halvings, then the 5th raises
    assert m["underflow_overflows"] == 5
    assert m["underflow_scale_kept"] == 1.0  # "the scaler's state is unchanged"
    message = m["underflow_message"]
    for words in ("NaN or inf in the input data", "Check, in this order", "unscale_"):
        assert words in message
    assert m["underflow_loss_is_nan"]
    assert FLOAT16.max == 65504  # the message's "above 65504" is float16's max
    assert "65504" in message
