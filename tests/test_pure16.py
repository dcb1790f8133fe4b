"""Pure 16-bit training without FP32 master weights: the optimizers' ``update_rounding``.

Nearest rounding loses every update below half an ulp; stochastic rounding keeps
it in expectation (Gupta et al. 2015) and Kahan summation keeps it in a 16-bit
carry (Zamirai et al. 2020). The runs here are fixed-seed, so every statistical
tolerance below is a stated bound, not a source of flaky tests.
"""

import json
import math

import numpy as np
import pytest

import minimp
from minimp import backend, checkpoint, nn, optim
from minimp.tensor import compute, round_to_dtype

LOW = [minimp.bfloat16, minimp.float16]
ALL = [minimp.float16, minimp.bfloat16, minimp.float32]
# An update well below half an ulp of 1.0 (bfloat16 2^-9 = 2.0e-3, float16 2^-12 = 2.4e-4).
TINY = {minimp.bfloat16: 1e-4, minimp.float16: 1e-5}
# Spacing of the values in [0.5, 1), where those runs stay: 2^-8 and 2^-11.
ULP_BELOW_1 = {minimp.bfloat16: 2.0**-8, minimp.float16: 2.0**-11}


def _bits(array):
    array = backend.to_numpy(array)
    return array.view(np.dtype(f"uint{8 * array.dtype.itemsize}"))


def _ones(n, dtype):
    return minimp.tensor(np.ones(n), dtype=dtype, requires_grad=True)


def _descend(dtype, n_weights, steps, mode, lr, seed=0):
    """``steps`` SGD steps of lr * grad = lr on weights of 1.0."""
    w = _ones(n_weights, dtype)
    generator = np.random.default_rng(seed) if mode == "stochastic" else None
    opt = optim.SGD([w], lr=lr, update_rounding=mode, generator=generator)
    for _ in range(steps):
        w.grad = minimp.tensor(np.ones(n_weights), dtype=dtype)
        opt.step()
    return w, opt


# ---- nearest: the plain update rounded once, bit for bit --------------------------------


def _reference_sgd(p, g, buf, lr, momentum, weight_decay):
    """The update as optim.SGD computed it before ``update_rounding`` existed."""
    g = compute(g)
    if weight_decay:
        g = g + weight_decay * compute(p)
    if momentum:
        if buf is not None:
            g = momentum * compute(buf) + g
        buf = round_to_dtype(g, p.dtype)
    return round_to_dtype(compute(p) - lr * g, p.dtype), buf


def _reference_adam(p, g, m, v, step, lr, betas, eps, weight_decay, rounded_moments=False):
    """Adam as torch's fused kernel computes it: the update from the float32 moments,
    which are stored rounded afterwards. ``rounded_moments``: the update from the
    rounded ones instead (minimp before issue 12; ``demonstrate_16bit_moments``)."""
    beta1, beta2 = betas
    g = compute(g)
    if weight_decay:
        g = g + weight_decay * compute(p)
    m = compute(m)
    m = m + (1 - beta1) * (g - m)
    v = beta2 * compute(v) + (1 - beta2) * g * g
    m16, v16 = round_to_dtype(m, p.dtype), round_to_dtype(v, p.dtype)
    if rounded_moments:
        m, v = compute(m16), compute(v16)
    step_size = lr / (1 - beta1**step)
    denom = np.sqrt(v) / math.sqrt(1 - beta2**step) + eps
    return round_to_dtype(compute(p) - step_size * (m / denom), p.dtype), m16, v16


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "explicit"])
@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_nearest_is_the_plain_rounded_update(dtype, explicit):
    rng = np.random.default_rng(1)
    start = rng.standard_normal(64)
    grads = [rng.standard_normal(64) * 10.0 ** rng.integers(-6, 1) for _ in range(6)]
    kw = {"update_rounding": "nearest"} if explicit else {}
    w_sgd = minimp.tensor(start, dtype=dtype, requires_grad=True)
    w_adam = minimp.tensor(start, dtype=dtype, requires_grad=True)
    sgd = optim.SGD([w_sgd], lr=0.05, momentum=0.9, weight_decay=1e-2, **kw)
    adam = optim.Adam([w_adam], lr=1e-3, weight_decay=1e-3, **kw)
    p_sgd = p_adam = w_sgd.data.copy()
    buf, m, v = None, np.zeros_like(p_adam), np.zeros_like(p_adam)
    for step, grad in enumerate(grads, start=1):
        g = minimp.tensor(grad, dtype=dtype).data
        w_sgd.grad, w_adam.grad = minimp.tensor(g), minimp.tensor(g)
        sgd.step()
        adam.step()
        p_sgd, buf = _reference_sgd(p_sgd, g, buf, 0.05, 0.9, 1e-2)
        p_adam, m, v = _reference_adam(p_adam, g, m, v, step, 1e-3, (0.9, 0.999), 1e-8, 1e-3)
        assert np.array_equal(_bits(w_sgd.data), _bits(p_sgd))
        assert np.array_equal(_bits(sgd.state[id(w_sgd)]["momentum_buffer"]), _bits(buf))
        assert np.array_equal(_bits(w_adam.data), _bits(p_adam))
        assert np.array_equal(_bits(adam.state[id(w_adam)]["exp_avg"]), _bits(m))
        assert np.array_equal(_bits(adam.state[id(w_adam)]["exp_avg_sq"]), _bits(v))
    assert "compensation" not in sgd.state[id(w_sgd)]


# ---- 1000 updates below half an ulp --------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_nearest_loses_every_small_update(dtype):
    w, _ = _descend(dtype, 1, 1000, "nearest", TINY[dtype])
    assert w.item() == 1.0


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_kahan_keeps_small_updates_in_a_16_bit_carry(dtype):
    """Ends within 3/4 ulp of the float32 run (1 - 1000 * TINY); nearest ends 25 (bf16)
    or 20 (fp16) ulps away. Compensated, the weight is off by what storing the carry in
    16 bits lost: at most half a carry ulp per step (2^-18 for bf16 here, about one
    weight ulp over 1000 steps in the worst case); these errors largely cancel, and
    p + compensation stays within 1/4 ulp (measured: 0.16 ulp for bf16, 0 for fp16).
    The stored weight adds at most the half ulp of rounding p + compensation."""
    reference = _descend(minimp.float32, 1, 1000, "nearest", TINY[dtype])[0].item()
    assert abs(reference - (1 - 1000 * TINY[dtype])) < 1e-4  # float32 keeps the updates
    w, opt = _descend(dtype, 1, 1000, "kahan", TINY[dtype])
    compensation = opt.state[id(w)]["compensation"]
    assert compensation.dtype == dtype and compensation.shape == w.shape
    ulp = ULP_BELOW_1[dtype]
    carried = w.item() + float(compensation[0])
    assert abs(carried - reference) <= ulp / 4
    assert abs(w.item() - reference) <= 3 * ulp / 4


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_stochastic_keeps_small_updates_on_average(dtype):
    """Every weight of 1.0 takes 1000 steps of d = TINY. Each stored value lies on the
    grid of spacing u = ULP_BELOW_1 and d < u, so each step goes down one ulp with
    probability q = d/u and stays otherwise: a weight ends at 1 - K u with K binomial
    (1000, q), mean 1 - 1000 d (unbiased) and standard deviation s = u sqrt(1000 q (1-q))
    (0.020 for bf16, 0.0022 for fp16). The mean of N = 1000 weights must lie within
    5 s / sqrt(N) of the float32 run, plus 1000 * 2^-24 for float32 rounding in both runs
    (each step's exact value is a float32, off by at most 2^-25)."""
    steps, n, d, u = 1000, 1000, TINY[dtype], ULP_BELOW_1[dtype]
    reference = _descend(minimp.float32, 1, steps, "nearest", d)[0].item()
    w = _ones(n, dtype)
    opt = optim.SGD([w], lr=d, update_rounding="stochastic", generator=np.random.default_rng(0))
    for _ in range(steps):
        before = w.numpy().copy()
        w.grad = minimp.tensor(np.ones(n), dtype=dtype)
        opt.step()
        after = w.numpy()
        below = np.nextafter(before, np.zeros(n, dtype))
        assert w.dtype == dtype and np.all((after == before) | (after == below))
    q = d / u
    s = u * math.sqrt(steps * q * (1 - q))
    final = w.numpy().astype(np.float64)
    assert abs(final.mean() - reference) <= 5 * s / math.sqrt(n) + steps * 2.0**-24
    assert 0.5 * s < final.std() < 1.5 * s  # it really is random, with the predicted spread


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_stochastic_rounding_through_the_optimizer_is_unbiased(dtype):
    """One step on 100,000 weights in [1, 2) with updates below half an ulp (nearest
    keeps none of them). Each new value x, computed in float32, lies between its
    neighbours lo < x < hi in the format; a stochastic result is one of them, with
    variance (hi - x)(x - lo). The mean error must be within 5 standard errors of 0."""
    rng = np.random.default_rng(3)
    n, u = 100_000, 2 * ULP_BELOW_1[dtype]  # spacing in [1, 2)
    w0 = minimp.tensor(1 + rng.random(n), dtype=dtype).data
    g = minimp.tensor(rng.uniform(u / 64, u / 4, n), dtype=dtype).data
    exact = (compute(w0) - compute(g)).astype(np.float64)
    lo = np.nextafter(w0, np.zeros(n, dtype)).astype(np.float64)
    hi = w0.astype(np.float64)
    standard_error = np.sqrt(np.sum((hi - exact) * (exact - lo))) / n
    errors = {}
    for mode in ("nearest", "stochastic"):
        w = minimp.tensor(w0, requires_grad=True)
        w.grad = minimp.tensor(g)
        optim.SGD([w], lr=1.0, update_rounding=mode, generator=rng).step()
        result = w.numpy().astype(np.float64)
        assert np.all((result == lo) | (result == hi))
        errors[mode] = np.mean(result - exact)
    assert abs(errors["stochastic"]) <= 5 * standard_error
    assert errors["nearest"] > 100 * standard_error  # every update lost: biased upward


def test_float32_parameters_accept_every_mode_and_get_the_same_update():
    rng = np.random.default_rng(4)
    start, grads = rng.standard_normal(32), rng.standard_normal((5, 32))
    results = {}
    for mode in optim.UPDATE_ROUNDINGS:
        w = minimp.tensor(start, requires_grad=True)
        opt = optim.SGD([w], lr=0.1, momentum=0.9, update_rounding=mode, generator=rng)
        for grad in grads:
            w.grad = minimp.tensor(grad)
            opt.step()
        results[mode] = w.numpy()
    assert np.array_equal(results["stochastic"], results["nearest"])
    assert np.array_equal(results["kahan"], results["nearest"])
    assert not np.any(opt.state[id(w)]["compensation"])


# ---- Adam, moments, determinism ------------------------------------------------------


def _fit_with_adam(dtype, mode, seed=0, steps=300):
    """Adam pulls 64 weights from 1.0 to targets near 0.9 at about lr = 1e-3 per step:
    below half a bfloat16 ulp (2^-9), so nearest cannot move them at all."""
    target = 0.9 + 0.01 * np.random.default_rng(7).standard_normal(64)
    w = _ones(64, dtype)
    generator = np.random.default_rng(seed) if mode == "stochastic" else None
    opt = optim.Adam([w], lr=1e-3, update_rounding=mode, generator=generator)
    for _ in range(steps):
        w.grad = minimp.tensor(w.numpy().astype(np.float64) - target, dtype=dtype)
        opt.step()
    return np.abs(w.numpy().astype(np.float64) - target).mean(), w, opt


@pytest.mark.parametrize("mode", optim.UPDATE_ROUNDINGS)
def test_adam_trains_pure_bfloat16_weights(mode):
    error, w, opt = _fit_with_adam(minimp.bfloat16, mode)
    assert w.dtype == minimp.bfloat16
    assert all(v.dtype == minimp.bfloat16 for v in opt.state[id(w)].values() if hasattr(v, "dtype"))
    assert _fit_with_adam(minimp.float32, "nearest")[0] < 2e-3
    if mode == "nearest":
        assert np.all(w.numpy() == 1.0) and error > 0.09
    else:  # within an ulp (2^-8) of the targets, on average
        assert error < 2.0**-8


@pytest.mark.parametrize("mode", ["stochastic", "kahan"])
def test_only_the_weight_write_changes_moments_stay_nearest(mode):
    rng = np.random.default_rng(5)
    start, grad = rng.standard_normal(256), rng.standard_normal(256)
    states = {}
    for m in ("nearest", mode):
        w_sgd = minimp.tensor(start, dtype="bfloat16", requires_grad=True)
        w_adam = minimp.tensor(start, dtype="bfloat16", requires_grad=True)
        sgd = optim.SGD([w_sgd], lr=0.1, momentum=0.9, update_rounding=m, generator=rng)
        adam = optim.Adam([w_adam], update_rounding=m, generator=rng)
        w_sgd.grad = w_adam.grad = minimp.tensor(grad, dtype="bfloat16")
        sgd.step()
        adam.step()
        states[m] = (sgd.state[id(w_sgd)], adam.state[id(w_adam)])
    for key, index in [("momentum_buffer", 0), ("exp_avg", 1), ("exp_avg_sq", 1)]:
        assert np.array_equal(_bits(states[mode][index][key]), _bits(states["nearest"][index][key]))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_same_seed_gives_the_same_run(name):
    def run(seed):
        if name == "adam":
            return _fit_with_adam(minimp.bfloat16, "stochastic", seed=seed, steps=50)[1].numpy()
        return _descend(minimp.bfloat16, 256, 50, "stochastic", 1e-4, seed=seed)[0].numpy()

    assert np.array_equal(_bits(run(0)), _bits(run(0)))
    assert not np.array_equal(run(0), run(1))


@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.gpu
@pytest.mark.parametrize("mode", optim.UPDATE_ROUNDINGS)
def test_the_gpu_rounds_updates_as_the_cpu_does(mode):
    results = []
    for device in ("cpu", "cuda"):
        rng = np.random.default_rng(6)
        w = minimp.tensor(
            rng.standard_normal(512), dtype="float16", device=device, requires_grad=True
        )
        opt = optim.SGD([w], lr=1e-3, momentum=0.9, update_rounding=mode, generator=rng)
        for _ in range(5):
            w.grad = minimp.tensor(rng.standard_normal(512), dtype="float16", device=device)
            opt.step()
        assert w.device == device
        results.append(w.numpy())
    assert np.array_equal(_bits(results[0]), _bits(results[1]))


# ---- errors and the state dict -------------------------------------------------------


def test_update_rounding_errors():
    w = _ones(2, "bfloat16")
    with pytest.raises(ValueError, match=r"stochastic.*generator=numpy\.random\.default_rng"):
        optim.SGD([w], lr=0.1, update_rounding="stochastic")
    with pytest.raises(ValueError, match=r"stochastic.*generator"):
        optim.Adam([w], update_rounding="stochastic")
    with pytest.raises(ValueError, match="'truncate': use one of nearest, stochastic, kahan"):
        optim.SGD([w], lr=0.1, update_rounding="truncate")
    with pytest.raises(ValueError, match="nearest, stochastic, kahan"):
        optim.Adam([w], update_rounding="Kahan")
    with pytest.raises(TypeError, match=r"numpy\.random\.Generator"):
        optim.SGD([w], lr=0.1, update_rounding="stochastic", generator=0)


def _train(opt, w, grads):
    for grad in grads:
        w.grad = minimp.tensor(grad, dtype=w.dtype)
        opt.step()


@pytest.mark.parametrize("make", [optim.SGD, optim.Adam], ids=["sgd", "adam"])
def test_a_kahan_state_dict_round_trip_continues_bit_for_bit(make):
    rng = np.random.default_rng(8)
    grads = rng.standard_normal((10, 16)) * 1e-3
    kw = {"lr": 1e-3, "momentum": 0.9} if make is optim.SGD else {"lr": 1e-3}
    w = _ones(16, "bfloat16")
    opt = make([w], update_rounding="kahan", **kw)
    _train(opt, w, grads[:5])
    saved = opt.state_dict()
    assert saved["param_groups"][0]["update_rounding"] == "kahan"
    compensation = saved["state"][0]["compensation"]
    assert compensation.dtype == minimp.bfloat16 and np.any(compensation)
    saved["param_groups"] = json.loads(json.dumps(saved["param_groups"]))  # JSON values

    resumed_w = minimp.tensor(w.data, requires_grad=True)
    with pytest.raises(ValueError, match="build the optimizer with update_rounding='kahan'"):
        make([resumed_w], **kw).load_state_dict(saved)  # the rounding is the optimizer's own
    resumed = make([resumed_w], update_rounding="kahan", **kw)
    resumed.load_state_dict(saved)
    saved["state"][0]["compensation"][:] = 0  # the optimizer holds its own copy
    assert resumed.param_groups[0]["update_rounding"] == "kahan"
    _train(opt, w, grads[5:])
    _train(resumed, resumed_w, grads[5:])
    assert np.array_equal(_bits(resumed_w.data), _bits(w.data))
    assert np.array_equal(
        _bits(resumed.state[id(resumed_w)]["compensation"]), _bits(opt.state[id(w)]["compensation"])
    )


def test_a_stochastic_checkpoint_restores_the_generator(tmp_path):
    """The generator state travels in the JSON part of a checkpoint (no pickle), so a
    resumed stochastic run draws the same numbers and continues bit for bit."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    for bit_generator in (np.random.PCG64, np.random.MT19937):  # MT19937's state holds arrays

        def make(seed, bit_generator=bit_generator):
            model = nn.Linear(4, 3, dtype="bfloat16", generator=np.random.default_rng(0))
            generator = np.random.Generator(bit_generator(seed))
            opt = optim.SGD(
                model.parameters(), lr=1e-3, update_rounding="stochastic", generator=generator
            )
            return model, opt

        def train(model, opt, steps):
            for _ in range(steps):
                opt.zero_grad()
                y = model(minimp.tensor(x, dtype="bfloat16"))
                (y * y).sum().backward()
                opt.step()

        model, opt = make(seed=1)
        train(model, opt, 3)
        checkpoint.save(tmp_path / "run.npz", model=model, optimizer=opt)
        resumed_model, resumed_opt = make(seed=2)
        checkpoint.load(tmp_path / "run.npz", model=resumed_model, optimizer=resumed_opt)
        train(model, opt, 3)
        train(resumed_model, resumed_opt, 3)
        for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
            assert np.array_equal(_bits(p.data), _bits(q.data))


def _snapshot(opt):
    saved = opt.state_dict()
    return json.dumps(saved["param_groups"]), {
        (i, k): _bits(v).copy() for i, s in saved["state"].items() for k, v in s.items()
    }


def test_a_bad_state_dict_changes_nothing():
    w = _ones(8, "bfloat16")
    opt = optim.SGD(
        [w], lr=1e-4, momentum=0.9, update_rounding="kahan", generator=np.random.default_rng(0)
    )
    _train(opt, w, np.full((3, 8), 1.0))
    good = opt.state_dict()

    def variant(group=None, state=None):
        bad = opt.state_dict()
        bad["param_groups"][0].update(group or {})
        bad["state"][0].update(state or {})
        return bad

    other_kind = np.random.Generator(np.random.MT19937(0)).bit_generator.state
    bad_dicts = [
        variant(state={"compensation": np.zeros(8, np.float32)}),  # wrong dtype
        variant(state={"compensation": np.zeros(4, good["state"][0]["compensation"].dtype)}),
        variant(group={"update_rounding": "round-half-up"}),
        variant(group={"generator": other_kind, "lr": 0.5}),  # checked before lr is set
    ]
    _train(opt, w, np.full((2, 8), 1.0))  # the state now differs from every bad dict
    before = _snapshot(opt)
    draws = np.random.default_rng(0)
    draws.bit_generator.state = opt.param_groups[0]["generator"].bit_generator.state
    for bad in bad_dicts:
        with pytest.raises(ValueError):
            opt.load_state_dict(bad)
        after = _snapshot(opt)
        assert after[0] == before[0]
        assert all(np.array_equal(after[1][k], before[1][k]) for k in before[1])
    assert np.array_equal(opt.param_groups[0]["generator"].random(4), draws.random(4))

    nearest = optim.SGD([_ones(8, "bfloat16")], lr=1e-4, momentum=0.9)
    stochastic = variant(group={"update_rounding": "stochastic"})
    with pytest.raises(ValueError, match="update_rounding='stochastic'"):
        nearest.load_state_dict(stochastic)  # the rounding (and its generator) is the optimizer's
    assert nearest.param_groups[0]["update_rounding"] == "nearest" and not nearest.state
