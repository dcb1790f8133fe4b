"""The claims lesson 06 (putting it together) makes, checked on its quick-mode run.

Each assertion carries the margin the lesson's words allow ("most", "a large share",
"within a couple of percent", "about half"); exact byte counts are asserted exactly.
"""

import math

import pytest

from minimp.train import REGIMES

MIXED = [name for name, r in REGIMES.items() if r.master_weights]


@pytest.fixture(scope="module")
def m(lesson_run):
    proc, figures, measured = lesson_run("06")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (figures / "regimes.png").exists() and (figures / "memory.png").exists()
    return measured


def test_all_six_regimes_ran_in_order(m):
    assert m["regimes"] == list(REGIMES) == list(m["summary"])
    assert set(m["loss_ratios"]) == set(REGIMES)
    assert all(len(r) == len(m["seeds"]) for r in m["loss_ratios"].values())


def test_pure_fp16_loses_most_updates_and_ends_with_a_higher_loss_on_every_seed(m):
    assert m["lost_updates"]["fp16"] > 0.5
    assert min(m["loss_ratios"]["fp16"]) > 1.05


def test_float32_masters_lose_about_as_few_updates_as_fp32(m):
    assert m["lost_updates"]["fp32"] < 0.05
    for name in MIXED:
        assert m["lost_updates"][name] <= 1.5 * m["lost_updates"]["fp32"] + 0.005, name


def test_without_scaling_many_gradients_flush_yet_the_run_barely_moves(m):
    assert m["activation_flushed"]["mixed-noscale"] > 0.3  # "a large share"
    assert all(abs(r - 1) < 0.02 for r in m["loss_ratios"]["mixed-noscale"])
    assert m["accuracy_gap_noscale"] <= 0.01


def test_static_scaling_flushes_fewer_and_dynamic_fewer_still(m):
    f = m["activation_flushed"]
    assert f["mixed-dynamic"] < f["mixed-static"] < f["mixed-noscale"]
    assert math.isnan(f["fp32"])  # nothing to flush: float32 has no 16-bit twin


def test_the_flushed_gradients_are_many_by_count_and_almost_nothing_by_magnitude(m):
    assert m["flushed_count_activation"] > 0.3
    assert m["flushed_magnitude_activation"] < 0.01
    assert m["flushed_count_weight"] < m["flushed_count_activation"] / 2  # "far fewer"


def test_bf16_flushes_nothing_and_stays_close_to_fp32(m):
    assert m["activation_flushed"]["bf16"] == 0.0
    assert m["summary"]["bf16"]["skipped"] == 0.0
    assert all(abs(r - 1) < 0.03 for r in m["loss_ratios"]["bf16"])


def test_test_accuracy_does_not_tell_the_regimes_apart(m):
    assert m["accuracy_spread"] <= 0.01  # "within about a point"


def test_memory(m):
    totals = m["memory_totals"]
    assert 0.45 < totals["fp16"] / totals["fp32"] < 0.55  # "about half"
    assert all(totals[name] > totals["fp32"] for name in MIXED)  # more than fp32 at batch 64
    by_batch = m["memory_by_batch"]
    batches = sorted(by_batch, key=int)
    ratios = [by_batch[b]["mixed_over_fp32"] for b in batches]
    shares = [by_batch[b]["activation_share_fp32"] for b in batches]
    assert ratios[0] > 1 > ratios[-1]  # the balance tips: less than fp32 at the largest batch
    assert ratios == sorted(ratios, reverse=True) and shares == sorted(shares)
