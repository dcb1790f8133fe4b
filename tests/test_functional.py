"""Every op's forward and gradient against PyTorch on the CPU, in float32 and float16."""

import numpy as np
import pytest
import torch
from oracle import (
    NETWORK_TOLERANCE,
    OP_TOLERANCE,
    TOLERANCE,
    TORCH_DTYPES,
    assert_close,
    check_op,
    random_inputs,
)

import minimp
import minimp.functional as F
from minimp import backend

DTYPES = [minimp.float32, minimp.float16]
WITH_BF16 = {**TORCH_DTYPES, minimp.bfloat16: torch.bfloat16}

# name: (minimp op, PyTorch op, input shapes, inputs must be positive)
OPS = {
    "add": (lambda a, b: a + b, lambda a, b: a + b, [(4, 5), (4, 5)], False),
    "add_broadcast": (lambda a, b: a + b, lambda a, b: a + b, [(4, 5), (5,)], False),
    "add_broadcast_keepdim": (lambda a, b: a + b, lambda a, b: a + b, [(4, 5), (4, 1)], False),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, [(3, 1, 5), (4, 5)], False),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, [(4, 5), (1, 5)], False),
    "div": (lambda a, b: a / b, lambda a, b: a / b, [(4, 5), (4, 5)], True),
    "neg": (lambda a: -a, lambda a: -a, [(4, 5)], False),
    "scalar_ops": (
        lambda a: (2.0 - a * 3) / 0.5 + 1,
        lambda a: (2.0 - a * 3) / 0.5 + 1,
        [(4, 5)],
        False,
    ),
    "pow": (lambda a: a**2, lambda a: a**2, [(4, 5)], False),
    "matmul": (lambda a, b: a @ b, lambda a, b: a @ b, [(6, 7), (7, 3)], False),
    "matmul_batched": (lambda a, b: a @ b, lambda a, b: a @ b, [(2, 6, 7), (7, 3)], False),
    "linear": (
        F.linear,
        lambda x, w, b: torch.nn.functional.linear(x, w, b),
        [(8, 16), (4, 16), (4,)],
        False,
    ),
    "sum_all": (lambda a: a.sum(), lambda a: a.sum(), [(4, 5)], False),
    "sum_dim": (lambda a: a.sum(1), lambda a: a.sum(1), [(3, 4, 5)], False),
    "sum_keepdim": (
        lambda a: a.sum((0, 2), True),
        lambda a: a.sum((0, 2), True),
        [(3, 4, 5)],
        False,
    ),
    "mean_all": (lambda a: a.mean(), lambda a: a.mean(), [(4, 5)], False),
    "mean_dim": (lambda a: a.mean(-1), lambda a: a.mean(-1), [(4, 5)], False),
    "reshape": (lambda a: a.reshape(5, 4) * 2, lambda a: a.reshape(5, 4) * 2, [(4, 5)], False),
    "transpose": (lambda a: a.T, lambda a: a.T, [(4, 5)], False),
    "transpose_dims": (
        lambda a: a.transpose(0, 2),
        lambda a: a.transpose(0, 2),
        [(2, 3, 4)],
        False,
    ),
    "exp": (F.exp, torch.exp, [(4, 5)], False),
    "log": (F.log, torch.log, [(4, 5)], True),
    "tanh": (F.tanh, torch.tanh, [(4, 5)], False),
    "sigmoid": (F.sigmoid, torch.sigmoid, [(4, 5)], False),
    "relu": (F.relu, torch.relu, [(4, 5)], False),
    "softmax": (F.softmax, lambda a: torch.softmax(a, -1), [(4, 10)], False),
    "softmax_dim0": (lambda a: F.softmax(a, 0), lambda a: torch.softmax(a, 0), [(4, 10)], False),
    "log_softmax": (F.log_softmax, lambda a: torch.log_softmax(a, -1), [(4, 10)], False),
    "mse_loss": (F.mse_loss, torch.nn.functional.mse_loss, [(4, 5), (4, 5)], False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_op_matches_pytorch(name, dtype):
    ours, theirs, shapes, positive = OPS[name]
    check_op(ours, theirs, random_inputs(shapes, positive=positive), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_matches_pytorch(dtype):
    target = np.array([3, 0, 9, 9, 1, 5])
    check_op(
        lambda z: F.cross_entropy(z, target),
        lambda z: torch.nn.functional.cross_entropy(z, torch.tensor(target)),
        random_inputs([(6, 10)]),
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mlp_with_cross_entropy_end_to_end(dtype):
    """A 2-layer MLP: the loss and every parameter's gradient agree with PyTorch."""
    model = minimp.nn.MLP([12, 16, 5], generator=np.random.default_rng(0)).to(dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 12)).astype(np.float32)
    y = rng.integers(0, 5, size=32)

    reference = torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)
    ).to(torch.float16 if dtype == minimp.float16 else torch.float32)
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            q.copy_(torch.tensor(p.numpy().astype(np.float32)))

    loss = F.cross_entropy(model(minimp.tensor(x, dtype=dtype)), y)
    loss.backward()
    xt = torch.tensor(x).to(reference[0].weight.dtype)
    expected = torch.nn.functional.cross_entropy(reference(xt), torch.tensor(y))
    expected.backward()

    assert_close(loss.numpy(), expected.detach().float().numpy(), dtype, "loss", NETWORK_TOLERANCE)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad.dtype == dtype
        assert_close(p.grad.numpy(), q.grad.float().numpy(), dtype, name, NETWORK_TOLERANCE)


def test_float16_matmul_accumulates_in_float32():
    """1 + 2^-11 summed 4096 times: a float16 accumulator would stall at 2048; the
    product is computed with float32 accumulation and rounded once."""
    a = minimp.tensor(np.ones((1, 4096)), dtype=minimp.float16)
    b = minimp.tensor(np.ones((4096, 1)), dtype=minimp.float16)
    assert (a @ b).item() == 4096.0
    s = minimp.tensor(np.ones(4096), dtype=minimp.float16).sum()
    assert s.dtype == minimp.float16 and s.item() == 4096.0


class _NoFloat16Matmul(np.ndarray):
    """An array that fails if anything asks NumPy for a float16 matmul."""

    def __matmul__(self, other):
        assert self.dtype != np.float16 and other.dtype != np.float16, "float16 matmul in NumPy"
        return np.asarray(self) @ np.asarray(other)


def test_float16_matmul_never_runs_in_numpy_float16(monkeypatch):
    """NumPy's float16 matmul has no BLAS (250-300x slower): minimp must never call it.
    Forward and both backward matmuls go through backend.lowp_matmul, which widens first."""
    a, b = (np.ones(s, dtype=np.float16).view(_NoFloat16Matmul) for s in [(3, 4), (4, 2)])
    assert backend.lowp_matmul(a, b, np.float16).dtype == np.float16

    seen = []
    real = backend.lowp_matmul
    monkeypatch.setattr(backend, "lowp_matmul", lambda *args: seen.append(1) or real(*args))
    a = minimp.tensor(np.ones((3, 4)), dtype=minimp.float16, requires_grad=True)
    b = minimp.tensor(np.ones((4, 2)), dtype=minimp.float16, requires_grad=True)
    (a @ b).sum().backward()
    assert len(seen) == 3


@pytest.mark.parametrize("dtype", [minimp.float32, minimp.float16, minimp.bfloat16], ids=str)
def test_relu_on_special_values_is_pytorchs(dtype):
    """NaN passes forward and passes the gradient on; -0, -inf and masked-out infinite
    gradients give 0 (PyTorch's threshold_backward selects, it does not multiply)."""
    x = np.float32([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5, -1.5, 2.0**-20])
    g = np.float32([1, 2, 3, np.inf, -np.inf, np.nan, 7, np.inf, 9])
    a = minimp.tensor(x, dtype=dtype, requires_grad=True)
    y = F.relu(a)
    y.backward(minimp.tensor(g, dtype=dtype))
    t = torch.tensor(x).to(WITH_BF16[dtype]).requires_grad_()
    yt = torch.relu(t)
    yt.backward(torch.tensor(g).to(WITH_BF16[dtype]))
    assert np.array_equal(y.numpy().astype(np.float32), yt.detach().float().numpy(), equal_nan=True)
    assert np.array_equal(a.grad.numpy().astype(np.float32), t.grad.float().numpy(), equal_nan=True)


# ---- bad arguments: each compared with torch; where torch accepts it, so do we ------


def test_a_subnormal_float16_sum_mean_and_loss_are_computed_not_a_crash():
    """A full reduction whose float16 result is subnormal (issue 16, item 1)."""
    x = minimp.tensor([1e-5], dtype=minimp.float16)
    t = torch.tensor([1e-5], dtype=torch.float16)
    for ours, theirs in [(x.sum(), t.sum()), (x.mean(), t.mean())]:
        assert ours.dtype == minimp.float16
        assert ours.numpy().view(np.uint16) == theirs.numpy().view(np.uint16)
    target = minimp.tensor([1e-5, 0.0], dtype=minimp.float16)
    loss = F.mse_loss(minimp.tensor([0.0, 0.0], dtype=minimp.float16), target)
    assert (
        loss.item()
        == torch.nn.functional.mse_loss(
            torch.zeros(2, dtype=torch.float16), torch.tensor([1e-5, 0.0], dtype=torch.float16)
        ).item()
    )


def _refusals(ours, theirs):
    """Run both; return (our exception, torch's exception), either None when accepted."""
    out = []
    for f in (ours, theirs):
        try:
            f()
            out.append(None)
        except Exception as err:  # we compare what each raises
            out.append(err)
    return out


X23 = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m, x: m.sum(x, dim=0.5), ["dim", "0.5", "int"]),
        (lambda m, x: m.sum(x, dim=True), ["dim", "True", "int"]),
        (lambda m, x: m.sum(x, dim=(0, 0)), ["dim 0", "more than once"]),
        (lambda m, x: m.sum(x, dim=(0, -2)), ["dim", "more than once"]),
        (lambda m, x: m.mean(x, dim=(1, "a")), ["dim", "'a'", "int"]),
        (lambda m, x: m.sum(x, dim=2), ["dim 2", "range", "-2..1"]),
        (lambda m, x: m.transpose(x, 0, 5), ["dim 5", "range", "-2..1"]),
        (lambda m, x: m.transpose(x, 0.0, 1), ["dim", "0.0", "int"]),
        (lambda m, x: m.softmax(x, dim=(0, 1)), ["softmax", "dim", "(0, 1)", "int"]),
        (lambda m, x: m.log_softmax(x, dim=(0, 1)), ["log_softmax", "dim", "int"]),
    ],
)
def test_bad_dims_are_refused_as_torch_refuses_them_with_a_message(call, words):
    ours, theirs = _refusals(
        lambda: call(F, minimp.tensor(X23)), lambda: call(torch, torch.tensor(X23))
    )
    assert theirs is not None, "torch accepts it: so must we"
    assert isinstance(ours, TypeError | ValueError), repr(ours)
    for word in words:
        assert word in str(ours), (word, str(ours))


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x0, e: m.sum(x0, 0),
        lambda m, x0, e: m.sum(x0, -1),
        lambda m, x0, e: m.mean(x0, 0),
        lambda m, x0, e: m.sum(x0, dim=()),
        lambda m, x0, e: m.softmax(x0, 0),
        lambda m, x0, e: m.log_softmax(x0, -1),
        lambda m, x0, e: m.transpose(x0, 0, -1),
        lambda m, x0, e: m.softmax(e, 1),
        lambda m, x0, e: m.softmax(e, 0),
        lambda m, x0, e: m.log_softmax(e, 1),
        lambda m, x0, e: m.sum(e, 1),
        lambda m, x0, e: m.transpose(m.sum(e, 1), 0, 0),
    ],
)
def test_what_torch_accepts_we_compute_as_torch_does(call):
    """0-d tensors take dim 0 and -1; an empty axis gives an empty softmax; sum over
    dim=() is a full sum (torch's rule)."""
    x0, e = np.float32(3.0), np.zeros((2, 0), np.float32)
    ours = call(F, minimp.tensor(x0, requires_grad=True), minimp.tensor(e, requires_grad=True))
    theirs = call(torch, torch.tensor(x0), torch.tensor(e))
    assert ours.shape == tuple(theirs.shape)
    assert np.array_equal(ours.numpy(), theirs.numpy())


def test_batched_matmul_batch_dims_must_broadcast():
    a, b = np.ones((2, 2, 3), np.float32), np.ones((3, 3, 4), np.float32)
    ours, theirs = _refusals(
        lambda: F.matmul(minimp.tensor(a), minimp.tensor(b)),
        lambda: torch.tensor(a) @ torch.tensor(b),
    )
    assert theirs is not None
    assert isinstance(ours, ValueError), repr(ours)
    assert "(2, 2, 3) @ (3, 3, 4)" in str(ours) and "batch" in str(ours)
    # batch dims that do broadcast work, as torch's
    c = np.ones((1, 3, 4), np.float32)
    out = F.matmul(minimp.tensor(a), minimp.tensor(c))
    assert out.shape == tuple((torch.tensor(a) @ torch.tensor(c)).shape)


@pytest.mark.parametrize("exponent", [0, 0.0, 1, 2, 0.5, -1])
@pytest.mark.parametrize("dtype", [minimp.float32, minimp.float16])
def test_pow_gradient_at_zero_is_torchs(exponent, dtype):
    """d(x^0)/dx is 0 everywhere, x = 0 included (issue 16, item 10)."""
    # -0.0 only for integer exponents: torch computes x ** -0.5 as rsqrt(x), -inf at -0.0
    values = np.array([0.0, 2.0, -3.0] + [-0.0] * (exponent == int(exponent)), np.float32)
    x = minimp.tensor(values, dtype=dtype, requires_grad=True)
    (x**exponent).sum().backward()
    t = torch.tensor(values, dtype=TORCH_DTYPES[dtype], requires_grad=True)
    (t**exponent).sum().backward()
    ours, theirs = x.grad.numpy().astype(np.float32), t.grad.float().numpy()
    assert np.array_equal(ours, theirs, equal_nan=True), (ours, theirs)


# ---- the transformer's ops (issue 13): float32, float16 and bfloat16 against torch ----

ALL_DTYPES = [minimp.float32, minimp.float16, minimp.bfloat16]
TF = torch.nn.functional
INDICES = np.array([[1, 7, 7, 0], [9, 1, 7, 3], [0, 0, 9, 2]])  # repeated rows: a scatter-add
CAUSAL = np.triu(np.ones((5, 5), dtype=bool), k=1)  # True above the diagonal: the future
COND = np.random.default_rng(3).random((4, 5)) < 0.5


def _dropout_mask(shape, p, seed):
    """The mask minimp.functional.dropout draws from default_rng(seed): its contract."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32) >= p


def _minimp_split_sum(x):
    a, b, c = x.split([2, 3, 1], dim=-1)
    return (c * 3).sum() + a.sum(0) * 2 + b.exp().mean()


def _torch_split_sum2(x):
    a, b, c = x.split([2, 3, 1], dim=-1)
    return (c * 3).sum() + a.sum(0) * 2 + b.exp().mean()


def _heads(x, transpose):
    """(B, T, C) -> (B, heads, T, head size) -> scores -> back: what attention does."""
    q = x.view(2, 5, 3, 4).transpose(1, 2)
    scores = q @ transpose(q)
    return (scores @ q).transpose(1, 2).reshape(2, 5, 12)


# name: (minimp op, PyTorch op, input shapes)
TRANSFORMER_OPS = {
    "embedding": (
        lambda w: F.embedding(INDICES, w),
        lambda w: TF.embedding(torch.tensor(INDICES), w),
        [(10, 6)],
    ),
    "layer_norm": (
        lambda x, w, b: F.layer_norm(x, (8,), w, b),
        lambda x, w, b: TF.layer_norm(x, (8,), w, b),
        [(2, 3, 8), (8,), (8,)],
    ),
    "layer_norm_two_dims_no_affine": (
        lambda x: F.layer_norm(x * 3 + 1, [3, 8], eps=1e-3),
        lambda x: TF.layer_norm(x * 3 + 1, [3, 8], eps=1e-3),
        [(2, 3, 8)],
    ),
    "gelu": (lambda x: F.gelu(x * 3), lambda x: TF.gelu(x * 3), [(6, 20)]),
    "gelu_tanh": (
        lambda x: F.gelu(x * 3, approximate="tanh"),
        lambda x: TF.gelu(x * 3, approximate="tanh"),
        [(6, 20)],
    ),
    "masked_fill": (
        lambda x: x.masked_fill(COND, 0.3),
        lambda x: x.masked_fill(torch.tensor(COND), 0.3),
        [(4, 5)],
    ),
    "causal_softmax_4d": (
        lambda x: F.softmax(x.masked_fill(CAUSAL, -np.inf), -1),
        lambda x: torch.softmax(x.masked_fill(torch.tensor(CAUSAL), -np.inf), -1),
        [(2, 3, 5, 5)],
    ),
    "where": (
        lambda a, b: F.where(COND, a, b),
        lambda a, b: torch.where(torch.tensor(COND), a, b),
        [(4, 5), (5,)],
    ),
    "where_scalar": (
        lambda a: F.where(COND, a, 0.0),
        lambda a: torch.where(torch.tensor(COND), a, 0.0),
        [(4, 5)],
    ),
    "dropout": (
        lambda x: F.dropout(x, 0.25, generator=np.random.default_rng(5)),
        lambda x: x * torch.tensor(_dropout_mask((4, 5), 0.25, 5)) / 0.75,
        [(4, 5)],
    ),
    "view": (lambda x: x.view(5, 4) * 2, lambda x: x.view(5, 4) * 2, [(4, 5)]),
    "split": (_minimp_split_sum, _torch_split_sum2, [(4, 6)]),
    "heads_transpose_batched_matmul": (
        lambda x: _heads(x, lambda t: t.transpose(-2, -1)),
        lambda x: _heads(x, lambda t: t.transpose(-2, -1)),
        [(2, 5, 12)],
    ),
    "matmul_4d": (lambda a, b: a @ b, lambda a, b: a @ b, [(2, 3, 5, 4), (2, 3, 4, 6)]),
}


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("name", TRANSFORMER_OPS)
def test_transformer_op_matches_pytorch(name, dtype):
    ours, theirs, shapes = TRANSFORMER_OPS[name]
    table = OP_TOLERANCE.get(name, TOLERANCE)
    # seed=1: an upstream gradient unlike the input (random_inputs uses seed 0); an
    # upstream equal to x is nearly parallel to layer_norm's output, whose gradient
    # then cancels to almost nothing and measures only rounding
    check_op(ours, theirs, random_inputs(shapes), dtype, seed=1, table=table)


def test_split_pieces_are_torchs():
    x = np.arange(14, dtype=np.float32).reshape(2, 7)
    for arg in (3, [2, 5], 7, 10):
        ours = F.split(minimp.tensor(x), arg, dim=1)
        theirs = torch.split(torch.tensor(x), arg, dim=1)
        assert [p.shape for p in ours] == [tuple(t.shape) for t in theirs]
        for p, t in zip(ours, theirs, strict=True):
            assert np.array_equal(p.numpy(), t.numpy())


def test_split_backward_concatenates_and_an_unused_piece_gets_zeros():
    x = minimp.tensor(np.ones((2, 6)), requires_grad=True)
    _, b, c = x.split(2, dim=1)
    (b * 2 + c * 3).sum().backward()
    assert np.array_equal(x.grad.numpy(), np.repeat(np.float32([[0, 0, 2, 2, 3, 3]]), 2, 0))


def test_embedding_scatter_add_accumulates_in_float32():
    """4096 uses of one row with gradient 1.0: the float32 sum is exactly 4096, rounded
    once to float16; a float16 running sum stalls at 2048 (2048 + 1 is a tie, to even).
    (PyTorch's CPU float16 kernel gives 2048: it accumulates in float16; its CUDA kernel
    accumulates in float32, as minimp does.)"""
    w = minimp.tensor(np.zeros((3, 2)), dtype=minimp.float16, requires_grad=True)
    F.embedding(np.zeros(4096, dtype=np.int64), w).sum().backward()
    assert w.grad.dtype == minimp.float16
    assert np.array_equal(w.grad.numpy(), np.float16([[4096, 4096], [0, 0], [0, 0]]))
    float16_running_sum = np.cumsum(np.ones(4096, dtype=np.float16), dtype=np.float16)[-1]
    assert float16_running_sum == 2048


@pytest.mark.parametrize("m, d", [(300.0, 64), (10.0, 1024)])
def test_layer_norm_statistics_in_float32_survive_what_float16_would_not(m, d):
    """Activations of magnitude m in float16: at m = 300 the squares (90000) overflow
    float16; at m = 10 each square (100) and the variance fit, but their sum over
    d = 1024 (102400 > 65504) does. minimp's float32 statistics give torch's result."""
    x = np.full((2, d), m, dtype=np.float32)
    x[:, ::2] = -m
    x[1] += np.random.default_rng(0).standard_normal(d).astype(np.float32)
    x16 = x.astype(np.float16)
    with np.errstate(over="ignore"):
        naive_sum = np.cumsum(x16 * x16, dtype=np.float16)[-1]  # float16 accumulation
    assert np.isinf(naive_sum)
    ours = F.layer_norm(minimp.tensor(x16), (d,))
    theirs = TF.layer_norm(torch.tensor(x16), (d,))
    assert ours.dtype == minimp.float16 and np.isfinite(ours.numpy()).all()
    assert_close(ours.numpy(), theirs.float().numpy(), minimp.float16, "layer_norm")


def test_dropout_identity_seeding_and_scale():
    x = minimp.tensor(np.ones((200, 100)), requires_grad=True)
    assert F.dropout(x, 0.0) is x and F.dropout(x, 0.5, training=False) is x
    a = F.dropout(x, 0.3, generator=np.random.default_rng(1))
    b = F.dropout(x, 0.3, generator=np.random.default_rng(1))
    assert np.array_equal(a.numpy(), b.numpy())
    kept = a.numpy() != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01  # 20000 draws: 4 standard deviations
    assert np.allclose(a.numpy()[kept], np.float32(1) / np.float32(0.7), rtol=0, atol=0)
    a.sum().backward()
    assert np.array_equal(x.grad.numpy(), a.numpy())  # d(x * mask / 0.7)/dx = mask / 0.7
    ones = minimp.tensor(np.ones(8))
    assert np.array_equal(F.dropout(ones, 1.0).numpy(), TF.dropout(torch.ones(8), 1.0).numpy())


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m, x: m.dropout(x, 1.5), ["dropout", "between 0 and 1", "1.5"]),
        (lambda m, x: m.dropout(x, -0.1), ["dropout", "between 0 and 1"]),
        (lambda m, x: m.gelu(x, approximate="fast"), ["gelu", "'none' or 'tanh'", "fast"]),
        (lambda m, x: m.layer_norm(x, (2,)), ["layer_norm", "[2]", "(2, 3)"]),
        (lambda m, x: x.split([1, 1], 1), ["split", "[1, 1]", "sum to 3"]),
        (lambda m, x: m.embedding(_idx(m, [0, 5]), x), ["embedding", "[0, 2)", "5"]),
        (lambda m, x: x.masked_fill(_mask(m, (3, 3)), 0.0), ["masked_fill", "(3, 3)", "(2, 3)"]),
    ],
)
def test_bad_transformer_arguments_are_refused_as_torch_refuses_them(call, words):
    ours, theirs = _refusals(
        lambda: call(F, minimp.tensor(X23)), lambda: call(TF, torch.tensor(X23))
    )
    assert theirs is not None, "torch accepts it: so must we"
    assert isinstance(ours, TypeError | ValueError | IndexError), repr(ours)
    for word in words:
        assert word in str(ours), (word, str(ours))


def _idx(m, values):
    return np.array(values) if m is F else torch.tensor(values)


def _mask(m, shape):
    mask = np.zeros(shape, dtype=bool)
    return mask if m is F else torch.tensor(mask)


def test_masks_must_be_boolean_arrays():
    x = minimp.tensor(X23)
    with pytest.raises(TypeError, match="boolean"):
        x.masked_fill(np.zeros((2, 3)), 0.0)
    with pytest.raises(TypeError, match="float Tensor"):
        F.where(minimp.tensor(X23), x, x)
    with pytest.raises(TypeError, match="must be a Tensor"):
        F.where(np.ones((2, 3), bool), 1.0, 0.0)
