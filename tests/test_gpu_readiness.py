"""Every CuPy branch, run without a GPU on the counting stand-in (tests/fake_cupy.py),
and what a training step costs a GPU: host syncs, kernel launches, host-to-device copies.

A GPU runs ahead of the host until the host reads a value: each read (a sync) drains
the queue and leaves the GPU idle until Python sends the next kernel. So a step may
read at most one value, the loss scaler's found_inf (it decides on the host whether
the optimizer steps, as PyTorch's GradScaler does), and none at all without a scaler.
Launches are bounded per regime: each costs ~5-10 us of Python and driver overhead,
which at small sizes is the whole step.
"""

import fake_cupy
import numpy as np
import pytest
from oracle import NETWORK_TOLERANCE, assert_close

import minimp
from minimp import backend, data, train

ON_DEVICE = ["fp32", "fp16", "mixed-noscale", "mixed-static", "mixed-dynamic", "amp", "fp8"]
BFLOAT16 = ["bf16", "bf16-sr", "bf16-kahan"]
# The regimes whose step asks the host whether the gradients were finite.
SCALED = {"mixed-static", "mixed-dynamic", "amp"}
# Kernel launches of one step of the digits MLP (64-128-128-10, 3 Linear layers, 6
# parameters, SGD with momentum), counted on the stand-in: the bound a change may
# not exceed. Where they go, for mixed-dynamic: forward 12, loss 18, backward 28,
# gradients to the masters made, checked and unscaled 19 (one product per gradient,
# two for its check, one to gather the flags), SGD in place 24 (4 per parameter),
# masters to the model 6. PyTorch's multi-tensor apply does the unscale and the
# check in one launch and a foreach SGD in about 3, whatever the parameter count:
# minimp's per-parameter 19 + 24 is what a multi-tensor kernel would remove. Before
# the masters' gradients were made in the unscale's pass and SGD updated in place
# (issue 18): fp32 78, mixed-dynamic 119. fp8 pays ~45 launches per cast (6 casts
# forward, 3 backward): the cast itself, its statistics, and the next scale chosen on
# the device instead of read back.
LAUNCHES = {
    "fp32": 72, "fp16": 118, "mixed-noscale": 92, "mixed-static": 107,
    "mixed-dynamic": 107, "amp": 114, "fp8": 519,
}  # fmt: skip


@pytest.fixture
def cupy(monkeypatch):
    return fake_cupy.install(monkeypatch)


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def _step_cost(cupy, run, x, y, measure=False):
    cupy.counters.reset()
    result = run.step(x, y, measure=measure)
    return result, cupy.counters.snapshot()


def test_the_stand_in_is_as_strict_as_cupy(cupy):
    a = cupy.asarray(np.arange(4, dtype=np.float32))
    assert backend.array_module(a) is cupy and backend.device_of(a) == "cuda"
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        a + np.ones(4, np.float32)
    cupy.counters.reset()
    b = (a * 2.0).sum()  # two kernels, no copy: a Python scalar is a kernel argument
    assert cupy.counters.snapshot() == {"launches": 2, "syncs": 0, "h2d": 0}
    assert float(b) == 12.0 and cupy.counters.syncs == 1


@pytest.mark.parametrize("name", ON_DEVICE)
def test_a_training_step_on_the_device_matches_the_cpu(cupy, digits, name):
    """The CuPy branches compute what the CPU computes (to the GPU tolerance: CuPy's
    16-bit matmul rounds its bias in a second step)."""
    runs = [train.Run(name, digits, device=d) for d in ("cpu", "cuda")]
    for step in range(3):
        x, y = runs[0]._batch(step)
        losses = [r.step(*r.to_device(x, y)).loss.item() for r in runs]
    dtype = runs[0].regime.compute_dtype
    assert_close(losses[1], losses[0], dtype, "loss", NETWORK_TOLERANCE)
    for g, c in zip(runs[1].model.parameters(), runs[0].model.parameters(), strict=True):
        assert g.device == "cuda"
        assert_close(g.numpy(), c.numpy(), dtype, "parameter", NETWORK_TOLERANCE)


@pytest.mark.parametrize("name", ON_DEVICE)
def test_a_training_step_reads_at_most_the_scalers_decision(cupy, digits, name):
    run = train.Run(name, digits, device="cuda")
    x, y = run.to_device(*run._batch(0))
    run.step(x, y)  # the first step allocates the optimizer's state
    _, cost = _step_cost(cupy, run, x, y)
    assert cost["syncs"] <= (1 if name in SCALED else 0), cost
    assert cost["h2d"] == 0, cost
    assert cost["launches"] <= LAUNCHES[name], cost
    _, measured = _step_cost(cupy, run, x, y, measure=True)
    assert measured["syncs"] <= cost["syncs"] + 1, measured  # the lost updates: one read


# The lesson-10 GPT's step (2 micro-batches, clipping, AdamW, a warmup and cosine
# schedule), counted on the stand-in as the MLP's above.
GPT_LAUNCHES = {"fp32": 1378, "mixed-dynamic": 1838}


@pytest.mark.parametrize("name", GPT_LAUNCHES)
def test_a_transformer_step_reads_at_most_the_scalers_decision(cupy, name):
    """Found by this test: clip_grad_norm_ converted the device norms to NumPy (a crash
    on a GPU), the causal mask and masked_fill's value were copied to the device at
    every call, and the micro-batches were iterated (read back) instead of indexed."""
    from minimp.train import SHAKESPEARE_GPT

    corpus = data.load_shakespeare(SHAKESPEARE_GPT.gpt.block_size)
    run = train.Run(name, corpus, SHAKESPEARE_GPT, device="cuda")
    x, y = run.to_device(*run._batch(0))
    run.step(x, y)
    _, cost = _step_cost(cupy, run, x, y)
    assert cost["syncs"] <= (1 if name in SCALED else 0), cost
    assert cost["h2d"] == 0, cost
    assert cost["launches"] <= GPT_LAUNCHES[name], cost


@pytest.mark.parametrize("name", BFLOAT16)
def test_bfloat16_regimes_refuse_the_device_by_name(cupy, digits, name):
    """CuPy has no bfloat16 (ml_dtypes' type is host-only): the run says so, and why."""
    with pytest.raises(ValueError, match=r"bfloat16.*device='cpu'"):
        train.Run(name, digits, device="cuda")


def test_stochastic_rounding_draws_its_random_bits_on_the_device(cupy):
    x = cupy.asarray(np.linspace(-1, 1, 1000, dtype=np.float32))
    rng = np.random.default_rng(0)
    cupy.counters.reset()
    rounded = minimp.formats.round_to(x, "float16", rounding="stochastic", rng=rng)
    assert backend.device_of(rounded) == "cuda"
    assert cupy.counters.h2d == 0 and cupy.counters.syncs == 0


def test_the_transformer_trains_on_the_device(cupy):
    """The gpu-check's transformer piece, on the stand-in: the loss falls and each
    step asks the host once, for the scaler's decision (plus the loss it reports)."""
    from minimp.tools import gpu_check

    result = gpu_check.transformer(device="cuda", steps=3)
    assert result["loss_last"] < result["loss_first"]


def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path, capsys, monkeypatch):
    import json

    from minimp.__main__ import main

    monkeypatch.setattr(backend, "_cupy", backend._cupy)
    backend.use_cupy(None)
    assert main(["gpu-check", "--out", str(tmp_path)]) == 0
    assert "NO GPU" in capsys.readouterr().out
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["gpu"] is False and "minimp.gpt" in report["imports"]


def test_gpu_check_runs_every_piece_and_fails_if_one_fails(tmp_path):
    """A failing piece is recorded, the next still runs, and the check then fails."""
    import sys

    from minimp.tools import gpu_check

    commands = [
        ("bad", [sys.executable, "-c", "raise SystemExit(3)"], {}),
        ("slow", [sys.executable, "-c", "import time; time.sleep(5)"], {}),
        ("transformer", [sys.executable, "-c", "print('{\"step_ms_median\": 1.5}')"], {}),
    ]
    results = gpu_check.run_pieces(tmp_path, commands, {"slow": 0.5})
    assert results["bad"]["rc"] == 3 and not results["bad"]["ok"]
    assert results["slow"]["rc"] == "timeout"
    assert results["transformer"]["ok"] and results["transformer"]["numbers"] == {
        "step_ms_median": 1.5
    }
    assert [p[0] for p in gpu_check.pieces(tmp_path)] == [
        "gpu-tests", "lesson", "transformer", "bench"
    ]  # fmt: skip


def test_device_indices_are_checked_on_the_device(cupy):
    """Host targets are checked before they move (a clear error); device targets
    without a read back: an out-of-range class makes the loss NaN, as CUDA's
    device-side assert stops PyTorch's kernel, and the step reads nothing."""
    import minimp.functional as F

    logits = minimp.tensor(np.zeros((2, 3), np.float32), device="cuda", requires_grad=True)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\).*from 0 to 3"):
        F.cross_entropy(logits, np.array([0, 3]))
    cupy.counters.reset()
    good = F.cross_entropy(logits, cupy.asarray(np.array([0, 2])))
    bad = F.cross_entropy(logits, cupy.asarray(np.array([0, 3])))
    assert cupy.counters.syncs == 0
    assert good.item() == pytest.approx(np.log(3)) and np.isnan(bad.item())
    weight = minimp.tensor(np.ones((4, 2), np.float32), device="cuda")
    assert np.isnan(F.embedding(cupy.asarray(np.array([1, 4])), weight).numpy()[1]).all()
    assert not np.isnan(F.embedding(cupy.asarray(np.array([1, 3])), weight).numpy()).any()


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_float16_arithmetic_on_the_device_is_one_kernel_with_the_cpus_bits(cupy, op):
    """Two float16 arrays go to CuPy's float16 kernel (computed in float32, rounded
    once: the same bits as widening first) in one launch; a Python scalar is widened
    instead, so that it joins in float32 as on the CPU."""
    import minimp.functional as F

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((64, 32)).astype(np.float16) for _ in range(2))
    b[0, :4] = [0.0, np.inf, 6e-8, 60000]  # a zero divisor, an inf, a subnormal, near max
    fn = getattr(F, op)
    on_cpu = fn(minimp.tensor(a), minimp.tensor(b)).numpy()
    x, y = (minimp.tensor(v, device="cuda") for v in (a, b))
    cupy.counters.reset()
    on_device = fn(x, y)
    assert cupy.counters.launches == 1
    assert on_device.dtype == minimp.float16
    np.testing.assert_array_equal(on_device.numpy().view(np.uint16), on_cpu.view(np.uint16))
    scalar = fn(x, 0.1).numpy()
    np.testing.assert_array_equal(
        scalar.view(np.uint16), fn(minimp.tensor(a), 0.1).numpy().view(np.uint16)
    )
