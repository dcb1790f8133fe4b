"""Loss scalers: the same scale trajectory and skipped steps as torch.amp.GradScaler,
Megatron-style hysteresis and the floor, and the errors that explain themselves."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minimp
import minimp.functional as F
from minimp import nn, optim
from minimp.amp.scaler import (
    GradScaler,
    LossScaleUnderflowError,
    ScaleRecord,
    StaticGradScaler,
)

CLEAN, INF, NEG_INF, NAN = 0, 1, 2, 3
BAD_VALUE = {INF: np.inf, NEG_INF: -np.inf, NAN: np.nan}


class Pair:
    """One float32 parameter vector in minimp and in PyTorch, each with SGD and a GradScaler."""

    def __init__(self, size=5, minimp_only=None, **kwargs):
        self.rng = np.random.default_rng(0)
        start = self.rng.standard_normal(size).astype(np.float32)
        self.p = minimp.tensor(start, requires_grad=True)
        self.q = torch.tensor(start, requires_grad=True)
        # lr = 2**-2: lr * g is exact, so the update has the same bits with or without an FMA
        self.opt, self.topt = optim.SGD([self.p], lr=0.25), torch.optim.SGD([self.q], lr=0.25)
        self.ours = GradScaler(**kwargs, **(minimp_only or {}))
        self.theirs = torch.amp.GradScaler("cpu", **kwargs)
        self.theirs.scale(torch.ones(()))  # torch creates its float32 scale tensor lazily

    def iteration(self, kind):
        """Gradients as the backward of a scaled loss would leave them, then unscale/step/update.

        Returns (our step ran, torch's step ran)."""
        self.theirs.scale(torch.ones(()))  # torch creates its scale tensor lazily here
        grad = self.rng.uniform(-1, 1, self.p.shape).astype(np.float32)
        grad *= np.float32(self.ours.get_scale())
        if kind != CLEAN:
            grad[self.rng.integers(grad.size)] = BAD_VALUE[kind]
        self.p.grad, self.q.grad = minimp.tensor(grad), torch.from_numpy(grad.copy())
        self.ours.unscale_(self.opt)
        self.theirs.unscale_(self.topt)
        np.testing.assert_array_equal(self.p.grad.numpy(), self.q.grad.numpy())  # same bits
        before = self.q.detach().clone()
        ran = self.ours.step(self.opt)
        self.theirs.step(self.topt)
        self.ours.update()
        self.theirs.update()
        return ran, not torch.equal(before, self.q.detach())

    def run(self, pattern):
        for i, kind in enumerate(pattern):
            ours_ran, theirs_ran = self.iteration(kind)
            assert ours_ran == theirs_ran == (kind == CLEAN), f"iteration {i}"
            assert self.ours.get_scale() == self.theirs.get_scale(), f"iteration {i}"
            assert self.ours.last_step_ran == ours_ran
        self.check_state()
        np.testing.assert_array_equal(self.p.numpy(), self.q.detach().numpy())

    def check_state(self):
        ours, theirs = self.ours.state_dict(), self.theirs.state_dict()
        assert {k: ours[k] for k in theirs} == theirs


@settings(max_examples=40, deadline=None)
@given(
    pattern=st.lists(st.sampled_from([CLEAN] * 4 + [INF, NEG_INF, NAN]), max_size=40),
    init_scale=st.sampled_from([2.0**16, 1.0, 3.7, 1e-3, 2.0**120]),
    growth_factor=st.sampled_from([2.0, 1.5, 3.0, 1.0001]),
    backoff_factor=st.sampled_from([0.5, 0.3, 0.9, 0.125]),
    growth_interval=st.integers(1, 4),
)
def test_random_overflow_patterns_match_torch(
    pattern, init_scale, growth_factor, backoff_factor, growth_interval
):
    Pair(
        init_scale=init_scale,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        growth_interval=growth_interval,
    ).run(pattern)


def test_long_clean_runs_grow_several_times_then_stop_below_float32_max():
    pair = Pair(init_scale=2.0**110, growth_interval=3)
    pair.run([CLEAN] * 60)
    assert pair.ours.get_scale() == 2.0**127  # 2**128 is inf in float32: growth stops there
    assert len({r.scale for r in pair.ours.history}) == 18  # grew 17 times


def test_consecutive_overflows_take_the_scale_below_one_as_torch_does():
    pair = Pair(init_scale=4.0, growth_factor=3.0, backoff_factor=0.3, growth_interval=2)
    pair.run([NAN, INF] * 10 + [CLEAN] * 5 + [NEG_INF] * 3)
    assert pair.ours.get_scale() < 1e-10


def test_with_a_subnormal_floor_the_scale_follows_torch_down_to_the_last_float32():
    """PyTorch has no floor: its scale goes through the subnormals to 0 (and 1/S = inf)."""
    pair = Pair(init_scale=2.0**-100, minimp_only={"min_scale": 2.0**-149})
    pair.run([INF] * 49)
    assert pair.ours.get_scale() == 2.0**-149
    with pytest.raises(LossScaleUnderflowError):
        pair.iteration(INF)  # raises in our update(), before torch's
    assert pair.ours.get_scale() == 2.0**-149
    pair.theirs.update()
    assert pair.theirs.get_scale() == 0.0


def test_torch_state_dict_loads_into_minimp_and_the_trajectory_continues():
    pattern = [CLEAN, INF, CLEAN, CLEAN, CLEAN, NAN, CLEAN, CLEAN, CLEAN, CLEAN]
    pair = Pair(init_scale=1024.0, growth_factor=1.5, backoff_factor=0.3, growth_interval=3)
    pair.run(pattern[:4])
    assert pair.theirs.state_dict()["_growth_tracker"] == 2  # mid-interval
    pair.ours = GradScaler()
    pair.ours.load_state_dict(pair.theirs.state_dict())
    pair.run(pattern[4:])
    # ... and the other way round (torch ignores minimp's extra keys)
    pair.theirs = torch.amp.GradScaler("cpu")
    pair.theirs.load_state_dict(pair.ours.state_dict())
    pair.run(pattern)


def test_torch_reports_an_unrounded_init_scale_until_its_first_scale_call():
    """A quirk of torch: the float32 scale tensor exists only after scale(); minimp's
    scale is float32 from the start."""
    theirs = torch.amp.GradScaler("cpu", init_scale=3.7)
    assert theirs.get_scale() == 3.7
    theirs.scale(torch.ones(()))
    assert theirs.get_scale() == float(np.float32(3.7)) == GradScaler(init_scale=3.7).get_scale()


def test_state_dict_is_plain_json_and_round_trips():
    scaler = GradScaler(init_scale=8.0, growth_interval=2, hysteresis=3)
    p = _param()
    for kind in [CLEAN, INF, CLEAN]:
        _drive(scaler, p, kind)
    state = json.loads(json.dumps(scaler.state_dict()))
    assert state == scaler.state_dict()
    assert state["_hysteresis_tracker"] == 2 and state["_step"] == 3
    copy = GradScaler()
    copy.load_state_dict(state)
    assert copy.state_dict() == state and copy.config == scaler.config


# ---- hysteresis and floor ---------------------------------------------------------------


def _param(size=3):
    return minimp.tensor(np.ones(size, dtype=np.float32), requires_grad=True)


def _drive(scaler, p, kind, opt=None):
    """One iteration with gradients that are clean or hold inf/NaN; returns whether it stepped."""
    opt = opt or optim.SGD([p], lr=0.1)
    grad = np.full(p.shape, scaler.get_scale(), dtype=np.float32)
    if kind != CLEAN:
        grad[0] = BAD_VALUE[kind]
    p.grad = minimp.tensor(grad)
    ran = scaler.step(opt)
    scaler.update()
    return ran


def test_hysteresis_follows_a_hand_computed_megatron_trajectory():
    """hysteresis=2: the first overflow after a growth only spends the tracker; once it
    is spent, every overflow backs off until a growth resets it."""
    scaler = GradScaler(init_scale=1024.0, growth_interval=3, hysteresis=2)
    p = _param()
    pattern = "O C O O C C C O O C O".split()
    expected_scale = [1024, 1024, 512, 256, 256, 256, 512, 512, 256, 256, 128]
    expected_hysteresis = [1, 1, 0, -1, -1, -1, 2, 1, 0, 0, -1]
    for i, kind in enumerate(pattern):
        ran = _drive(scaler, p, INF if kind == "O" else CLEAN)
        assert ran == (kind == "C"), i  # every overflow step is skipped, backoff or not
        assert scaler.get_scale() == expected_scale[i], i
        assert scaler.state_dict()["_hysteresis_tracker"] == expected_hysteresis[i], i
    h = scaler.history_arrays()
    assert list(h["skipped"]) == [k == "O" for k in pattern] == list(h["found_inf"])
    assert list(h["scale"]) == [1024, *expected_scale[:-1]]  # the scale each step used
    assert list(h["step"]) == list(range(len(pattern)))
    assert scaler.history[2] == ScaleRecord(step=2, scale=1024.0, found_inf=True, skipped=True)


def test_hysteresis_one_is_torch():
    pair = Pair(init_scale=2.0**10, growth_interval=2, minimp_only={"hysteresis": 1})
    pair.run([INF, CLEAN, INF, INF, CLEAN, CLEAN, CLEAN, INF, CLEAN, CLEAN])


def test_a_state_dict_with_a_scale_cap_is_refused_and_nothing_is_loaded():
    """minimp once had Apex's max_scale; a state dict that caps the scale is refused
    rather than loaded uncapped without a word."""
    scaler = GradScaler(init_scale=8.0)
    state = {**GradScaler(init_scale=2.0**20).state_dict(), "max_scale": 2.0**24}
    with pytest.raises(ValueError, match="max_scale"):
        scaler.load_state_dict(state)
    assert scaler.get_scale() == 8.0


def test_min_scale_raises_with_the_explanation_and_changes_nothing():
    scaler = GradScaler(init_scale=8.0, min_scale=1.0)
    p = _param()
    for _ in range(3):
        _drive(scaler, p, NAN)
    assert scaler.get_scale() == 1.0
    before, history = scaler.state_dict(), list(scaler.history)
    p.grad = minimp.tensor(np.full(3, np.nan, dtype=np.float32))
    opt = optim.SGD([p], lr=0.1)
    assert scaler.step(opt) is False
    with pytest.raises(LossScaleUnderflowError) as caught:
        scaler.update()
    message = str(caught.value)
    for words in ["from 1 to 0.5", "minimum 1", "after 4 consecutive", "NaN or inf in the input",
                  "learning rate", "forward pass", "unchanged"]:  # fmt: skip
        assert words in message
    assert isinstance(caught.value, RuntimeError) and caught.value.overflows == 4
    assert scaler.state_dict() == before and scaler.history == history
    # the iteration is closed (issue 16, item 7): the next one runs, and raises again
    p.grad = minimp.tensor(np.ones(3, dtype=np.float32))
    assert scaler.step(opt) is True
    scaler.update()
    assert scaler.get_scale() == 1.0 and scaler.state_dict()["_growth_tracker"] == 1
    scaler.update(new_scale=4.0)  # a manual scale needs no inf checks, as torch's
    assert scaler.get_scale() == 4.0


def test_by_default_the_scale_keeps_halving_below_float32s_normals_as_torchs():
    """Issue 12, item 8: no floor unless asked for; torch's scale goes on halving."""
    pair = Pair(init_scale=2.0**-120)
    for _ in range(10):
        pair.iteration(INF)
        assert pair.ours.get_scale() == pair.theirs.get_scale()
    assert pair.ours.get_scale() == 2.0**-130  # a float32 subnormal, as torch's


def test_the_floor_is_an_option_with_its_explanation():
    scaler = GradScaler(init_scale=2.0**-120, min_scale=2.0**-126)
    p = _param()
    for _ in range(6):
        _drive(scaler, p, INF)
    assert scaler.get_scale() == 2.0**-126
    with pytest.raises(LossScaleUnderflowError, match=r"below the minimum 1.17549e-38"):
        _drive(scaler, p, INF)


# ---- errors ----------------------------------------------------------------------------


def test_second_unscale_and_second_step_raise_like_torch():
    scaler, p = GradScaler(), _param()
    opt = optim.SGD([p], lr=0.1)
    p.grad = minimp.tensor(np.ones(3, dtype=np.float32))
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) has already been called on this opt"):
        scaler.unscale_(opt)
    assert scaler.step(opt) is True
    with pytest.raises(RuntimeError, match=r"step\(\) has already been called since the last"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) is being called after step\(\)"):
        scaler.unscale_(opt)
    scaler.update()
    with pytest.raises(RuntimeError, match="no inf checks"):
        scaler.update()


def test_float16_gradients_are_refused_with_the_fix(dtype="float16"):
    scaler = GradScaler()
    p = minimp.tensor(np.ones(3), dtype=dtype, requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    p.grad = minimp.tensor(np.full(3, 1024.0), dtype=dtype)
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients") as caught:
        scaler.step(opt)
    assert "master weights" in str(caught.value) and "float32 parameters" in str(caught.value)
    assert p.grad.numpy()[0] == 1024  # untouched
    p32 = _param()
    p32.grad = minimp.tensor(np.ones(3, dtype=np.float32))
    scaler.step(optim.SGD([p32], lr=0.1))  # nothing was recorded for the refused optimizer
    assert len(scaler._per_optimizer) == 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"growth_factor": 1.0}, "growth_factor"),
        ({"growth_factor": math.inf}, "growth_factor"),
        ({"backoff_factor": 1.0}, "backoff_factor"),
        ({"backoff_factor": 0.0}, "backoff_factor"),
        ({"backoff_factor": -0.5}, "backoff_factor"),
        ({"growth_interval": 0}, "growth_interval"),
        ({"growth_interval": 2.5}, "growth_interval"),
        ({"growth_interval": True}, "growth_interval"),
        ({"init_scale": 0.0}, "init_scale"),
        ({"init_scale": -1.0}, "init_scale"),
        ({"init_scale": math.inf}, "init_scale"),
        ({"init_scale": math.nan}, "init_scale"),
        ({"init_scale": 1e39}, "init_scale"),  # inf in float32
        ({"init_scale": 1e-40}, "reciprocal"),  # 1/S is inf in float32 (issue 16, item 4)
        ({"init_scale": 2.0**-129}, "reciprocal"),
        ({"hysteresis": 0}, "hysteresis"),
        ({"min_scale": 4.0, "init_scale": 2.0}, "below min_scale"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GradScaler(**kwargs)


def test_bad_state_dicts_are_refused_and_change_nothing():
    scaler = GradScaler(init_scale=8.0)
    before = scaler.state_dict()
    with pytest.raises(ValueError, match=r"lacks \['growth_factor', 'backoff_factor', 'grow"):
        scaler.load_state_dict({"scale": 1.0, "_growth_tracker": 0})
    for key, value in [("growth_interval", 0), ("scale", math.inf), ("_growth_tracker", -1),
                       ("_growth_tracker", 2000), ("backoff_factor", 2.0), ("hysteresis", 0),
                       ("_hysteresis_tracker", 5), ("_step", 1.5)]:  # fmt: skip
        with pytest.raises(ValueError, match=f"nothing was loaded.*{key.lstrip('_')}"):
            scaler.load_state_dict({**before, key: value})
    with pytest.raises(RuntimeError, match="empty"):
        scaler.load_state_dict({})
    assert scaler.state_dict() == before


# ---- in a training loop ----------------------------------------------------------------


def test_gradient_accumulation_unscales_once_and_equals_one_big_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    big, small = (nn.MLP([6, 8, 3], generator=np.random.default_rng(1)) for _ in range(2))
    opt_big = optim.SGD(big.parameters(), lr=0.5)
    F.cross_entropy(big(minimp.tensor(x)), y).backward()
    opt_big.step()

    scaler, opt = GradScaler(), optim.SGD(small.parameters(), lr=0.5)
    for half in (slice(0, 8), slice(8, 16)):
        loss = F.cross_entropy(small(minimp.tensor(x[half])), y[half]) * 0.5
        scaler.scale(loss).backward()
    scaler.unscale_(opt)
    for p, q in zip(small.parameters(), big.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert scaler.step(opt) is True
    scaler.update()
    for p, q in zip(small.parameters(), big.parameters(), strict=True):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-7)
    assert len(scaler.history) == 1 and scaler.get_scale() == 2.0**16


def test_gradients_that_share_an_array_are_each_unscaled_once():
    a, b = _param(), _param()
    scaler = GradScaler(init_scale=4.0)
    scaler.scale((a + b).sum()).backward()  # the backward of + hands both the same array
    scaler.step(optim.SGD([a, b], lr=1.0))
    np.testing.assert_array_equal(a.grad.numpy(), [1, 1, 1])
    np.testing.assert_array_equal(b.grad.numpy(), [1, 1, 1])


def test_a_float16_loss_is_scaled_in_float16_and_can_overflow_there():
    loss = minimp.tensor(3.0, dtype="float16")
    scaled = GradScaler(init_scale=1024.0).scale(loss)
    assert scaled.dtype == minimp.float16 and scaled.item() == 3072.0
    many = GradScaler().scale([loss, loss])  # 3 * 2**16 > 65504: inf, as in PyTorch
    assert isinstance(many, list) and all(math.isinf(t.item()) for t in many)


def test_two_optimizers_skip_independently_and_the_scale_backs_off_once():
    scaler, p, r = GradScaler(init_scale=8.0), _param(), _param()
    opt_p, opt_r = optim.SGD([p], lr=0.1), optim.SGD([r], lr=0.1)
    p.grad = minimp.tensor(np.full(3, np.inf, dtype=np.float32))
    r.grad = minimp.tensor(np.full(3, 8.0, dtype=np.float32))
    assert scaler.step(opt_p) is False and scaler.step(opt_r) is True
    scaler.update()
    assert scaler.get_scale() == 4.0 and scaler.history[-1].skipped
    np.testing.assert_array_equal(r.numpy(), np.float32(1) - np.float32(0.1))


def test_disabled_scaler_passes_everything_through():
    scaler, p = GradScaler(enabled=False), _param()
    loss = minimp.tensor(2.0)
    assert scaler.scale(loss) is loss and scaler.get_scale() == 1.0 and not scaler.is_enabled()
    assert _drive(scaler, p, INF) is True  # steps even on inf: nothing is checked
    assert np.isnan(p.numpy()[0]) or np.isinf(p.numpy()[0])
    assert scaler.state_dict() == {} and scaler.history == []
    scaler.load_state_dict({"scale": 4.0})  # a no-op, as in PyTorch


def test_static_scaler_skips_on_inf_and_never_changes_its_scale():
    scaler, p = StaticGradScaler(128.0), _param()
    pattern = [CLEAN] * 5 + [INF, NAN] * 3 + [CLEAN] * 5
    ran = [_drive(scaler, p, kind) for kind in pattern]
    assert ran == [kind == CLEAN for kind in pattern]
    assert set(scaler.history_arrays()["scale"]) == {128.0} and scaler.get_scale() == 128.0
    with pytest.raises(ValueError, match="init_scale"):
        StaticGradScaler(0.0)


# ---- faithful to torch (issue 12) and robust (issue 16) --------------------------------


def test_bfloat16_gradients_are_unscaled_as_torchs():
    """Issue 12, item 7: torch refuses only float16 gradients."""
    values = np.array([3.0, 1e-3, 96.0, -7.5], np.float32)
    p = minimp.tensor(values, dtype="bfloat16", requires_grad=True)
    q = torch.tensor(values, dtype=torch.bfloat16, requires_grad=True)
    ours, theirs = GradScaler(init_scale=3.0), torch.amp.GradScaler("cpu", init_scale=3.0)
    theirs.scale(torch.ones(()))
    p.grad = minimp.tensor(values * 3, dtype="bfloat16")
    q.grad = torch.from_numpy(p.grad.numpy().astype(np.float32)).bfloat16()
    opt, topt = optim.SGD([p], lr=0.5), torch.optim.SGD([q], lr=0.5)
    ours.unscale_(opt)
    theirs.unscale_(topt)
    assert p.grad.dtype == minimp.bfloat16
    assert p.grad.numpy().astype(np.float32).tobytes() == q.grad.float().numpy().tobytes()


def test_step_with_no_inf_checks_raises_as_torchs():
    """Issue 12, item 6: no gradients at all is a bug in the loop, not a clean step."""
    p = _param()
    opt = optim.SGD([p], lr=0.1)
    ours, theirs = GradScaler(), torch.amp.GradScaler("cpu")
    theirs.scale(torch.ones(()))
    with pytest.raises(AssertionError, match="No inf checks were recorded for this optimizer"):
        theirs.step(torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1))
    with pytest.raises(AssertionError, match="No inf checks were recorded for this optimizer"):
        ours.step(opt)
    assert p.numpy().tolist() == [1.0, 1.0, 1.0]


def test_setters_and_update_with_a_tensor_follow_torch():
    pair = Pair(growth_interval=3)
    for scaler in (pair.ours, pair.theirs):
        scaler.set_growth_factor(4.0)
        scaler.set_backoff_factor(0.25)
        scaler.set_growth_interval(2)
    for kind in (CLEAN, CLEAN, INF, CLEAN, CLEAN, CLEAN):
        pair.iteration(kind)
        assert pair.ours.get_scale() == pair.theirs.get_scale()
    assert pair.ours.get_growth_factor() == 4.0 and pair.ours.get_growth_interval() == 2
    pair.theirs.update(torch.tensor(8.0))
    pair.ours.update(minimp.tensor(8.0))
    assert pair.ours.get_scale() == pair.theirs.get_scale() == 8.0
    for bad, words in [(minimp.tensor([8.0, 2.0]), "1-element"),
                       (minimp.tensor(8.0, dtype="float16"), "float32"),
                       (minimp.tensor(8.0, requires_grad=True), "requires_grad"),
                       (1e-40, "reciprocal")]:  # fmt: skip
        with pytest.raises((TypeError, ValueError), match=words):
            pair.ours.update(bad)
        assert pair.ours.get_scale() == 8.0
    with pytest.raises(ValueError, match="growth_factor"):
        pair.ours.set_growth_factor(0.5)
    assert pair.ours.get_growth_factor() == 4.0


def test_an_exception_in_the_optimizer_step_leaves_the_scaler_ready_for_the_next_step():
    """Issue 16, item 7: a failing optimizer.step() inside scaler.step() ends the
    iteration for that optimizer; the next iteration unscales and steps as usual."""
    p = _param()
    opt = optim.SGD([p], lr=0.5)
    scaler = GradScaler(init_scale=4.0)
    p.grad = minimp.tensor(np.ones(2, dtype=np.float32))  # the wrong shape: step() raises
    with pytest.raises(ValueError, match="shape"):
        scaler.step(opt)
    assert p.numpy().tolist() == [1.0, 1.0, 1.0] and scaler.get_scale() == 4.0
    p.grad = minimp.tensor(np.full(3, 4.0, dtype=np.float32))
    assert scaler.step(opt) is True
    scaler.update()
    assert p.numpy().tolist() == [0.5, 0.5, 0.5]


def test_step_of_something_not_an_optimizer_is_named():
    with pytest.raises(TypeError, match=r"step\(\) takes an optimizer"):
        GradScaler().step(None)
    with pytest.raises(TypeError, match=r"unscale_\(\) takes an optimizer"):
        GradScaler().unscale_([1, 2])


def test_unscaling_the_masters_in_one_pass_is_the_copy_then_the_unscale():
    """``unscale_(optimizer, masters=...)`` (minimp's own): the masters' gradients made
    from the model's in the unscale's pass are the bits of copy_grads_to_masters() then
    unscale_(), with the same decision, clean or overflowed; an optimizer without the
    masters is refused before anything changes."""
    from minimp.amp import MasterWeights

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    grads, scales = {}, {}
    for fused in (False, True):
        model = nn.MLP([6, 8, 3], generator=np.random.default_rng(1)).half()
        masters = MasterWeights(model)
        opt, scaler = optim.SGD(masters.parameters(), lr=0.5), GradScaler(init_scale=2.0**10)
        for overflow in (False, True):
            loss = F.cross_entropy(model(minimp.tensor(x, dtype="float16")).float(), y)
            scaler.scale(loss * (1e30 if overflow else 1.0)).backward()
            if fused:
                scaler.unscale_(opt, masters=masters)
            else:
                masters.copy_grads_to_masters()
                scaler.unscale_(opt)
            grads[fused, overflow] = [m.grad.numpy().view(np.uint32) for m in masters.parameters()]
            assert scaler.step(opt) is not overflow
            scaler.update()
            masters.copy_masters_to_model()
            model.zero_grad()
        scales[fused] = scaler.get_scale()
    for overflow in (False, True):
        for g, h in zip(grads[False, overflow], grads[True, overflow], strict=True):
            np.testing.assert_array_equal(g, h)
    assert scales[False] == scales[True] == 2.0**9  # the overflow backed both off once
    other = optim.SGD(nn.MLP([6, 3]).parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"does not hold these masters.*masters\.parameters"):
        scaler.unscale_(other, masters=masters)
    assert id(other) not in scaler._per_optimizer  # nothing recorded for it
