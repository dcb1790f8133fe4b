"""minimp.regimes: every regime is a policy the loop reads, and nothing else."""

from pathlib import Path

import numpy as np
import pytest

import minimp
from minimp import data
from minimp.regimes import ALL_REGIMES, Regime, regime_table
from minimp.scaling import MXFP8, CurrentScaling, DelayedScaling
from minimp.train import Run, TrainConfig

DIGITS = data.load_digits()
SHORT = TrainConfig(sizes=(64, 32, 10), steps=20, eval_every=10)


def test_the_table_prints_every_regime_with_its_fields():
    lines = regime_table().splitlines()
    assert len(lines) == 2 + len(ALL_REGIMES)
    row = {line.split("|")[1].strip(" `"): line for line in lines[2:]}
    assert set(row) == set(ALL_REGIMES)
    assert "float16 (autocast)" in row["amp"] and "fp8, delayed scales" in row["fp8"]
    assert "mxfp8, a scale per 32" in row["mxfp8"] and "nvfp4, a scale per 16" in row["nvfp4"]
    current = Regime("fp8-current", "", "float32", "float32", "float32", matmul=CurrentScaling())
    assert "fp8, current scales" in regime_table({"fp8-current": current})
    assert "| float32  | float32 |" in row["mixed-dynamic"].replace(" dynamic", "")


def test_the_readme_shows_the_table_the_code_prints():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert regime_table() in readme


def test_a_new_regime_is_one_definition():
    """A policy outside the table trains as it says: here float32 masters and a dynamic
    scale with the loss left in float16, a combination no named regime has."""
    custom = Regime(
        "mixed-fp16-loss", "float16 compute and loss, float32 masters, dynamic scale",
        minimp.float16, minimp.float16, minimp.float16, master_weights=True,
        loss_scaling="dynamic",
    )  # fmt: skip
    run = Run(custom, DIGITS, SHORT)
    assert {p.dtype for p in run.model.parameters()} == {minimp.float16}
    assert run.masters is not None and run.scaler.is_enabled()
    logits, _ = run._forward(DIGITS.x_train[:8], keep=False)
    assert run._loss(logits, DIGITS.y_train[:8]).dtype == minimp.float16
    assert np.isfinite(run.train().loss).all()


def test_amp_computes_what_the_master_weight_layout_computes():
    """PyTorch AMP keeps float32 parameters and casts them per op; the paper keeps
    float16 parameters and float32 masters. Started from the same float32 values
    (the masters begin as the float16 weights, AMP's parameters as the float32
    initialisation, so one is set to the other here), every float16 value on this
    MLP is the same rounding of the same float32 value: the two train bit for bit
    alike, and differ only in what they store."""
    amp, mixed = (Run(name, DIGITS, SHORT) for name in ("amp", "mixed-dynamic"))
    assert {p.dtype for p in amp.model.parameters()} == {minimp.float32} and amp.masters is None
    for p, q in zip(amp.model.parameters(), mixed.masters.parameters(), strict=True):
        assert not np.array_equal(p.numpy(), q.numpy())  # not yet rounded to float16
        p.data = q.data.copy()
    assert amp.train().loss == mixed.train().loss
    for p, q in zip(amp.model.parameters(), mixed.masters.parameters(), strict=True):
        assert p.numpy().tobytes() == q.numpy().tobytes()
    _, kept = amp._forward(DIGITS.x_train[:8], keep=True)
    assert {h.dtype for _, h in kept} == {minimp.float16}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"loss_scaling": "sometimes"}, "loss_scaling must be one of"),
        ({"update_rounding": "up"}, "update_rounding must be one of"),
        ({"master_weights": True}, "master_weights keep float32 copies"),
        ({"param_dtype": minimp.float16, "compute_dtype": minimp.bfloat16}, "autocast"),
        ({"matmul": DelayedScaling(), "compute_dtype": minimp.float16}, "fp8 matmuls"),
        (
            {
                "matmul": MXFP8,
                "param_dtype": minimp.bfloat16,
                "compute_dtype": minimp.bfloat16,
                "master_weights": True,
            },
            "block-scaled ones",
        ),
        ({"update_rounding": "stochastic"}, "needs 16-bit parameters"),
        ({"loss_dtype": "float64"}, "unknown dtype"),
        (
            {
                "param_dtype": minimp.float16,
                "compute_dtype": minimp.float16,
                "loss_scaling": "static",
            },
            "GradScaler refuses float16",
        ),
    ],
)
def test_inconsistent_policies_are_refused(fields, message):
    base = {"param_dtype": minimp.float32, "compute_dtype": minimp.float32,
            "loss_dtype": minimp.float32}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        Regime("bad", "a policy that cannot be", **{**base, **fields})
