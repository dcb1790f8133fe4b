"""The training loop, the regimes, checkpoints, and what bad input does to a run."""

import math
import zipfile
from dataclasses import replace

import numpy as np
import pytest

import minimp
from minimp import checkpoint, data
from minimp.amp import LossScaleUnderflowError
from minimp.fp8 import BlockLinear
from minimp.scaling import BlockScaling, DelayedScaling
from minimp.train import (
    ALL_REGIMES,
    BEYOND_FP16,
    REGIMES,
    Run,
    SkippedStepsWarning,
    TrainConfig,
    get_regime,
)

DIGITS = data.load_digits()
SHORT = TrainConfig(sizes=(64, 32, 10), steps=30, eval_every=10)


def _bits(run: Run) -> list[bytes]:
    params = run.model.parameters() + (run.masters.parameters() if run.masters else [])
    return [p.numpy().tobytes() for p in params]


@pytest.mark.parametrize("name", list(ALL_REGIMES))
def test_each_regime_holds_what_it_promises(name):
    regime = get_regime(name)
    run = Run(name, DIGITS, SHORT)
    assert {p.dtype for p in run.model.parameters()} == {regime.param_dtype}
    assert (run.masters is not None) == regime.master_weights
    optimized = run.optimizer.param_groups[0]["params"]
    expected = minimp.float32 if regime.master_weights else regime.param_dtype
    assert {p.dtype for p in optimized} == {expected}
    assert run.scaler.is_enabled() == (regime.loss_scaling is not None)
    assert run.optimizer.param_groups[0]["update_rounding"] == regime.update_rounding
    assert len(run.fp8_layers()) == (2 if isinstance(regime.matmul, DelayedScaling) else 0)
    blocks = [layer for layer in run.model.layers if isinstance(layer, BlockLinear)]
    assert len(blocks) == (1 if isinstance(regime.matmul, BlockScaling) else 0)  # head: float32
    history = run.train()
    assert len(history.loss) == 30 and history.eval_step == [10, 20, 30]
    assert all(np.isfinite(history.loss))


def test_every_regime_starts_from_the_same_weights_rounded_to_its_dtype():
    reference = Run("fp32", DIGITS, SHORT).model.parameters()
    for name in ALL_REGIMES:
        for p, q in zip(Run(name, DIGITS, SHORT).model.parameters(), reference, strict=True):
            assert np.array_equal(p.numpy(), q.numpy().astype(p.dtype))


def test_the_loss_is_float32_in_mixed_regimes_and_float16_in_pure_fp16():
    for name, dtype in [("mixed-dynamic", minimp.float32), ("fp16", minimp.float16)]:
        run = Run(name, DIGITS, SHORT)
        logits, _ = run._forward(DIGITS.x_train[:8], keep=False)
        assert run._loss(logits, DIGITS.y_train[:8]).dtype == dtype


@pytest.mark.parametrize(
    ("name", "optimizer"),
    [
        ("mixed-dynamic", "adam"),
        ("fp16", "sgd"),
        ("bf16", "adam"),
        ("bf16-sr", "sgd"),  # the rounding generator's state is in the checkpoint
        ("bf16-kahan", "adam"),  # and the Kahan carry
        ("fp8", "sgd"),  # and each fp8 tensor's amax history and scale
    ],
)
def test_a_resumed_run_continues_bit_for_bit(tmp_path, name, optimizer):
    config = replace(SHORT, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05)
    straight = Run(name, DIGITS, config)
    straight.train(30)

    first = Run(name, DIGITS, config)
    first.train(13)
    first.save(tmp_path / "run.npz")
    resumed = Run(name, DIGITS, config)
    resumed.load(tmp_path / "run.npz")
    resumed.train(17)

    assert _bits(resumed) == _bits(straight)
    assert repr(resumed.history.to_dict()) == repr(straight.history.to_dict())  # nan == nan
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    assert resumed.scaler.history == straight.scaler.history
    for a, b in zip(resumed.fp8_layers(), straight.fp8_layers(), strict=True):
        assert repr(a.scaling_state()) == repr(b.scaling_state())


def test_regimes_are_found_by_name_with_a_clear_error():
    assert get_regime("bf16-sr") is BEYOND_FP16["bf16-sr"] and get_regime(REGIMES["fp32"])
    with pytest.raises(ValueError, match="unknown regime 'fp4'; choose from fp32"):
        Run("fp4", DIGITS, SHORT)


def _saved(tmp_path, name="mixed-dynamic", config=SHORT):
    run = Run(name, DIGITS, config)
    run.train(3)
    path = tmp_path / "ckpt.npz"
    run.save(path)
    return path


def test_loading_a_checkpoint_from_another_model_fails_and_changes_nothing(tmp_path):
    path = _saved(tmp_path)
    other = Run("mixed-dynamic", DIGITS, replace(SHORT, sizes=(64, 16, 10)))
    before = _bits(other)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"another config: sizes \(64, 32, 10\) there"
    ):
        other.load(path)
    # The low-level loader, past the config check, names the mismatch.
    with pytest.raises(checkpoint.CheckpointError, match=r"layers\.0\.weight"):
        checkpoint.load(path, model=other.model, masters=other.masters)
    assert _bits(other) == before


def test_loading_into_another_regime_is_refused(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="not this 'fp16' run"):
        Run("fp16", DIGITS, SHORT).load(path)


def test_a_corrupted_checkpoint_fails_clearly_and_changes_nothing(tmp_path):
    path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    for offset in (len(raw) // 3, len(raw) // 2):
        raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    run = Run("mixed-dynamic", DIGITS, SHORT)
    before = _bits(run)
    with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
        run.load(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        run.load(path)
    assert _bits(run) == before


def test_a_checkpoint_never_unpickles(tmp_path):
    """A file holding a pickled object is refused, not executed."""
    path = tmp_path / "evil.npz"
    np.savez(path, **{"meta.json": np.array([object()], dtype=object)})
    with pytest.raises(checkpoint.CheckpointError, match=r"holds object.*expected uint8"):
        Run("fp32", DIGITS, SHORT).load(path)
    with zipfile.ZipFile(path) as z:  # it really holds a pickle
        assert any(z.read(n)[:6].startswith(b"\x93NUMPY") for n in z.namelist())


def test_a_run_whose_forward_overflows_stops_with_an_explanation():
    """Inputs of 1e5 overflow float16 in the first layer, at any loss scale: the dynamic
    scaler backs off every step until it would pass min_scale, then says why."""
    huge = data.Dataset(
        DIGITS.x_train * np.float32(1e5), DIGITS.y_train, DIGITS.x_test, DIGITS.y_test, "huge", 10
    )
    run = Run("mixed-dynamic", huge, SHORT)
    with pytest.raises(LossScaleUnderflowError, match="NaN"):
        run.train()
    # Steps 0..16 ran at scales 2^16 .. 2^0 = min_scale, all skipped; the 17th backoff
    # would go below the minimum, so the run stops there with the scale unchanged.
    assert run.steps_done == 16 and all(run.history.skipped)
    assert run.scaler.get_scale() == 1.0


def test_a_loss_that_is_not_a_scalar_is_refused():
    scaler = minimp.amp.GradScaler()
    x = minimp.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"shape \(3,\)"):
        scaler.scale(x * 2.0).backward()


def test_bad_configs_and_data_are_refused():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="do not fit digits"):
        Run("fp32", DIGITS, TrainConfig(sizes=(32, 10)))
    bad = DIGITS.x_train.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        data.Dataset(bad, DIGITS.y_train, DIGITS.x_test, DIGITS.y_test, "bad", 10)


def test_evaluating_an_fp8_run_uses_its_scales_without_changing_them():
    run = Run("fp8", DIGITS, SHORT)
    run.train(5)
    before = repr([layer.scaling_state() for layer in run.fp8_layers()])
    run.evaluate()
    assert repr([layer.scaling_state() for layer in run.fp8_layers()]) == before
    run.train(1)
    assert repr([layer.scaling_state() for layer in run.fp8_layers()]) != before


def test_the_fp16_regime_runs_through_a_subnormal_loss():
    """Step 824 of this run has a loss whose float16 value is subnormal: a full
    reduction to a NumPy scalar that backend.narrow once assigned into (issue 16, item 1)."""
    config = TrainConfig(steps=900, lr=0.1, batch_size=16, eval_every=900)
    history = Run("fp16", data.load_digits(), config).train()
    assert len(history.loss) == 900
    assert any(0 < loss < 2.0**-14 for loss in history.loss)  # the case really occurred


BAD_CONFIGS = [
    ({"sizes": ()}, "sizes", "()"),
    ({"sizes": (64,)}, "sizes", "(64,)"),
    ({"sizes": (64, 0, 10)}, "sizes", ">= 1"),
    ({"seed": -1}, "seed", "-1"),
    ({"steps": 1.5}, "steps", "1.5"),
    ({"batch_size": "64"}, "batch_size", "'64'"),
    ({"batch_size": True}, "batch_size", "True"),
    ({"lr": "0.1"}, "lr", "'0.1'"),
    ({"lr": -1.0}, "lr", ">= 0"),
    ({"lr": math.nan}, "lr", "nan"),
    ({"momentum": None}, "momentum", "None"),
    ({"clip_norm": 0.0}, "clip_norm", "> 0"),
    ({"static_scale": 0.0}, "static_scale", "> 0"),
    ({"init_scale": math.inf}, "init_scale", "inf"),
    ({"growth_interval": 0}, "growth_interval", ">= 1"),
    ({"record_every": -1}, "record_every", ">= 0"),
    ({"eval_every": 0}, "eval_every", ">= 1"),
    ({"activation": "gelu"}, "activation", "'relu'"),
]


@pytest.mark.parametrize("settings, name, words", BAD_CONFIGS)
def test_bad_settings_are_refused_at_construction_naming_setting_value_and_allowed(
    settings, name, words
):
    with pytest.raises(ValueError) as err:
        TrainConfig(**settings)
    message = str(err.value)
    assert name in message and words in message and "must be" in message, message


def test_a_batch_larger_than_the_training_set_is_refused_where_the_data_is_known():
    n = len(DIGITS.x_train)
    with pytest.raises(ValueError, match=f"batch_size must be at most the {n} training"):
        Run("fp32", DIGITS, replace(SHORT, batch_size=n + 1))
    Run("fp32", DIGITS, replace(SHORT, batch_size=n)).train(2)  # all of it is fine


def test_a_run_of_skipped_steps_is_reported_once_with_the_scale_and_the_fix():
    """A static scale of 2^24 overflows every step on the digits (issue 16, item 15)."""
    config = replace(SHORT, static_scale=2.0**24, steps=30)
    run = Run("mixed-static", DIGITS, config)
    with pytest.warns(SkippedStepsWarning) as caught:
        run.train(25)
    assert all(run.history.skipped)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "16777216" in message and "2^24" in message and "static_scale" in message
    import warnings

    with warnings.catch_warnings():  # the same run of skips goes on: no second warning
        warnings.simplefilter("error")
        run.train(5)
