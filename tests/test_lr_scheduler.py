"""minimp.optim.lr_scheduler against torch.optim.lr_scheduler: the same learning rate
at every step, the same values in param_groups, and the pattern that does not advance
the schedule on a step the loss scaler skipped."""

import math

import numpy as np
import pytest
import torch

import minimp
from minimp import optim
from minimp.amp import GradScaler
from minimp.optim import lr_scheduler


def _optimizers(groups=2):
    ours = optim.SGD(
        [{"params": [minimp.tensor([1.0], requires_grad=True)], "lr": 0.1 * (i + 1)}
         for i in range(groups)], lr=0.1)  # fmt: skip
    theirs = torch.optim.SGD(
        [{"params": [torch.ones(1, requires_grad=True)], "lr": 0.1 * (i + 1)}
         for i in range(groups)], lr=0.1)  # fmt: skip
    return ours, theirs


SCHEDULES = {
    "lambda": lambda m, o: m.LambdaLR(o, lambda step: 0.95**step),
    "lambdas": lambda m, o: m.LambdaLR(o, [lambda s: 1 / (s + 1), lambda s: 0.5]),
    "linear": lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=7),
    "linear-down": lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.25, total_iters=5),
    "cosine": lambda m, o: m.CosineAnnealingLR(o, T_max=10, eta_min=1e-3),
    "warmup-cosine": lambda m, o: m.SequentialLR(
        o,
        [m.LinearLR(o, start_factor=0.01, total_iters=4), m.CosineAnnealingLR(o, T_max=12)],
        milestones=[4],
    ),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_learning_rate_is_torchs(name):
    ours, theirs = _optimizers()
    s, t = SCHEDULES[name](lr_scheduler, ours), SCHEDULES[name](torch.optim.lr_scheduler, theirs)
    for _ in range(25):
        assert s.get_last_lr() == t.get_last_lr()
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        ours.step()
        theirs.step()
        s.step()
        t.step()


def test_state_dict_resumes_the_schedule():
    ours, _ = _optimizers(1)
    s = lr_scheduler.CosineAnnealingLR(ours, T_max=10)
    for _ in range(4):
        s.step()
    state = s.state_dict()
    twin_opt, _ = _optimizers(1)
    twin_opt.load_state_dict(ours.state_dict())
    twin = lr_scheduler.CosineAnnealingLR(twin_opt, T_max=10)
    twin.load_state_dict(state)
    for _ in range(5):
        s.step()
        twin.step()
        assert twin.get_last_lr() == s.get_last_lr()


def test_a_skipped_step_does_not_advance_the_schedule():
    """``GradScaler.step`` returns whether the optimizer stepped: step the scheduler
    only then, and the schedule counts optimizer steps, not iterations."""
    w = minimp.tensor(np.ones(2, np.float32), requires_grad=True)
    opt = optim.SGD([w], lr=1.0)
    schedule = lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    scaler = GradScaler(init_scale=4.0)
    ran_steps = 0
    for grad in ([1.0, 1.0], [math.inf, 1.0], [1.0, 1.0], [math.nan, 0.0], [1.0, 1.0]):
        w.grad = minimp.tensor(np.array(grad, np.float32))
        if scaler.step(opt):
            schedule.step()
            ran_steps += 1
        scaler.update()
    assert ran_steps == 3 and schedule.last_epoch == 3
    assert opt.param_groups[0]["lr"] == 1.0 / 4


def test_bad_schedules_are_named():
    ours, _ = _optimizers(2)
    with pytest.raises(ValueError, match="lr_lambda"):
        lr_scheduler.LambdaLR(ours, [lambda s: 1.0])
    with pytest.raises(ValueError, match="start_factor"):
        lr_scheduler.LinearLR(ours, start_factor=0.0)
    with pytest.raises(TypeError, match="Optimizer"):
        lr_scheduler.LambdaLR(object(), lambda s: 1.0)
