"""Autocast's policy, FP32 master weights, and gradient clipping."""

import numpy as np
import pytest
import torch

import minimp
import minimp.functional as F
from minimp import nn, optim
from minimp.amp import MasterWeights, autocast, policy_table

f16, f32, bf16 = minimp.float16, minimp.float32, minimp.bfloat16

# The output dtype of each minimp op under PyTorch's CUDA autocast(float16), written
# from PyTorch's documented lists (the CPU policy differs, so it is not the oracle):
# matmul/linear are on the float16 list; exp, log, pow, softmax, log_softmax, sum,
# cross_entropy and mse_loss on the float32 list; binary arithmetic promotes to the
# widest input; everything else runs in its input dtype.
CUDA_AUTOCAST_FP16 = [
    # (op, input dtypes, expected output dtype)
    ("matmul", (f32, f32), f16),
    ("matmul", (f16, f32), f16),
    ("linear", (f32, f32, f32), f16),
    ("exp", (f16,), f32),
    ("log", (f16,), f32),
    ("pow", (f16,), f32),
    ("softmax", (f16,), f32),
    ("log_softmax", (f16,), f32),
    ("sum", (f16,), f32),
    ("cross_entropy", (f16,), f32),
    ("mse_loss", (f16, f16), f32),
    ("add", (f16, f32), f32),
    ("mul", (f32, f16), f32),
    ("sub", (f16, f16), f16),
    ("div", (f16, f16), f16),
    ("layer_norm", (f16,), f32),
    ("where", (f16, f32), f32),
    ("embedding", (f32,), f32),
    ("gelu", (f16,), f16),
    ("dropout", (f16,), f16),
    ("masked_fill", (f16,), f16),
    ("split", (f16,), f16),
    ("relu", (f16,), f16),
    ("tanh", (f16,), f16),
    ("sigmoid", (f32,), f32),
    ("mean", (f16,), f16),
    ("reshape", (f16,), f16),
    ("neg", (f32,), f32),
]

CALLS = {
    "matmul": lambda a, b: a @ b,
    "linear": lambda x, w, b: F.linear(x, w, F.mean(b, 0)),
    "exp": F.exp,
    "log": F.log,
    "pow": lambda a: a**2,
    "softmax": F.softmax,
    "log_softmax": F.log_softmax,
    "sum": F.sum,
    "cross_entropy": lambda a: F.cross_entropy(a, [0, 1, 2, 3]),
    "mse_loss": F.mse_loss,
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "sub": lambda a, b: a - b,
    "div": lambda a, b: a / b,
    "relu": F.relu,
    "tanh": F.tanh,
    "sigmoid": F.sigmoid,
    "mean": F.mean,
    "reshape": lambda a: a.reshape(-1),
    "neg": lambda a: -a,
    "layer_norm": lambda a: F.layer_norm(a, (4,)),
    "where": lambda a, b: F.where(np.eye(4, dtype=bool), a, b),
    "embedding": lambda w: F.embedding([0, 3], w),
    "gelu": F.gelu,
    "dropout": lambda a: F.dropout(a, 0.5, generator=np.random.default_rng(0)),
    "masked_fill": lambda a: a.masked_fill(np.eye(4, dtype=bool), 0.0),
    "split": lambda a: a.split(2)[0],
}


@pytest.mark.parametrize(("op", "dtypes", "expected"), CUDA_AUTOCAST_FP16, ids=lambda v: str(v))
def test_autocast_output_dtypes_follow_pytorchs_cuda_policy(op, dtypes, expected):
    inputs = [minimp.tensor(np.full((4, 4), 0.5), dtype=d) for d in dtypes]
    with autocast(f16):
        out = CALLS[op](*inputs)
    assert out.dtype == expected


def test_every_policy_entry_is_tested_and_printable():
    from minimp.amp.autocast import POLICY

    assert set(POLICY) <= {op for op, _, _ in CUDA_AUTOCAST_FP16}
    assert "matmul" in policy_table() and "its input dtype" in policy_table()


def test_autocast_bfloat16_and_nesting():
    a = minimp.tensor(np.ones((2, 2)))
    with autocast(bf16):
        assert (a @ a).dtype == bf16
        with autocast(enabled=False):
            assert (a @ a).dtype == f32
    with pytest.raises(TypeError, match="autocast"):
        a @ minimp.tensor(np.ones((2, 2)), dtype=f16)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        autocast(f32)


def test_autocast_caches_the_cast_of_a_parameter_and_gradients_reach_it_in_float32():
    layer = nn.Linear(3, 2, generator=np.random.default_rng(0))
    x = minimp.tensor(np.ones((4, 3)))
    with autocast(f16) as region:
        y = layer(x) + layer(x)  # the weight is used twice: cast once
        assert len(region._cache) == 2  # the weight and the bias, each cast once
        F.sum(y).backward()
    assert layer.weight.grad.dtype == f32
    np.testing.assert_array_equal(layer.weight.grad.numpy(), np.full((2, 3), 8.0))


def test_autocast_matches_pytorch_on_the_numbers():
    """Forward under autocast equals explicit casts, so the same as PyTorch's rule."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 5)).astype(np.float32), rng.standard_normal((5, 3))
    with autocast(f16):
        ours = (minimp.tensor(x) @ minimp.tensor(w)).numpy()
    expected = (torch.tensor(x).half() @ torch.tensor(w, dtype=torch.float32).half()).numpy()
    np.testing.assert_array_equal(ours, expected)


# ---- master weights ----------------------------------------------------------------


def test_small_updates_are_lost_by_float16_but_kept_by_the_float32_master():
    """1000 updates of 2^-12 to a weight of 1.0: each is a quarter of float16's ulp at
    1.0 (2^-10), below the half-ulp rounding threshold, so the float16 weight never
    moves; the float32 master accumulates all of them (sec. 3.1)."""
    model = nn.Linear(1, 1, bias=False, dtype=f16)
    model.weight.data[...] = 1.0
    pure = optim.SGD(model.parameters(), lr=2.0**-12)

    mixed_model = nn.Linear(1, 1, bias=False, dtype=f16)
    mixed_model.weight.data[...] = 1.0
    masters = MasterWeights(mixed_model)
    mixed = optim.SGD(masters.parameters(), lr=2.0**-12)
    for _ in range(1000):
        for p in (model.weight, mixed_model.weight):
            p.grad = minimp.tensor([[-1.0]], dtype=f16)
        pure.step()
        masters.copy_grads_to_masters()
        mixed.step()
        masters.copy_masters_to_model()
    assert model.weight.item() == 1.0
    assert masters.masters[0].item() == 1.0 + 1000 * 2.0**-12
    assert mixed_model.weight.item() == float(np.float16(1.0 + 1000 * 2.0**-12))


def test_master_weights_show_both_copies_and_their_distance():
    model = nn.MLP([3, 4, 2], generator=np.random.default_rng(0)).half()
    masters = MasterWeights(model)
    assert [m.dtype for m in masters.parameters()] == [f32] * 4
    assert all(d["max_abs"] == 0 for d in masters.distance().values())
    masters.masters[0].data = masters.masters[0].data + 1e-5  # below float16's resolution
    masters.copy_masters_to_model()
    distance = masters.distance()["layers.0.weight"]
    assert 0 < distance["max_abs"] < 2.0**-11 and distance["fraction_differing"] > 0.5
    names = [name for name, _, _ in masters.pairs()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]


def test_master_state_dict_round_trip_and_errors():
    model = nn.MLP([3, 4, 2], generator=np.random.default_rng(0)).half()
    masters = MasterWeights(model)
    state = masters.state_dict()
    state["layers.0.bias"] = state["layers.0.bias"] + 1
    masters.load_state_dict(state)
    assert np.array_equal(model.layers[0].bias.numpy(), state["layers.0.bias"].astype(np.float16))
    with pytest.raises(KeyError, match="missing"):
        masters.load_state_dict({})
    state["layers.0.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="expected float32"):
        masters.load_state_dict(state)


# ---- clipping ------------------------------------------------------------------------


def test_clip_grad_norm_matches_pytorch():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (4,)]]
    ours = [minimp.tensor(np.zeros_like(g), requires_grad=True) for g in grads]
    theirs = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for p, q, g in zip(ours, theirs, grads, strict=True):
        p.grad, q.grad = minimp.tensor(g), torch.tensor(g)
    norm = nn.clip_grad_norm_(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert norm == pytest.approx(float(expected), rel=1e-6)
    for p, q in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-6)


# ---- issue 12: 0-d operands and the cast cache under no_grad ---------------------------

_TORCH_DTYPE = {f16: torch.float16, f32: torch.float32, bf16: torch.bfloat16}


@pytest.mark.parametrize("autocast_dtype", [f16, bf16], ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_0d_operands_follow_torchs_result_type_inside_autocast(op, autocast_dtype):
    """A dimensioned operand's dtype wins over a 0-d one's (torch's result_type), and
    the 0-d value is rounded to it first. The dtype is torch's for all 4 x 3 x 3 x 4
    cases; values at torch.testing's default tolerance for that dtype, because torch's
    CPU kernels for mul and div keep the 0-d operand in float32 (add rounds it, as
    minimp does). Torch's CPU autocast leaves these ops to plain promotion, as CUDA's."""
    fn = {"add": F.add, "sub": F.sub, "mul": F.mul, "div": F.div}[op]
    tfn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[op]
    rng = np.random.default_rng(0)
    for da in (f16, f32, bf16):
        for db in (f16, f32, bf16):
            for shape_a, shape_b in (((4,), ()), ((), (4,)), ((), ()), ((4,), (4,))):
                a = rng.uniform(0.5, 2, shape_a).astype(np.float32) + np.float32(1e-3)
                b = rng.uniform(0.5, 2, shape_b).astype(np.float32) + np.float32(1e-3)
                x, y = minimp.tensor(a, dtype=da), minimp.tensor(b, dtype=db)
                tx = torch.from_numpy(x.numpy().astype(np.float32)).to(_TORCH_DTYPE[da])
                ty = torch.from_numpy(y.numpy().astype(np.float32)).to(_TORCH_DTYPE[db])
                with autocast(dtype=autocast_dtype):
                    out = fn(x, y)
                expected = tfn(tx, ty)
                assert _TORCH_DTYPE[out.dtype] == expected.dtype, (da, db, shape_a, shape_b)
                torch.testing.assert_close(  # torch's CPU mul/div may not round the 0-d
                    torch.from_numpy(out.numpy().astype(np.float32)).to(expected.dtype),
                    expected,
                )


def test_autocast_casts_a_parameter_once_per_region_under_no_grad(monkeypatch):
    """Issue 12, item 4: four Linear calls inside autocast + no_grad cast the weight once."""
    layer = nn.Linear(4, 3, generator=np.random.default_rng(0))
    x = minimp.tensor(np.ones((2, 4), np.float32))
    casts = []
    original = minimp.Tensor.to

    def counting_to(self, target):
        casts.append(id(self))
        return original(self, target)

    monkeypatch.setattr(minimp.Tensor, "to", counting_to)
    with autocast(), minimp.no_grad():
        outs = [layer(x) for _ in range(4)]
    assert casts.count(id(layer.weight)) == 1 and casts.count(id(layer.bias)) == 1
    assert all(np.array_equal(o.numpy(), outs[0].numpy()) for o in outs)
    casts.clear()
    with autocast():  # with grad, a new region casts again, and the graph still reaches w
        layer(x).sum().backward()
    assert casts.count(id(layer.weight)) == 1 and layer.weight.grad.dtype == f32
