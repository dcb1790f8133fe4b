"""The claims lesson 08 (bfloat16 and FP8) makes, checked on its quick-mode run.

Facts about the formats come from ``minimp.formats`` and are asserted exactly; each
measured claim carries the margin the lesson's words allow ("most", "nearly all",
"within a few percent", "about eight times", "much closer").
"""

import math

import pytest

from minimp.formats import BFLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2, FLOAT16, FLOAT32

LAYERS = ["layers.0", "layers.2", "layers.4"]
LAST = "layers.4"


@pytest.fixture(scope="module")
def m(lesson_run):
    proc, figures, measured = lesson_run("08")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (figures / "fp8_scaling.png").exists()
    assert sorted(p.name for p in figures.glob("fp8_*.png")) == [
        "fp8_scaling.png",
        "fp8_training.png",
    ]
    return measured


def test_range_versus_precision(m):
    t = m["formats"]
    bf16, fp16, e4m3, e5m2 = (t[f.name] for f in (BFLOAT16, FLOAT16, FLOAT8_E4M3FN, FLOAT8_E5M2))
    assert bf16["min_normal"] == FLOAT32.min_normal == 2.0**-126
    assert 0.99 < bf16["max"] / FLOAT32.max < 1  # "nearly the same max"
    assert bf16["binades"] > 200 and 6 <= bf16["binades"] / fp16["binades"] < 7  # "about six"
    assert fp16["binades"] == pytest.approx(40.0, abs=0.01)  # "about forty binades"
    assert (bf16["significant_bits"], fp16["significant_bits"]) == (8, 11)
    assert bf16["eps"] / fp16["eps"] == 8
    assert e4m3["significant_bits"] == e5m2["significant_bits"] + 1
    assert e4m3["binades"] < e5m2["binades"] < fp16["binades"]
    assert fp16["max"] == FLOAT16.max and e5m2["max"] == FLOAT8_E5M2.max


def test_bf16_flushes_no_gradient_that_float16_flushes_many_of(m):
    assert m["fp16_flushed_late"] > 0.3  # "a large share"
    assert m["bf16_flushed_ever"] == 0.0  # "none, at any recorded step, in any layer"


def test_bf16_rounds_about_eight_times_coarser(m):
    for what in ("weights", "activations"):
        e = m["rounding_error"][what]
        assert 6 < e["bfloat16"] / e["float16"] < 10, what


def test_bf16_trains_as_close_to_fp32_as_mixed_dynamic(m):
    ratios = m["bf16_loss_ratios"]
    assert abs(ratios["bf16"] - 1) < 0.03  # "within a few percent"
    assert abs(ratios["mixed-dynamic"] - 1) < 0.03


def test_one_unscaled_e5m2_cast_flushes_most_and_the_scale_saves_most(m):
    e5m2_binades = m["formats"][FLOAT8_E5M2.name]["binades"]
    assert m["fp16_extra_binades"] == 8
    for layer in LAYERS:
        c = m["one_cast"][layer]
        assert c["e5m2_unscaled"] > 0.5, layer  # "most vanish"
        assert c["above_e5m2_floor"] < 8, layer  # "only a few binades above"
        assert 0.3 < c["float16"] < c["e5m2_unscaled"], layer  # "fewer, but still many"
        assert c["bfloat16"] == 0.0
        assert 0.5 < c["amax_scaled_over_max"] <= 1, layer  # "the top binade"
        assert c["e5m2_scaled"] < c["e5m2_unscaled"] / 2, layer  # "far fewer"
        assert math.log2(c["scale"]) == round(math.log2(c["scale"]))  # a power of two
    for layer in LAYERS[:-1]:
        assert m["one_cast"][layer]["e5m2_scaled"] < 0.01  # "almost none"
    last = m["one_cast"][LAST]
    assert last["e5m2_scaled"] > 0.01  # "not so in the last layer"
    assert last["binades"] > e5m2_binades + 10  # "far more binades than e5m2 spans"
    assert last["e5m2_scaled_magnitude"] < 1e-3  # "a tiny share of the total magnitude"
    assert m["scale_spread"] <= 4  # "within a few binades of each other"
    for layer in LAYERS:  # one common scale: "somewhat more ... but far less than no scale"
        c, common = m["one_cast"][layer], m["common_flushed"][layer]
        assert c["e5m2_scaled"] <= common <= c["e5m2_scaled"] + 0.1, layer
        assert common < c["e5m2_unscaled"] / 2, layer


def test_the_first_cast_of_every_tensor_is_unscaled(m):
    assert m["first_step_scales"] == [1.0]
    assert m["first_step_same"] is True


def test_the_scale_follows_the_amax(m):
    amax = m["role_log2_amax"]
    assert abs(amax["input"]) < 3 and abs(amax["weight"]) < 3  # "within a few binades of 1"
    assert amax["grad"] < min(amax["input"], amax["weight"]) - 5  # "many binades lower"
    assert max(m["forward_flushed"].values()) < 0.02  # inputs and weights "hardly flush"
    follow = m["follow"]
    for role in ("input", "weight"):
        assert follow[role]["top_binade"] > 0.95, role  # "nearly every step"
    assert follow["grad"]["top_binade"] < min(follow[r]["top_binade"] for r in ("input", "weight"))
    assert follow["grad"]["within_4x"] > 0.9  # "nearly always within a factor of four"
    assert all(f["max_saturated"] < 0.01 for f in follow.values())  # "very little"


def test_without_scales_nearly_all_of_the_last_gradient_flushes(m):
    unscaled, scaled = m["late_flushed"]["fp8-unscaled"], m["late_flushed"]["fp8"]
    assert m["last_layer"] == LAST
    assert unscaled[LAST] > 0.9  # "nearly all"
    assert unscaled[LAST] == max(unscaled.values())  # "most of all"
    assert 0 < scaled[LAST] < unscaled[LAST] / 2  # "far less flushes", but some


def test_scaled_fp8_ends_much_closer_to_fp32_than_unscaled(m):
    r = m["fp8_loss_ratios"]
    assert r["fp8-unscaled"] > 1.15  # "well above fp32's"
    assert r["fp8"] - 1 < (r["fp8-unscaled"] - 1) / 2  # "much closer"
    accuracy = m["fp8_accuracy"].values()
    assert max(accuracy) - min(accuracy) <= 0.015  # "hardly tells them apart"


def test_with_sgd_at_batch_64_unscaled_fp8_trains_about_as_well(m):
    assert abs(m["sgd_unscaled_ratio"] - 1) < 0.05  # "about as well as float32"
    assert m["sgd_unscaled_last_flushed"] > 0.5  # "most ... flushes here too"
