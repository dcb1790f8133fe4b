"""The baselines train the same network as minimp: the hand-written NumPy step bit for
bit (fp32 and mixed, scale trajectory included), PyTorch to float32 rounding.

minimp's side is built here from its parts (nn.MLP, optim.SGD, amp.MasterWeights,
amp.GradScaler, F.cross_entropy), the loop of ``minimp.train`` written out, so these
tests depend on the engine and not on the training or benchmark modules.
"""

import itertools
import sys

import numpy as np
import pytest

import minimp
import minimp.functional as F
from minimp import amp, backend, nn, optim
from minimp.tools.baselines import NumpyMLP, TorchMLP, initial_weights, torch_available

needs_torch = pytest.mark.skipif(not torch_available(), reason="needs PyTorch")
CATEGORIES = {"parameters", "master weights", "gradients", "optimizer state", "activations"}

SIZES = (16, 32, 32, 4)
STEPS = 20
# Tolerances of each comparison. The NumPy step makes the same float32 operations
# in the same order as minimp's engine (the same BLAS calls on the same layouts, the
# same roundings to float16), so on the CPU it must agree bit for bit: a tolerance
# would hide a step that does different arithmetic. PyTorch has its own BLAS and
# kernels: the summation order differs, by a few float32 ulps per step.
TORCH_FP32_RTOL = 1e-5  # losses and weights after STEPS steps (measured: ~2e-7)


def make_batches(n=4, batch=32, sizes=SIZES, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((batch, sizes[0]), dtype=np.float32),
            rng.integers(0, sizes[-1], batch),
        )
        for _ in range(n)
    ]


def train_minimp(batches, precision, steps=STEPS, sizes=SIZES, device="cpu", **scaler):
    """minimp's regime ``fp32`` or ``mixed-dynamic`` (as ``minimp.train.Run.train``):
    losses, the scale each step used, which steps were skipped, the final float32 weights."""
    mixed = precision == "mixed"
    model = nn.MLP(sizes, "relu", device=device, generator=np.random.default_rng(0))
    model.to("float16" if mixed else "float32")
    masters = amp.MasterWeights(model) if mixed else None
    opt = optim.SGD(masters.parameters() if mixed else model.parameters(), lr=0.05, momentum=0.9)
    scaler = amp.GradScaler(**scaler, enabled=mixed)
    dtype = "float16" if mixed else "float32"
    losses = []
    for step in range(steps):
        x, y = batches[step % len(batches)]
        logits = model(minimp.tensor(x, dtype=dtype, device=device))
        loss = F.cross_entropy(logits.float() if mixed else logits, y)
        scaler.scale(loss).backward()
        if mixed:
            masters.copy_grads_to_masters()
        scaler.step(opt)
        scaler.update()
        if mixed:
            masters.copy_masters_to_model()
        opt.zero_grad()
        model.zero_grad()
        losses.append(loss.item())
    weights = masters.state_dict() if mixed else model.state_dict()
    history = scaler.history_arrays() if mixed else {"scale": [], "skipped": []}
    return losses, list(history["scale"]), list(history["skipped"]), weights


def train_baseline(baseline, steps=STEPS):
    """Losses, scales used, skipped steps (the same record as ``train_minimp``)."""
    losses, scales, skipped = [], [], []
    for _ in range(steps):
        scales.append(baseline.loss_scale)
        baseline()
        losses.append(baseline.loss_value())
        skipped.append(baseline.found_inf)
    return losses, scales, skipped


@pytest.mark.parametrize("precision", ["fp32", "mixed"])
def test_numpy_step_follows_minimp_bit_for_bit(precision):
    batches = make_batches()
    expected_losses, _, _, expected_weights = train_minimp(batches, precision)
    baseline = NumpyMLP(SIZES, batches, lr=0.05, momentum=0.9, seed=0, precision=precision)
    losses, _, skipped = train_baseline(baseline)
    assert losses == expected_losses and not any(skipped)
    assert losses[-1] < losses[0]
    weights = baseline.state_dict()
    assert list(weights) == list(expected_weights)
    for name, w in expected_weights.items():
        assert weights[name].dtype == np.float32
        assert weights[name].tobytes() == w.tobytes(), name


def test_mixed_differs_from_fp32():
    """The mixed step really computes in float16: its losses are not fp32's."""
    batches = make_batches()
    fp32 = train_baseline(NumpyMLP(SIZES, batches, precision="fp32"), steps=3)[0]
    mixed = train_baseline(NumpyMLP(SIZES, batches, precision="mixed"), steps=3)[0]
    assert fp32 != mixed and fp32 == pytest.approx(mixed, rel=1e-2)


def test_dynamic_scale_backs_off_skips_and_grows_as_minimps():
    """From 2^30 every gradient overflows float16: the scale halves, each such step is
    skipped, then it grows after ``growth_interval`` clean steps and overflows again."""
    batches = make_batches()
    settings = dict(init_scale=2.0**30, growth_interval=3)
    expected = train_minimp(batches, "mixed", steps=30, **settings)
    baseline = NumpyMLP(SIZES, batches, precision="mixed", **settings)
    losses, scales, skipped = train_baseline(baseline, steps=30)
    assert scales == expected[1] and skipped == expected[2]
    assert losses == expected[0]
    assert skipped[:5] == [True] * 5 and scales[:3] == [2.0**30, 2.0**29, 2.0**28]
    assert any(b > a for a, b in itertools.pairwise(scales))  # grew again
    assert sum(skipped) > 10  # backed off again after growing
    for name, w in expected[3].items():
        assert baseline.state_dict()[name].tobytes() == w.tobytes(), name


def test_memory_counts_the_arrays_of_a_step():
    sizes, batch = (8, 16, 4), 5
    n_params = 8 * 16 + 16 + 16 * 4 + 4
    inputs_and_hidden = batch * 8 + batch * 16  # each layer's input, kept for backward
    logp = 4 * batch * 4  # float32 log-probabilities, (batch, classes)
    batches = make_batches(n=2, batch=batch, sizes=sizes)
    fp32 = NumpyMLP(sizes, batches, precision="fp32").memory()
    assert fp32 == {
        "parameters": 4 * n_params,
        "master weights": 0,
        "gradients": 4 * n_params,
        "optimizer state": 4 * n_params,
        "activations": 4 * inputs_and_hidden + logp,
    }
    mixed = NumpyMLP(sizes, batches, precision="mixed").memory()
    assert mixed == {
        "parameters": 4 * n_params,  # float16 values, held widened for the CPU's BLAS
        "master weights": 4 * n_params,
        "gradients": 4 * n_params,
        "optimizer state": 4 * n_params,
        "activations": 2 * inputs_and_hidden + logp,  # float16 activations
    }


def test_interface():
    batches = make_batches(n=3)
    baseline = NumpyMLP(SIZES, batches, precision="mixed")
    assert baseline.name == "numpy mixed"
    assert all(x.dtype == np.float16 for x, _, _ in baseline.batches)  # converted once
    with pytest.raises(RuntimeError, match="no step"):
        baseline.loss_value()
    loss = baseline()
    assert float(loss) == baseline.loss_value() > 0
    assert NumpyMLP(SIZES, batches).name == "numpy fp32"
    first = initial_weights(SIZES, seed=0)
    assert [w.shape for w, _ in first] == [(32, 16), (32, 32), (4, 32)]
    assert np.array_equal(NumpyMLP(SIZES, batches).state_dict()["layers.2.weight"], first[1][0])
    with pytest.raises(ValueError, match="precision"):
        NumpyMLP(SIZES, batches, precision="fp16")
    with pytest.raises(ValueError, match="does not fit"):
        NumpyMLP((8, 4), batches)
    with pytest.raises(TypeError, match="integer class"):
        NumpyMLP(SIZES, [(batches[0][0], batches[0][1].astype(np.float32))])


# ---- PyTorch ------------------------------------------------------------------------------


@pytest.fixture
def one_torch_thread():
    """These networks are tiny: PyTorch's thread pool only waits on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_torch
def test_torch_fp32_agrees_with_numpy_fp32(one_torch_thread):
    batches = make_batches()
    theirs = TorchMLP(SIZES, batches, lr=0.05, momentum=0.9, seed=0, precision="fp32")
    ours = NumpyMLP(SIZES, batches, lr=0.05, momentum=0.9, seed=0, precision="fp32")
    assert theirs.name == "torch fp32"
    assert all(
        np.array_equal(a, b)
        for a, b in zip(theirs.state_dict().values(), ours.state_dict().values(), strict=True)
    )  # the same initial weights
    torch_losses = train_baseline_losses(theirs)
    numpy_losses = train_baseline_losses(ours)
    np.testing.assert_allclose(torch_losses, numpy_losses, rtol=TORCH_FP32_RTOL)
    for name, w in ours.state_dict().items():
        np.testing.assert_allclose(theirs.state_dict()[name], w, rtol=TORCH_FP32_RTOL, atol=1e-6)


def train_baseline_losses(baseline, steps=STEPS):
    losses = []
    for _ in range(steps):
        baseline()
        losses.append(baseline.loss_value())
    return losses


@needs_torch
def test_torch_amp_trains(one_torch_thread):
    import torch

    batches = make_batches()
    amp_step = TorchMLP(SIZES, batches, precision="amp")
    assert amp_step.name == "torch amp"
    loss = amp_step()
    assert torch.is_tensor(loss) and loss.dtype == torch.float32
    assert amp_step.batches[0][0].dtype == torch.float16
    losses = [amp_step.loss_value(), *train_baseline_losses(amp_step, steps=STEPS - 1)]
    assert np.mean(losses[-4:]) < losses[0] - 0.05
    # The same float16 training as NumpyMLP's, its roundings placed differently
    # (float32 masters from the start, the bias added in float16, its own kernels).
    mixed = train_baseline_losses(NumpyMLP(SIZES, batches, precision="mixed"))
    np.testing.assert_allclose(losses, mixed, rtol=1e-3)
    growing = TorchMLP(SIZES, batches, precision="amp", init_scale=4.0, growth_interval=2)
    train_baseline_losses(growing, steps=4)
    assert growing.scaler.get_scale() == 16.0


@needs_torch
@pytest.mark.parametrize("precision", ["fp32", "amp"])
def test_torch_memory(precision, one_torch_thread):
    sizes, batch = (8, 16, 4), 5
    n_params = 8 * 16 + 16 + 16 * 4 + 4
    batches = make_batches(n=2, batch=batch, sizes=sizes)
    memory = TorchMLP(sizes, batches, precision=precision).memory()
    numpy_memory = NumpyMLP(sizes, batches, precision="fp32" if precision == "fp32" else "mixed")
    assert set(memory) == CATEGORIES
    amp_ = precision == "amp"
    assert memory["parameters"] == (2 if amp_ else 4) * n_params
    assert memory["master weights"] == (4 * n_params if amp_ else 0)
    assert memory["gradients"] == memory["optimizer state"] == 4 * n_params
    # What any implementation keeps (inputs, hidden layers, log-probabilities), plus
    # PyTorch's int64 targets and nll_loss's total weight.
    assert memory["activations"] == numpy_memory.memory()["activations"] + 8 * batch + 4


def test_torch_missing_is_said_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    assert not torch_available()
    with pytest.raises(ImportError, match="TorchMLP needs PyTorch"):
        TorchMLP(SIZES, make_batches(n=1))


# ---- on a GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "mixed"])
def test_cupy_step_follows_minimp_on_the_gpu(precision):
    """The same step with CuPy arrays; cuBLAS may sum in another order than minimp's
    calls, so compared to rounding: float32's, or float16's for mixed."""
    batches = make_batches()
    expected_losses, _, _, expected_weights = train_minimp(batches, precision, device="cuda")
    baseline = NumpyMLP(SIZES, batches, precision=precision, device="cuda")
    assert baseline.name == f"cupy {precision}"
    losses = train_baseline(baseline)[0]
    rtol = 1e-5 if precision == "fp32" else 1e-3
    np.testing.assert_allclose(losses, expected_losses, rtol=rtol)
    for name, w in baseline.state_dict().items():
        np.testing.assert_allclose(w, expected_weights[name], rtol=rtol, atol=rtol)
    assert set(baseline.memory()) == CATEGORIES
