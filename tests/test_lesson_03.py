"""The claims lesson 03 (master-weight accumulation) makes, checked on its quick-mode run.

Exact facts (the tie at 2^-11 rounds to 1.0, float32's line at 2^-24) are asserted
exactly; measured ones with the margin the lesson's words allow ("most", "a few").
"""

import pytest

from minimp.formats import FLOAT16


@pytest.fixture(scope="module")
def m(lesson_run):
    proc, figures, measured = lesson_run("03")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (figures / "master_weights.png").exists()
    return measured


def test_at_one_updates_from_half_an_ulp_down_are_lost(m):
    assert m["gap_above_one"] == FLOAT16.eps == 2.0**-10
    assert m["gap_below_one"] == 2.0**-11
    assert m["largest_lost_k"] == 11
    assert all(lost == (int(k) >= 11) for k, lost in m["lost_at_one"].items())


def test_half_an_ulp_is_a_tie_that_rounds_to_even(m):
    assert m["tie_result"] == 1.0
    assert m["past_tie_result"] == 1.0 + 2.0**-10
    assert m["fp32_lost_k"] == 24
    assert m["down_lost_k"] == 12  # "half as far" going down


def test_the_threshold_scales_with_the_weight(m):
    assert m["threshold_rule_holds"] is True
    assert m["tie_to_even"] is True
    assert 2.0**-12 < m["threshold_ratio_min"] and m["threshold_ratio_max"] == 2.0**-11


def test_the_master_takes_the_updates_the_float16_weight_loses(m):
    assert m["update_over_half_ulp"] < 1
    assert m["pure_final"] == 1.0  # "never moves"
    assert m["exact_final"] > 1.1
    assert m["master_error_in_updates"] < 1  # "within a fraction of one update"
    assert m["stairs_one_ulp"] is True and m["copy_moves"] > 100
    assert m["copy_gap_in_half_ulps"] <= 1.0  # "at most half an ulp from the master"


def test_pure_fp16_loses_most_updates_late(m):
    early, late = m["lost_early"], m["lost_late"]
    assert late["fp16"] > 0.5  # "most of them late in training"
    assert early["fp16"] > 0.05 and late["fp16"] > early["fp16"]  # "a share from the start"
    assert late["mixed-dynamic"] < 0.05  # "almost every update is taken"
    assert 0 < late["fp32"] < 0.05  # "even float32 loses a few"
    assert m["loss_late"]["fp32"] < m["loss_early"]["fp32"] / 10  # "as the loss falls"


def test_what_pure_fp16_costs(m):
    assert m["loss_ratio_fp16"] > 1.05  # "a higher training loss"
    assert m["loss_ratio_mixed"] == pytest.approx(1.0, abs=0.05)  # "close that gap"
    assert m["accuracy_spread"] <= 0.01  # "test accuracy does not tell them apart"


def test_what_the_master_copy_costs(m):
    assert m["weights_ratio"] == 1.5
    assert 0.4 < m["activation_ratio"] < 0.6  # "about half"
    assert m["activation_share_fp32"] < 0.5  # "a small part of the total"
    assert m["total_ratio"] > 1  # "more memory than float32, not less"
