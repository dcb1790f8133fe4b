"""The claims lesson 02 (gradient underflow) makes, checked on its quick-mode run.

Facts about float16 are asserted exactly, against ``minimp.formats``; measurements with
the margin the lesson's words allow ("almost nothing", "most", "much less", "inside").
"""

import math

import pytest

from minimp.formats import FLOAT16

LAYERS = ("layers.0", "layers.2", "layers.4")
GRADIENTS = [f"{layer} {kind}" for layer in LAYERS for kind in ("activation", "weight")]


@pytest.fixture(scope="module")
def m(lesson_run):
    proc, figures, measured = lesson_run("02")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("02_early_late", "underflow_histogram", "layer_underflow"):
        assert (figures / f"{name}.png").exists(), name
    return measured


def test_the_float16_boundaries_and_categories(m):
    assert m["min_normal_log2"] == math.log2(FLOAT16.min_normal) == -14
    assert m["min_subnormal_log2"] == math.log2(FLOAT16.min_subnormal) == -24
    assert m["category_of"] == {
        "2^-10": "normal",
        "2^-14": "normal",
        "2^-20": "subnormal",
        "2^-24": "subnormal",
        "2^-25": "flushed_to_zero",
        "2^-26": "flushed_to_zero",
    }


def test_almost_nothing_flushes_early_and_every_gradient_loses_more_late(m):
    early, late = m["underflow_table"]["early"], m["underflow_table"]["late"]
    assert set(early) == set(late) == set(GRADIENTS)
    assert max(v["flushed"] for v in early.values()) < 0.001  # "almost nothing"
    for name in GRADIENTS:
        assert late[name]["flushed"] > early[name]["flushed"], name  # "every layer loses more"


def test_the_output_layers_activation_gradients_are_hit_hardest(m):
    late = m["underflow_table"]["late"]
    output = late["layers.4 activation"]["flushed"]
    assert output > 0.5  # "most of them"
    assert output == max(v["flushed"] for v in late.values())
    for layer in LAYERS:  # "a sizeable share of every layer's activation gradients"
        assert late[f"{layer} activation"]["flushed"] > 0.15, layer


def test_weight_gradients_lose_much_less_than_activation_gradients(m):
    late = m["underflow_table"]["late"]
    for layer in LAYERS:
        assert late[f"{layer} weight"]["flushed"] < late[f"{layer} activation"]["flushed"] / 2


def test_a_sizeable_share_is_subnormal_late(m):
    for name, v in m["underflow_table"]["late"].items():
        assert v["subnormal"] > 0.1, name


def test_the_histogram_drifts_left_by_several_binades(m):
    assert m["median_log2"]["late"] <= m["median_log2"]["early"] - 5
    assert m["late_activation_flushed"] > 0.15  # "a sizeable part"


def test_a_loss_scale_shifts_exactly_and_the_window_keeps_what_it_promises(m):
    assert m["scale_shift_exact"]
    low, high = m["window_late"]
    assert low <= high
    for s in (low, high):
        assert math.log2(s) == round(math.log2(s))  # powers of two
    after = m["after_scale"]
    assert after["1"]["flushed"] > 0.1  # "a sizeable share"
    for key in ("low", "high"):
        assert after[key]["flushed"] <= 1 - 0.99  # "at most 1 - KEEP"
        assert after[key]["overflow"] == 0  # "nothing overflows"
    assert after["2 high"]["overflow"] > 0  # "at twice the top ... overflow"


def test_the_dynamic_scale_settles_inside_the_advisors_window(m):
    low, high = m["histogram_window"]
    assert low <= m["histogram_settled"] <= high
    assert m["histogram_flushed_unscaled"] > 0.15  # "a sizeable share of its mass"


def test_underflow_per_layer_grows_over_training(m):
    over = m["layer_over_time"]
    for name in GRADIENTS:
        assert over[name]["first"] < 0.001, name  # "starts near zero"
        assert over[name]["last"] > over[name]["first"], name  # "grows"
    assert over["layers.4 activation"]["last"] == max(v["last"] for v in over.values())
    for layer in LAYERS:  # "weight gradients lose far less"
        assert over[f"{layer} weight"]["last"] < over[f"{layer} activation"]["last"] / 2


def test_on_this_network_the_underflow_costs_almost_nothing(m):
    fp32, noscale = m["outcome"]["fp32"], m["outcome"]["mixed-noscale"]
    assert abs(noscale["accuracy"] - fp32["accuracy"]) < 0.01  # "a fraction of a percent"
    assert abs(noscale["final_loss"] / fp32["final_loss"] - 1) < 0.05  # "a few percent"
