"""The claims lesson 09 (pure 16-bit training without master weights) makes, checked on
its quick-mode run.

Bytes per parameter and the bfloat16 ulp are exact facts of the implementation and the
format, asserted exactly; measured ones with the margin the lesson's words allow ("about
all of it", "within about an ulp", "clearly higher").
"""

import pytest

from minimp.formats import BFLOAT16


@pytest.fixture(scope="module")
def m(lesson_run):
    proc, figures, measured = lesson_run("09")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (figures / "pure16.png").exists()
    assert (figures / "one_weight.png").exists()
    return measured


def test_bytes_per_parameter(m):
    b = m["bytes_per_param"]
    assert b == {"fp32": 12, "bf16": 16, "bf16-pure": 6, "bf16-sr": 6, "bf16-kahan": 8}
    assert b["bf16"] > b["fp32"]  # "with masters, each parameter costs more than float32"
    assert b["bf16-pure"] == b["fp32"] / 2  # "half of float32's bytes per parameter"
    assert b["bf16-sr"] == b["bf16-pure"]  # "stochastic rounding costs no memory at all"
    assert b["bf16-kahan"] - b["bf16-pure"] == 2  # "Kahan adds one 2-byte carry per weight"
    assert b["bf16-kahan"] / b["fp32"] == pytest.approx(2 / 3)  # "two thirds"
    assert m["per_param"]["bf16-kahan"]["optimizer state"] == 4  # momentum + carry
    assert m["per_param"]["bf16"]["master weights"] == 4
    assert m["total_kib"]["bf16"] > m["total_kib"]["fp32"]  # "a step of bf16 holds more"


def test_one_weight_nearest_never_moves(m):
    assert m["ulp"] == BFLOAT16.eps == 2.0**-7
    assert m["update_over_half_ulp"] < 0.1  # "a small fraction of that half ulp"
    assert m["nearest_never_moved"] is True and m["nearest_final"] == 1.0
    assert m["float32_error_ulp"] < 0.01  # "within a hundredth of a bfloat16 ulp"


def test_stochastic_rounding_is_right_on_average_not_exact(m):
    assert m["sr_jump_sizes"] == [m["ulp"]]  # "by a whole ulp"
    assert m["sr_moves"] == pytest.approx(m["sr_moves_expected"], rel=0.05)
    assert m["sr_mean_gap"] < 0.1  # "the mean sits on the float32 line throughout"
    assert m["sr_std_final"] > 2  # "a single weight wanders off it by several ulps"
    assert m["sr_std_final"] == pytest.approx(m["sr_std_predicted"], rel=0.1)  # binomial
    assert m["sr_std_growth"] == pytest.approx(2.0, rel=0.15)  # "like the square root"


def test_kahan_stays_within_about_an_ulp(m):
    assert m["kahan_jump_sizes"] == [m["ulp"]]  # "one ulp at a time too"
    assert m["kahan_gap"] < 1.5  # "within about an ulp of float32 at every step"
    assert m["kahan_final_gap"] < 0.5  # "ends within a fraction of one"
    assert m["kahan_gap"] > 0.5  # "not within half an ulp"
    assert 0 < m["with_carry_gap"] < 1  # the carry's own drift


def test_the_network_five_ways(m):
    ratio = m["loss_ratio"]
    assert ratio["bf16-pure"] > 1.5  # "a clearly higher training loss"
    for name in ("bf16", "bf16-sr", "bf16-kahan"):
        assert ratio[name] == pytest.approx(1.0, abs=0.05), name  # "back to float32's"
    assert m["accuracy_spread"] <= 0.01  # "accuracy hardly tells the regimes apart"


def test_unchanged_is_not_lost(m):
    unchanged, delivered, error = m["unchanged"], m["delivered"], m["error"]
    for name in ("bf16-pure", "bf16-sr", "bf16-kahan"):
        assert unchanged[name] > 0.5, name  # "leave most weights unchanged at each step"
        assert unchanged[name] == pytest.approx(unchanged["bf16-pure"], abs=0.05)  # "as many"
    assert delivered["bf16-pure"] < 0.3  # "only a small part of the movement"
    assert delivered["bf16-sr"] == pytest.approx(1.0, abs=0.1)  # "about all of it"
    assert error["bf16-sr"] > 0.8  # "an error about as large as the movement, or larger"
    assert delivered["bf16-kahan"] == pytest.approx(1.0, abs=0.05)  # "about all of it"
    assert error["bf16-kahan"] < error["bf16-sr"] / 2  # "a much smaller error"
    assert m["kahan_with_carry_delivered"] == pytest.approx(1.0, abs=0.01)
    assert m["kahan_with_carry_error"] < 0.05  # "where the optimizer asked it to be"
    for name in ("fp32", "bf16"):  # "moves its masters as asked"; "delivers 1.000"
        assert delivered[name] == pytest.approx(1.0, abs=5e-4), name
        assert error[name] < 5e-3, name
