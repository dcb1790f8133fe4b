"""The claims lesson 01 (floating-point formats) makes, checked on its quick-mode run.

Exact facts about the formats are asserted exactly, against ``minimp.formats``;
measured ones with the margin the lesson's words allow ("most", "grows", "flat").
"""

import math

import pytest

from minimp.formats import FLOAT16, FLOAT32


@pytest.fixture(scope="module")
def m(lesson_run):
    proc, figures, measured = lesson_run("01")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (figures / "number_line.png").exists()
    assert (figures / "01_accumulation.png").exists()
    return measured


def test_the_fields_decode_to_the_stored_values(m):
    assert m["decoded_ok"]
    assert m["bits_one_fp16"] == "0 01111 0000000000"
    # "the fewer fraction bits, the larger its error on 0.1"
    by_bits = sorted(m["error_of_tenth"], key=lambda name: -m["fraction_bits"][name])
    errors = [m["error_of_tenth"][name] for name in by_bits]
    assert errors == sorted(errors)
    assert errors[0] < 1e-7 and errors[-1] > 0.01  # "parts per hundred million ... percents"


def test_range_and_precision(m):
    assert m["fp16_max"] == m["fp16_max_from_bits"] == FLOAT16.max == 65504
    assert round(m["fp16_decades"]) == 12  # "about twelve decades"
    assert 80 < m["fp32_decades"] < 90  # "eighty-odd"
    assert m["fp32_decades"] - 5 < m["bf16_decades"] < m["fp32_decades"]  # "nearly all"
    assert round(m["fp16_digits"]) == 3 and round(m["bf16_digits"]) == 2
    assert m["ulp_1_fp16"] == FLOAT16.eps
    assert m["ulp_2048_fp16"] == 2.0 and m["ulp_60000_fp16"] == 32.0


def test_subnormals(m):
    assert m["subnormal_ok"]
    assert m["min_subnormal_bits"] == "0 00000 0000000001"
    assert m["min_normal_bits"] == "0 00001 0000000000"


def test_round_to_nearest_even_on_the_edge_cases(m):
    assert m["round_agrees"]
    assert m["round_2m25"] == 0.0
    assert m["round_1p5_2m25"] == FLOAT16.min_subnormal == 2.0**-24
    assert m["round_65519"] == FLOAT16.max
    assert m["overflow_65520"] is True
    assert m["round_2049"] == 2048.0
    assert m["round_2051"] == 2052.0  # "ties do not always round down"
    assert m["round_bf16_1p2m8"] == 1.0


def test_what_a_cast_does_to_an_array(m):
    fp16, bf16 = m["cast"]["float16"], m["cast"]["bfloat16"]
    assert fp16["flushed_to_zero"] > 0.1 and fp16["overflow"] > 0.01  # "both ends"
    assert fp16["subnormal"] > 0.05  # "a band ... survives only as subnormals"
    assert bf16["flushed_to_zero"] == bf16["overflow"] == bf16["subnormal"] == 0.0
    assert bf16["normal"] == 1.0  # "keeps every one"
    # "fp8 e4m3fn loses the most at the bottom"
    assert max(m["cast"], key=lambda f: m["cast"][f]["flushed_to_zero"]) == "float8_e4m3fn"
    assert m["e4m3_500_is_nan"] is True
    # "the shares are simply the widths of each format's bands"
    for name, widths in m["band_width"].items():
        for category, share in widths.items():
            assert m["cast"][name][category] == pytest.approx(share, abs=0.02)


def test_a_float16_running_sum_stalls_at_2048(m):
    assert m["fp16_running_sum"] == m["fp16_cumsum"] == m["stall_fp16"] == 2048.0
    assert m["numpy_sum"] == 3000.0
    assert m["stall_fp32"] == 2 / FLOAT32.eps == 2.0**24
    assert m["fp32_stalls"] is True


def test_float32_accumulation_stays_at_float16_rounding_level(m):
    fp32_acc = m["acc_errors"]["fp32_acc"]
    assert m["fp32_acc_over_best"] < 1.01  # "as small as rounding the exact answer"
    assert max(fp32_acc) / min(fp32_acc) < 1.25  # "flat"
    assert all(e < 2 * FLOAT16.eps for e in fp32_acc)  # float16's own rounding level


def test_float16_accumulation_error_grows_with_k(m):
    fp16_acc = m["acc_errors"]["fp16_acc"]
    assert fp16_acc == sorted(fp16_acc)  # "keeps growing"
    assert m["fp16_over_fp32_acc"][0] > 3  # "several times larger already at the shortest K"
    assert m["fp16_over_fp32_acc"][-1] > 20
    assert 0.35 < m["fp16_acc_slope"] < 0.65  # "roughly like the square root of K"
    assert math.isclose(m["k_values"][-1] / m["k_values"][0], 64)
