"""The command line runs, and the demo's claims are what it measures."""

import pytest

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


@pytest.mark.parametrize(
    "argv, words",
    [
        (["demo", "--steps", "0"], ["--steps", "0", ">= 1"]),
        (["demo", "--steps", "-4"], ["--steps", "-4", ">= 1"]),
        (["regimes", "--seeds", "0"], ["--seeds", "0", ">= 1"]),
        (["bench", "--quick", "--json", "/missing/dir/x.json"], ["--json", "/missing/dir"]),
    ],
)
def test_bad_arguments_are_refused_before_any_work(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing ran: no benchmark line, no table
    for word in words:
        assert word in captured.err, (word, captured.err)
