"""Differential testing against PyTorch on the CPU: one helper every op test calls.

Tolerances live in one table. float32: minimp and PyTorch compute the same
formulas in float32, and differ only in summation order and libm last bits, so
rtol is a few float32 ulps. float16: both compute in float32 and round once, so
a result can differ by one float16 ulp (rtol 2^-10) when the two float32 values
straddle a rounding boundary; results of cancellation (matmul, sums, softmax
backward) carry float32 error that the final rounding keeps, hence an atol
scaled to the largest magnitude involved. bfloat16: the same argument with
bfloat16's 8 significant bits (one ulp is 2^-7 relative).

An op that needs more than that gets an entry in ``OP_TOLERANCE``, with the reason,
so every tolerance lives here. None does so far: embedding, layer_norm, gelu (both
forms), masked_fill, where, dropout, split, view and the 4-d softmax and matmul of
attention all agree with PyTorch to one ulp in float16 and bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

import minimp

TORCH_DTYPES = {
    minimp.float16: torch.float16,
    minimp.float32: torch.float32,
    minimp.bfloat16: torch.bfloat16,
}

# (rtol, atol relative to max |expected|) per dtype.
TOLERANCE = {
    minimp.float32: (1e-5, 1e-6),
    minimp.float16: (2.0**-10, 2.0**-11),
    minimp.bfloat16: (2.0**-7, 2.0**-8),
}

# Per op, where the default above is not enough: {op name: a table like TOLERANCE}.
OP_TOLERANCE: dict[str, dict] = {}

# A whole network in float16: the engines round intermediate values in different
# places (PyTorch's float16 cross_entropy rounds log_softmax to float16 before
# nll_loss; minimp fuses them in float32), and a one-ulp difference in a logit's
# gradient is carried through two more matmuls. float32 stays tight.
NETWORK_TOLERANCE = {
    minimp.float32: (1e-5, 1e-6),
    minimp.float16: (2.0**-8, 2.0**-8),
}


def assert_close(
    actual: np.ndarray, expected: np.ndarray, dtype, what: str = "", table=TOLERANCE
) -> None:
    rtol, atol = table[dtype]
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol * scale, err_msg=what
    )


def check_op(
    minimp_fn: Callable[..., minimp.Tensor],
    torch_fn: Callable[..., torch.Tensor],
    inputs: Sequence[np.ndarray],
    dtype,
    seed: int = 0,
    table=TOLERANCE,
) -> None:
    """Run the same op in minimp and PyTorch on the same (rounded) inputs; compare the
    output, its dtype and every input's gradient under a random upstream gradient."""
    ours = [minimp.tensor(x, dtype=dtype, requires_grad=True) for x in inputs]
    theirs = [
        torch.tensor(t.numpy().astype(np.float32)).to(TORCH_DTYPES[dtype]).requires_grad_()
        for t in ours
    ]
    out = minimp_fn(*ours)
    expected = torch_fn(*theirs)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected {dtype}"
    assert out.shape == tuple(expected.shape)
    assert_close(out.numpy(), expected.detach().float().numpy(), dtype, "forward", table)

    upstream = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
    upstream = minimp.tensor(upstream, dtype=dtype)
    out.backward(upstream)
    expected.backward(torch.tensor(upstream.numpy().astype(np.float32)).to(TORCH_DTYPES[dtype]))
    for i, (t, r) in enumerate(zip(ours, theirs, strict=True)):
        assert t.grad is not None and t.grad.dtype == dtype, f"grad {i} dtype"
        assert_close(t.grad.numpy(), r.grad.float().numpy(), dtype, f"gradient of input {i}", table)


def random_inputs(shapes: Sequence[tuple[int, ...]], seed: int = 0, positive: bool = False):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    return [np.abs(a) + 0.5 for a in arrays] if positive else arrays
