"""minimp.fp8: casts bit-exact against ml_dtypes, TE's delayed-scale rule, the fp8
linear op against NumPy on the same fp8 values and against float32 within fp8's
precision, and a small model that still learns."""

import math

import ml_dtypes
import numpy as np
import pytest

import minimp
import minimp.functional as F
from minimp import backend, nn, optim
from minimp.formats import FLOAT8_E4M3FN, FLOAT8_E5M2, round_to
from minimp.fp8 import DelayedScaling, Fp8Linear, TensorScaling, fp8_linear, to_fp8
from minimp.scaling import CurrentScaling, saturation_by_step

FP8 = [FLOAT8_E4M3FN, FLOAT8_E5M2]
ML_DTYPES = {FLOAT8_E4M3FN: ml_dtypes.float8_e4m3fn, FLOAT8_E5M2: ml_dtypes.float8_e5m2}


def oracle_quantize(x, fmt, scale):
    """The cast as ml_dtypes does it: scale, clip (saturate), cast, cast back, unscale."""
    s = np.float32(scale)
    with np.errstate(over="ignore"):
        clipped = (x * s).clip(-fmt.max, fmt.max)
    return clipped.astype(ML_DTYPES[fmt]).astype(np.float32) / s


def scaling_at(fmt, scale, recipe=None):
    scaling = TensorScaling(fmt, recipe)
    history = np.zeros(scaling.recipe.amax_history_len, dtype=np.float32)
    scaling.load_state_dict({"amax_history": history, "scale": scale})
    return scaling


def expected_scale(fmt, amax, margin):
    """TE's fmt.max / amax / 2^margin, rounded down to a power of two (minimp's choice)."""
    return 2.0 ** (math.floor(math.log2(fmt.max / amax)) - margin)


def rounding_error(values, fmt, scale):
    """Largest |q - x| for nearest rounding without saturation: half an ulp, relative
    (2^-4 for e4m3, 2^-3 for e5m2) or, among subnormals, half the smallest one."""
    return np.maximum(np.abs(values) * (fmt.eps / 2), fmt.min_subnormal / 2 / scale)


# ---- the cast ----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2.0**-20, 2.0**-3, 1.0, 2.0**7, 2.0**30])
@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_quantize_matches_ml_dtypes_bit_for_bit(fmt, scale):
    rng = np.random.default_rng(0)
    magnitudes = 2.0 ** rng.uniform(-140, 127, 100_000)
    x = (rng.choice([-1, 1], magnitudes.size) * magnitudes).astype(np.float32)
    x[:4] = [0.0, -0.0, fmt.max / scale, -fmt.min_subnormal / 2 / scale]  # a tie, to even: -0
    scaling = scaling_at(fmt, scale)
    q = scaling.quantize(x)
    expected = oracle_quantize(x, fmt, scale)
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q.view(np.uint32), expected.view(np.uint32))
    # The sample reaches both ends of the format: some values saturate, some flush to 0.
    assert 0 < scaling.last_saturated < 1 and 0 < scaling.last_underflow < 1


@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_overflow_saturates_to_max_instead_of_nan(fmt):
    x = np.array([1e5, -1e6, np.inf, -np.inf, np.nan, 1.0, 0.0], dtype=np.float32)
    assert not np.isfinite(round_to(x[:2], fmt)).any()  # a plain cast overflows
    scaling = scaling_at(fmt, 1.0)
    q = scaling.quantize(x)
    np.testing.assert_array_equal(q, [fmt.max, -fmt.max, fmt.max, -fmt.max, np.nan, 1.0, 0.0])
    assert scaling.last_saturated == 4 / 6  # of the nonzero inputs (NaN included)
    assert scaling.last_underflow == 0.0


# ---- the delayed scale -------------------------------------------------------------


@pytest.mark.parametrize("margin", [0, 2])
@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_scale_follows_the_largest_amax_of_the_history(fmt, margin):
    length = 4
    scaling = TensorScaling(fmt, DelayedScaling(margin=margin, amax_history_len=length))
    amaxes = [3.0, 3.0, 300.0, 3.0, 3.0, 3.0, 3.0, 0.75, 0.75, 0.75, 0.75]
    spike = amaxes.index(300.0)
    window: list[float] = []
    for step, amax in enumerate(amaxes):
        previous = scaling.scale
        q = scaling.quantize(np.float32(amax) * np.array([1.0, -0.5, 0.25], dtype=np.float32))
        assert q[0] == oracle_quantize(np.float32(amax), fmt, previous)  # used the old scale
        window = [amax, *window][:length]
        assert scaling.scale == expected_scale(fmt, max(window), margin), step
        np.testing.assert_array_equal(scaling.amax_history[: len(window)], window)
        if spike <= step < spike + length:  # the spike is remembered for `length` casts...
            assert scaling.scale == expected_scale(fmt, 300.0, margin)
    # ...then forgotten: the scale is back to what the recent values call for.
    assert scaling.scale == expected_scale(fmt, 3.0, margin) * 4


def test_a_spike_arrives_before_its_scale_and_saturates():
    scaling = TensorScaling(FLOAT8_E4M3FN)
    scaling.quantize(np.array([1.0], dtype=np.float32))
    assert scaling.scale == 256.0  # 1 * 256 <= 448 < 1 * 512
    q = scaling.quantize(np.array([100.0], dtype=np.float32))
    assert q[0] == 448.0 / 256 and scaling.last_saturated == 1.0
    assert scaling.scale == 4.0  # the next cast of this tensor fits it


def test_zero_nan_and_inf_amax_keep_the_previous_scale():
    scaling = TensorScaling(FLOAT8_E4M3FN, DelayedScaling(amax_history_len=1))
    scaling.quantize(np.array([3.0, -1.0], dtype=np.float32))
    assert scaling.scale == 128.0
    scaling.quantize(np.zeros(3, dtype=np.float32))
    assert scaling.scale == 128.0 and scaling.last_amax == 0.0
    q = scaling.quantize(np.full(3, np.nan, dtype=np.float32))
    assert np.isnan(q).all() and scaling.scale == 128.0 and scaling.last_amax == 0.0
    scaling.quantize(np.array([np.inf, 1.0], dtype=np.float32))
    assert scaling.scale == 128.0 and scaling.amax_history[0] == np.inf
    scaling.quantize(np.array([0.5], dtype=np.float32))
    assert scaling.scale == 512.0  # a finite amax moves it again


@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_most_recent_follows_the_last_amax_only(fmt):
    """TE's amax_compute_algo="most_recent": the newest entry of the history, so a spike
    sets one scale and is forgotten on the next cast ("max" keeps it for the history)."""
    scaling = TensorScaling(
        fmt, DelayedScaling(amax_history_len=4, amax_compute_algo="most_recent")
    )
    for amax in [3.0, 300.0, 3.0, 0.75]:
        scaling.quantize(np.float32([amax, -amax / 2]))
        assert scaling.scale == expected_scale(fmt, amax, 0)
    np.testing.assert_array_equal(scaling.amax_history, [0.75, 3.0, 300.0, 3.0])


@pytest.mark.parametrize("margin", [0, 1])
@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_current_scaling_fits_each_cast_to_its_own_amax(fmt, margin):
    """TE's Float8CurrentScaling: the scale comes from this cast's amax, before the cast."""
    rng = np.random.default_rng(5)
    scaling = TensorScaling(fmt, CurrentScaling(margin=margin))
    for amax in [1.0, 100.0, 1e-3, 5.0]:
        x = (rng.standard_normal(256) * amax).astype(np.float32)
        scale = expected_scale(fmt, float(np.abs(x).max()), margin)
        q = scaling.quantize(x)
        np.testing.assert_array_equal(
            q.view(np.uint32), oracle_quantize(x, fmt, scale).view(np.uint32)
        )
        assert scaling.last_scale == scaling.scale == scale
        assert scaling.last_saturated == 0.0
    before = scaling.state_dict()
    scaling.quantize(x * 1000, update=False)  # an evaluation still scales, but changes nothing
    assert scaling.state_dict()["scale"] == before["scale"]


def test_delayed_scaling_misses_the_spike_on_its_step_and_current_does_not():
    """A tensor whose amax jumps 100x on step 5: delayed scaling casts it with the scale
    of step 4 and saturates; current scaling measures it first."""
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal(1000).astype(np.float32) for _ in range(10)]
    arrays = [x / np.abs(x).max() for x in arrays]  # amax 1 on every step...
    arrays[5] *= 100  # ...but one
    delayed = saturation_by_step(DelayedScaling(), arrays)
    current = saturation_by_step(CurrentScaling(), arrays)
    assert [step for step, s in enumerate(delayed) if s > 0] == [5]
    assert delayed[5] > 0.5  # most of the spike's values are clipped to 448
    assert not any(current)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DelayedScaling(amax_compute_algo="mean"),
         "amax_compute_algo must be 'max' or 'most_recent', got 'mean'"),
        (lambda: CurrentScaling(margin=-1), "margin must be an int >= 0, got -1"),
    ],
)  # fmt: skip
def test_bad_scaling_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_small_gradients_underflow_in_e5m2_without_a_scale_and_survive_with_one():
    rng = np.random.default_rng(0)
    grad = (rng.choice([-1, 1], 1000) * rng.uniform(0.5, 2.0, 1000) * 1e-6).astype(np.float32)
    assert grad.max() < FLOAT8_E5M2.min_subnormal / 2  # all below e5m2's reach at scale 1

    unscaled = TensorScaling(FLOAT8_E5M2, DelayedScaling(scaling=False))
    for _ in range(3):
        q = unscaled.quantize(grad)
        assert unscaled.scale == 1.0 and not q.any() and unscaled.last_underflow == 1.0

    scaled = TensorScaling(FLOAT8_E5M2)
    scaled.quantize(grad)  # the first cast is at scale 1: it only measures the amax
    assert scaled.last_underflow == 1.0
    q = scaled.quantize(grad)
    assert scaled.scale == expected_scale(FLOAT8_E5M2, float(np.abs(grad).max()), 0)
    assert scaled.last_underflow == 0.0
    assert np.all(np.abs(q - grad) <= np.abs(grad) * FLOAT8_E5M2.eps / 2)


# ---- fp8_linear --------------------------------------------------------------------


def fp8_layer_and_data(x_shape, seed=0):
    """An Fp8Linear(8, 5) whose scalings have seen x, W and g once (so they fit them)."""
    rng = np.random.default_rng(seed)
    layer = Fp8Linear(nn.Linear(8, 5, generator=rng))
    x = rng.standard_normal(x_shape).astype(np.float32)
    g = (rng.standard_normal((*x_shape[:-1], 5)) * 1e-3).astype(np.float32)
    layer(minimp.tensor(x, requires_grad=True)).backward(g)
    layer.zero_grad()
    return layer, x, g


@pytest.mark.parametrize("x_shape", [(6, 8), (2, 3, 8)])
def test_fp8_linear_computes_float32_products_of_the_fp8_values(x_shape):
    layer, x, g = fp8_layer_and_data(x_shape)
    s_x, s_w, s_g = (layer.input_scaling.scale, layer.weight_scaling.scale,
                     layer.grad_scaling.scale)  # fmt: skip
    assert 1.0 not in (s_x, s_w, s_g)  # the warm-up step chose real scales
    w, b = layer.weight.numpy().copy(), layer.bias.numpy().copy()
    xt = minimp.tensor(x, requires_grad=True)
    out = layer(xt)
    out.backward(g)

    xq = oracle_quantize(x, FLOAT8_E4M3FN, s_x)
    wq = oracle_quantize(w, FLOAT8_E4M3FN, s_w)
    gq = oracle_quantize(g, FLOAT8_E5M2, s_g)
    assert out.dtype == minimp.float32
    np.testing.assert_array_equal(out.numpy(), xq @ wq.T + b)
    np.testing.assert_array_equal(xt.grad.numpy(), gq @ wq)
    np.testing.assert_array_equal(
        layer.weight.grad.numpy(), gq.reshape(-1, 5).T @ xq.reshape(-1, 8)
    )
    np.testing.assert_array_equal(layer.bias.grad.numpy(), g.reshape(-1, 5).sum(0))


def test_fp8_linear_is_float32_linear_within_fp8_precision():
    layer, x, g = fp8_layer_and_data((16, 8))
    scales = {"x": layer.input_scaling.scale, "w": layer.weight_scaling.scale,
              "g": layer.grad_scaling.scale}  # fmt: skip
    xt, ref_x = minimp.tensor(x, requires_grad=True), minimp.tensor(x, requires_grad=True)
    w = minimp.tensor(layer.weight.numpy(), requires_grad=True)
    b = minimp.tensor(layer.bias.numpy(), requires_grad=True)
    out, ref = layer(xt), F.linear(ref_x, w, b)
    out.backward(g)
    ref.backward(g)
    assert layer.input_scaling.last_saturated == layer.weight_scaling.last_saturated == 0

    xv, wv = x.astype(np.float64), w.numpy().astype(np.float64)
    ex = rounding_error(xv, FLOAT8_E4M3FN, scales["x"])  # 2^-4 relative
    ew = rounding_error(wv, FLOAT8_E4M3FN, scales["w"])
    eg = rounding_error(g.astype(np.float64), FLOAT8_E5M2, scales["g"])  # 2^-3 relative

    def product_bound(a, ea, b, eb):
        """|aq @ bq - a @ b| <= |a| @ eb + ea @ |b| + ea @ eb, plus float32 accumulation
        in both results (n terms each: n * 2^-24 of |a| @ |b| each)."""
        n = a.shape[1]
        accumulation = 2 * n * 2.0**-24 * (np.abs(a) @ np.abs(b))
        return np.abs(a) @ eb + ea @ np.abs(b) + ea @ eb + accumulation

    for got, want, bound in [
        (out, ref, product_bound(xv, ex, wv.T, ew.T)),
        (xt.grad, ref_x.grad, product_bound(g, eg, wv, ew)),
        (layer.weight.grad, w.grad, product_bound(g.T, eg.T, xv, ex)),
    ]:
        error = np.abs(got.numpy().astype(np.float64) - want.numpy())
        assert np.all(error <= bound)
        assert error.max() > 0  # fp8 did round something
    np.testing.assert_array_equal(layer.bias.grad.numpy(), b.grad.numpy())  # float32 in both


# ---- models ------------------------------------------------------------------------


def teacher_data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((8, 4)), axis=1)
    return minimp.tensor(x), y


def test_an_fp8_mlp_learns():
    model = nn.MLP((8, 16, 4), generator=np.random.default_rng(0))
    fp8_model = to_fp8(model, DelayedScaling(amax_history_len=4))
    opt = optim.SGD(model.parameters(), lr=0.5)
    x, y = teacher_data()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(fp8_model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0]
    assert [type(layer).__name__ for layer in fp8_model.layers] == [
        "Fp8Linear",
        "ReLU",
        "Fp8Linear",
    ]


def test_to_fp8_shares_the_parameters():
    model = nn.MLP((8, 16, 4), generator=np.random.default_rng(0))
    fp8_model = to_fp8(model, DelayedScaling())
    assert [id(p) for p in fp8_model.parameters()] == [id(p) for p in model.parameters()]
    assert fp8_model.state_dict().keys() == model.state_dict().keys()  # checkpoints fit both
    assert fp8_model[1] is model[1]  # other layers are kept
    before = model[0].weight.numpy().copy()
    opt = optim.SGD(model.parameters(), lr=0.1)  # built on the float32 model
    x, y = teacher_data()
    F.cross_entropy(fp8_model(x), y).backward()
    assert model[0].weight.grad is not None
    opt.step()
    assert not np.array_equal(model[0].weight.numpy(), before)
    assert fp8_model[0].weight is model[0].weight


def test_scaling_state_round_trips_and_is_checked_before_loading():
    layer, x, _ = fp8_layer_and_data((6, 8))
    state = layer.scaling_state()
    assert set(state) == {f"{r}.{k}" for r in ("input", "weight", "grad")
                          for k in ("amax_history", "scale")}  # fmt: skip
    assert all(type(v) is float or isinstance(v, np.ndarray) for v in state.values())

    copy = Fp8Linear(nn.Linear(8, 5))
    copy.weight, copy.bias = layer.weight, layer.bias
    copy.load_scaling_state(state)
    xt = minimp.tensor(x)
    np.testing.assert_array_equal(copy(xt).numpy(), layer(xt).numpy())

    fresh = Fp8Linear(nn.Linear(8, 5))
    with pytest.raises(ValueError, match=r"scale must be a power of two .* got 3\.0"):
        fresh.load_scaling_state({**state, "grad.scale": 3.0})
    with pytest.raises(ValueError, match="amax_history must hold 16"):
        fresh.load_scaling_state({**state, "input.amax_history": np.zeros(3)})
    with pytest.raises(KeyError, match=r"missing \['weight.scale'\]"):
        fresh.load_scaling_state({k: v for k, v in state.items() if k != "weight.scale"})
    assert fresh.input_scaling.scale == 1.0 and not fresh.input_scaling.amax_history.any()


# ---- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"margin": -1}, "margin must be an int >= 0, got -1"),
        ({"margin": 0.5}, "margin must be an int >= 0, got 0.5"),
        ({"amax_history_len": 0}, "amax_history_len must be an int >= 1, got 0"),
        ({"amax_history_len": True}, "amax_history_len must be an int >= 1, got True"),
        ({"scaling": 1}, "scaling must be True or False, got 1"),
    ],
)
def test_bad_recipes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DelayedScaling(**kwargs)


def test_fp8_needs_float32_and_fp8_formats():
    with pytest.raises(TypeError, match=r"layers.0.weight is float16.*model.float\(\)"):
        to_fp8(nn.MLP((8, 4), dtype=minimp.float16))
    with pytest.raises(TypeError, match=r"to_fp8 converts an nn\.Module, got list"):
        to_fp8([nn.Linear(8, 4)])
    with pytest.raises(ValueError, match=r"needs an fp8 format .* got float16"):
        TensorScaling("float16")
    layer = Fp8Linear(nn.Linear(8, 4))
    with pytest.raises(TypeError, match=r"fp8_linear: x is float16.*\.float\(\)"):
        layer(minimp.tensor(np.ones((2, 8)), dtype=minimp.float16))
    with pytest.raises(ValueError, match=r"fp8_linear: input \(2, 3\) does not fit"):
        fp8_linear(minimp.tensor(np.ones((2, 3))), layer.weight, None,
                   layer.input_scaling, layer.weight_scaling, layer.grad_scaling)  # fmt: skip


# ---- GPU ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_quantize_on_the_gpu_matches_the_cpu(fmt):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(10_000) * 10.0 ** rng.uniform(-6, 4, 10_000)).astype(np.float32)
    cpu, gpu = TensorScaling(fmt), TensorScaling(fmt)
    for _ in range(3):
        q_cpu, q_gpu = cpu.quantize(x), gpu.quantize(backend.to_device(x, "cuda"))
        assert backend.device_of(q_gpu) == "cuda"
        np.testing.assert_array_equal(
            backend.to_numpy(q_gpu).view(np.uint32), q_cpu.view(np.uint32)
        )
        assert gpu.scale == cpu.scale and gpu.last_underflow == cpu.last_underflow


@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
def test_the_fast_cpu_cast_is_ml_dtypes_cast_bit_for_bit(fmt):
    """The quantizer's own rounding and encoding (ml_dtypes' casts are ~10x slower), on a
    sweep through every binade of float32 that fits the format, NaN and zeros."""
    from minimp.formats import round_in_range as _round_saturated
    from minimp.scaling.per_tensor import decode as _decode
    from minimp.scaling.per_tensor import encode as _encode

    patterns = np.arange(0, 2**32, 1009, dtype=np.uint64).astype(np.uint32)
    x = patterns.view(np.float32)
    values = np.unique(np.arange(256, dtype=np.uint8).view(fmt.dtype).astype(np.float32))
    values = values[np.isfinite(values) & (values >= 0)]
    ties = (values[:-1] + values[1:]) / 2  # exact in float32: where ties-to-even decides
    specials = np.float32([0.0, -0.0, fmt.max, np.nan])
    x = np.concatenate([x[np.abs(x) <= fmt.max], ties, -ties, specials])
    want = x.astype(fmt.dtype)
    stored = _encode(_round_saturated(x, fmt), fmt)
    assert stored.dtype == fmt.dtype
    assert np.array_equal(stored.view(np.uint8), want.view(np.uint8))
    assert np.array_equal(
        _decode(stored, fmt).view(np.uint32), want.astype(np.float32).view(np.uint32)
    )
