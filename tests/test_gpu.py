"""The CPU tests' ops again on CuPy: the GPU must compute what the CPU emulation computes.

Skipped, with the reason, where CuPy or a CUDA GPU is missing.
"""

import numpy as np
import pytest
from oracle import NETWORK_TOLERANCE, assert_close, random_inputs
from test_functional import DTYPES, OPS

import minimp
import minimp.functional as F
from minimp import backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA GPU"),
]


def _run(fn, inputs, dtype, device):
    tensors = [minimp.tensor(x, dtype=dtype, device=device, requires_grad=True) for x in inputs]
    out = fn(*tensors)
    upstream = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    out.backward(minimp.tensor(upstream, dtype=dtype, device=device))
    return out, [t.grad for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_op_on_gpu_matches_the_cpu(name, dtype):
    fn, _, shapes, positive = OPS[name]
    inputs = random_inputs(shapes, positive=positive)
    cpu_out, cpu_grads = _run(fn, inputs, dtype, "cpu")
    gpu_out, gpu_grads = _run(fn, inputs, dtype, "cuda")
    assert gpu_out.device == "cuda" and gpu_out.dtype == cpu_out.dtype
    assert_close(gpu_out.numpy(), cpu_out.numpy(), dtype, "forward")
    for g, c in zip(gpu_grads, cpu_grads, strict=True):
        assert g.device == "cuda" and g.dtype == dtype
        assert_close(g.numpy(), c.numpy(), dtype, "gradient")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_training_step_on_the_gpu_matches_the_cpu(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    results = []
    for device in ("cpu", "cuda"):
        model = minimp.nn.MLP(
            [32, 64, 10], dtype=dtype, device=device, generator=np.random.default_rng(1)
        )
        opt = minimp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(minimp.tensor(x, dtype=dtype, device=device)), y)
            loss.backward()
            opt.step()
        results.append((loss.item(), [p.numpy() for p in model.parameters()]))
    (cpu_loss, cpu_params), (gpu_loss, gpu_params) = results
    assert_close(gpu_loss, cpu_loss, dtype, "loss", NETWORK_TOLERANCE)
    for g, c in zip(gpu_params, cpu_params, strict=True):
        assert_close(g, c, dtype, "parameter", NETWORK_TOLERANCE)
