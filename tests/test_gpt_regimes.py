"""The transformer trained by the one loop (minimp.train.Run) in every regime of
lesson 10: the same initialisation, the micro-batches and the schedule as stated."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import minimp
from minimp import data
from minimp.amp import autocast
from minimp.functional import layer_norm
from minimp.gpt import GPT
from minimp.train import GPT_REGIMES, SHAKESPEARE_GPT, Run, TrainConfig

TINY = replace(SHAKESPEARE_GPT, steps=4, warmup=2, eval_every=2, eval_batches=1)


@pytest.fixture(scope="module")
def corpus():
    return data.load_shakespeare(SHAKESPEARE_GPT.gpt.block_size)


def test_every_regime_starts_from_the_same_weights_and_trains(corpus):
    reference = Run("fp32", corpus, TINY)
    first = {n: p.numpy().copy() for n, p in reference.model.named_parameters()}
    for name in GPT_REGIMES:
        run = Run(name, corpus, TINY)
        dtype = run.regime.param_dtype
        for n, p in run.model.named_parameters():
            want = first[n].astype(dtype)
            np.testing.assert_array_equal(p.numpy(), want, err_msg=f"{name} {n}")
        history = run.train()
        assert len(history.loss) == TINY.steps and len(history.test_loss) == 2
        assert len(run.scaler.history) == TINY.steps or not run.scaler.is_enabled()


def test_accumulated_micro_batches_give_the_gradient_of_their_union(corpus):
    """Each micro-batch's loss divided by their number: the summed gradients are those
    of one batch holding all of them (float32, to rounding)."""
    run = Run("fp32", corpus, replace(TINY, clip_norm=None))
    x, y = run._batch(0)
    grads = {}
    run.step(x, y, hooks=[lambda info: grads.update(
        {n: p.grad.numpy().copy() for n, p in info.model.named_parameters()})])  # fmt: skip
    whole = GPT(TINY.gpt, generator=np.random.default_rng(TINY.seed))
    _, loss = whole(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
    loss.backward()
    for n, p in whole.named_parameters():
        np.testing.assert_allclose(grads[n], p.grad.numpy(), rtol=1e-4, atol=1e-7, err_msg=n)


def test_adamw_decays_matrices_and_embeddings_only(corpus):
    run = Run("mixed-dynamic", corpus, TINY)
    decay, no_decay = run.optimizer.param_groups
    assert decay["weight_decay"] == TINY.weight_decay and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in run.updated.items()}
    assert all(p.ndim == 2 for p in decay["params"])
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"weight", "bias"}
    assert all("ln_" in names[id(p)] or names[id(p)].endswith("bias") for p in no_decay["params"])
    assert any(names[id(p)] == "wte.weight" for p in decay["params"])


def test_the_schedule_is_torchs_warmup_then_cosine_and_skips_do_not_advance_it(corpus):
    config = replace(TINY, steps=12, warmup=3, eval_every=12)
    run = Run("fp32", corpus, config)
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=config.lr)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, 1 / 3, 1.0, 3),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, 9, config.lr / 10),
        ],
        [3],
    )
    for _ in range(config.steps):
        assert run.optimizer.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
        run.train(1)
        opt.step()
        sched.step()
    skipping = Run("fp32", corpus, config)
    lr = skipping.optimizer.param_groups[0]["lr"]
    skipping.scaler.step = lambda optimizer: False  # every step found inf: none taken
    skipping.train(3)
    assert skipping.optimizer.param_groups[0]["lr"] == lr


def test_fp16_everywhere_runs_layer_norm_in_float16_where_autocast_would_not():
    x = minimp.tensor(np.ones((2, 8), np.float32))
    with autocast(minimp.float16):
        assert layer_norm(x, 8).dtype == minimp.float32
    with autocast(minimp.float16, float32_list=False):
        assert layer_norm(x, 8).dtype == minimp.float16


def test_bad_workloads_are_refused_by_name(corpus):
    with pytest.raises(TypeError, match="CharCorpus"):
        Run("fp32", data.load_digits(), TINY)
    with pytest.raises(ValueError, match="block_size"):
        Run("fp32", data.load_shakespeare(16), TINY)
    with pytest.raises(TypeError, match="Dataset"):
        Run("fp32", corpus, TrainConfig())
    with pytest.raises(ValueError, match="accumulate"):
        TrainConfig(accumulate=2)
    with pytest.raises(NotImplementedError, match="schedule"):
        Run("fp32", corpus, TINY).save("/tmp/never.npz")
