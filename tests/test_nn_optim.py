"""Modules and optimizers: PyTorch's initialisation and update rules, and the
float16 weight that loses small updates."""

import numpy as np
import pytest
import torch

import minimp
import minimp.functional as F
from minimp import nn, optim


def test_linear_initialisation_is_torchs_uniform_and_reproducible():
    a = nn.Linear(64, 8, generator=np.random.default_rng(0))
    b = nn.Linear(64, 8, generator=np.random.default_rng(0))
    assert a.weight.shape == (8, 64) and a.bias.shape == (8,)
    assert np.array_equal(a.weight.numpy(), b.weight.numpy())
    bound = 1 / np.sqrt(64)
    assert np.abs(a.weight.numpy()).max() <= bound
    assert np.abs(a.weight.numpy()).max() > 0.9 * bound  # uses the whole range
    half = nn.Linear(64, 8, dtype="float16", generator=np.random.default_rng(0))
    assert np.array_equal(half.weight.numpy(), a.weight.numpy().astype(np.float16))


def test_mlp_parameters_and_in_place_conversion():
    model = nn.MLP([4, 8, 3], generator=np.random.default_rng(0))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    params = model.parameters()
    model.half()
    assert [p is q for p, q in zip(params, model.parameters(), strict=True)] == [True] * 4
    assert all(p.dtype == minimp.float16 for p in params)
    assert model(minimp.tensor(np.ones((2, 4)), dtype="float16")).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown activation"):
        nn.MLP([4, 3], activation="swish")


def _train_against_torch(make_ours, make_theirs, steps=5):
    """Drive minimp and PyTorch with the same float32 model, data and optimizer."""
    rng = np.random.default_rng(0)
    model = nn.MLP([6, 8, 3], generator=rng)
    reference = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            q.copy_(torch.from_numpy(p.numpy().copy()))
    ours, theirs = make_ours(model.parameters()), make_theirs(reference.parameters())
    for _ in range(steps):
        x = rng.standard_normal((16, 6)).astype(np.float32)
        y = rng.integers(0, 3, 16)
        ours.zero_grad()
        F.cross_entropy(model(minimp.tensor(x)), y).backward()
        ours.step()
        theirs.zero_grad()
        torch.nn.functional.cross_entropy(
            reference(torch.from_numpy(x)), torch.from_numpy(y)
        ).backward()
        theirs.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_sgd_with_momentum_and_weight_decay_matches_pytorch():
    _train_against_torch(
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
    )


def test_adam_matches_pytorch():
    _train_against_torch(
        lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    )


def test_a_float16_weight_loses_updates_below_half_its_ulp():
    """ulp(1.0) in float16 is 2^-10: an update of 2^-12 (a quarter ulp) is rounded away,
    one of 2^-10 is kept (Micikevicius et al. 2018, sec. 3.1)."""
    for dtype, lost in [(minimp.float16, True), (minimp.float32, False)]:
        w = minimp.tensor([1.0], dtype=dtype, requires_grad=True)
        opt = optim.SGD([w], lr=1.0)
        w.grad = minimp.tensor([2.0**-12], dtype=dtype)
        opt.step()
        assert (w.item() == 1.0) == lost
    w = minimp.tensor([1.0], dtype="float16", requires_grad=True)
    w.grad = minimp.tensor([2.0**-10], dtype="float16")
    optim.SGD([w], lr=1.0).step()
    assert w.item() == 1.0 - 2.0**-10


def test_optimizer_state_keeps_the_parameter_dtype():
    w = minimp.tensor([1.0, 2.0], dtype="float16", requires_grad=True)
    w.grad = minimp.tensor([0.5, 0.5], dtype="float16")
    opt = optim.Adam([w])
    opt.step()
    state = opt.state[id(w)]
    assert state["exp_avg"].dtype == np.float16 and w.dtype == minimp.float16


def test_optimizer_errors():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="requires_grad"):
        optim.SGD([minimp.tensor([1.0])], lr=0.1)
    w = minimp.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="lr must be"):
        optim.SGD([w], lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([w], betas=(0.9, 1.0))


def test_a_deep_copied_optimizer_updates_the_copied_parameters_with_its_state():
    import copy

    w = minimp.tensor(np.ones(3, np.float32), requires_grad=True)
    opt = optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = minimp.tensor(np.ones(3, np.float32))
    opt.step()
    twin_w, twin_opt = copy.deepcopy((w, opt))
    assert set(twin_opt.state) == {id(twin_w)}
    for p, o in ((w, opt), (twin_w, twin_opt)):
        p.grad = minimp.tensor(np.ones(3, np.float32))
        o.step()
    assert twin_w.numpy().tobytes() == w.numpy().tobytes()
    assert twin_opt.state[id(twin_w)]["momentum_buffer"] is not opt.state[id(w)]["momentum_buffer"]


# ---- the transformer's modules (issue 13) ------------------------------------------


def test_embedding_and_layernorm_initialise_as_torch_and_compute_as_torch():
    emb = nn.Embedding(1000, 16, generator=np.random.default_rng(0))
    again = nn.Embedding(1000, 16, generator=np.random.default_rng(0))
    assert np.array_equal(emb.weight.numpy(), again.weight.numpy())
    w = emb.weight.numpy()
    assert abs(w.mean()) < 0.03 and abs(w.std() - 1) < 0.02  # N(0, 1), 16000 draws
    assert [name for name, _ in emb.named_parameters()] == ["weight"]

    ln = nn.LayerNorm(16)
    reference = torch.nn.LayerNorm(16)
    assert [n for n, _ in ln.named_parameters()] == [n for n, _ in reference.named_parameters()]
    for (_, p), (_, q) in zip(ln.named_parameters(), reference.named_parameters(), strict=True):
        assert np.array_equal(p.numpy(), q.detach().numpy())
    idx = np.array([[3, 999, 3]])
    x = ln(emb(idx))
    expected = reference(torch.nn.functional.embedding(torch.tensor(idx), torch.tensor(w)))
    np.testing.assert_allclose(x.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert nn.LayerNorm(4, bias=False).bias is None
    assert nn.LayerNorm(4, elementwise_affine=False).parameters() == []


def test_gelu_module_and_dropout_follow_train_and_eval():
    x = minimp.tensor(np.linspace(-3, 3, 7))
    for approximate in ("none", "tanh"):
        expected = torch.nn.GELU(approximate)(torch.tensor(x.numpy())).numpy()
        # atol: torch's CPU kernel forms 1 + erf(x/sqrt 2), which cancels for x << 0
        # (4e-5 relative at x = -3); minimp's erfc form is accurate there
        np.testing.assert_allclose(nn.GELU(approximate)(x).numpy(), expected, rtol=1e-6, atol=3e-7)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")

    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5, generator=np.random.default_rng(0)))
    ones = minimp.tensor(np.ones((50, 4)))
    assert (model(ones).numpy() == 0).any()
    model.eval()
    assert not model.training and not model[1].training
    assert not (model(ones).numpy() == 0).any()
    model.train()
    assert model[1].training
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(2.0)


def test_named_parameters_walk_lists_of_modules_with_torchs_names():
    class Block(nn.Module):
        def __init__(self):
            self.ln = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 4)

    class Net(nn.Module):
        def __init__(self):
            self.wte = nn.Embedding(5, 4)
            self.blocks = [Block(), Block()]

    class TorchBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = torch.nn.LayerNorm(4)
            self.fc = torch.nn.Linear(4, 4)

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(5, 4)
            self.blocks = torch.nn.ModuleList([TorchBlock(), TorchBlock()])

    net = Net()
    assert list(net.state_dict()) == list(TorchNet().state_dict())
    net.eval()
    assert not net.blocks[1].ln.training


def test_named_modules_names_every_module_once_as_named_parameters_does():
    """As torch's: the model itself as "", then each sub-module, depth first, a module
    reached twice listed once; a layer's name is the prefix of its parameters' names."""
    shared = nn.Linear(4, 4, generator=np.random.default_rng(0))
    model = nn.Sequential(shared, nn.ReLU(), nn.Sequential(shared, nn.Tanh()))
    named = list(model.named_modules())
    assert [n for n, _ in named] == ["", "layers.0", "layers.1", "layers.2", "layers.2.layers.1"]
    assert named[1][1] is shared
    mlp = nn.MLP([4, 8, 2], generator=np.random.default_rng(0))
    prefixes = {name.rsplit(".", 1)[0] for name, _ in mlp.named_parameters()}
    assert prefixes == {n for n, m in mlp.named_modules() if isinstance(m, nn.Linear)}
