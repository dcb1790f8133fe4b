"""The command line runs, and the demo's claims are what it measures."""

from minimp.__main__ import demo, main


def test_demo_trains_both_dtypes_to_a_useful_accuracy(capsys):
    accuracy = demo(steps=100)
    out = capsys.readouterr().out
    assert "2^-25        is stored as 0" in out
    assert "65520        is stored as inf" in out
    assert "2048 + 1     = 2048 in float16" in out
    assert accuracy["float32"] > 0.85 and accuracy["float16"] > 0.85


def test_main_runs_the_demo(capsys):
    assert main(["demo", "--steps", "5"]) == 0
    assert "test accuracy" in capsys.readouterr().out
