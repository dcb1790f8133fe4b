"""The Tensor machinery: explicit dtypes, exact float16 arithmetic, autograd rules, errors."""

from fractions import Fraction

import numpy as np
import pytest
import torch

import minimp
import minimp.functional as F
from minimp import backend
from minimp.tensor import is_grad_enabled

# ---- float16 arithmetic is exactly IEEE float16 ----------------------------------------


def _float16_operands(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random finite float16 pairs over the whole range: random bit patterns, so
    subnormals, tiny and huge values are as common as ordinary ones."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**16, size=(2, n), dtype=np.uint16)
    a, b = bits.view(np.float16)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    x, y = x.astype(np.float16), y.astype(np.float16)
    both_nan = np.isnan(x) & np.isnan(y)
    return bool(np.all((x.view(np.uint16) == y.view(np.uint16)) | both_nan))


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_float16_add_sub_mul_are_correctly_rounded(op):
    """Oracle: the exact result in float64 (a sum or product of two float16 values
    needs at most 40 bits), rounded once to float16 by NumPy's direct double->half
    conversion. minimp computes in float32 and rounds once; they must agree on every
    bit, overflow to inf and underflow to 0 included."""
    a, b = _float16_operands(1_000_000, seed=1)
    ours = getattr(F, op)(minimp.tensor(a), minimp.tensor(b))
    exact = {"add": np.add, "sub": np.subtract, "mul": np.multiply}[op](
        a.astype(np.float64), b.astype(np.float64)
    )
    with np.errstate(over="ignore"):
        assert _same_bits(ours.numpy(), exact.astype(np.float16))


def _round_fraction_to_float16(q: Fraction) -> float:
    """Round an exact rational to float16, nearest-even, from first principles."""
    lo = np.float16(float(q))  # a float16 within one ulp of q
    candidates = {lo, np.nextafter(lo, np.float16(np.inf)), np.nextafter(lo, np.float16(-np.inf))}
    finite = [c for c in candidates if np.isfinite(c)]
    best = min(abs(Fraction(float(c)) - q) for c in finite)
    ties = [c for c in finite if abs(Fraction(float(c)) - q) == best]
    return float(min(ties, key=lambda c: int(np.array(c).view(np.uint16)) & 1))


def test_float16_division_is_correctly_rounded():
    """Oracle: the exact quotient as a Fraction, rounded to the nearest float16 (ties to
    even) by comparing it with its float16 neighbours. Normal-range operands only, so
    the exact rounding above stays simple; the bit patterns are otherwise random."""
    a, b = _float16_operands(20_000, seed=2)
    q = a.astype(np.float64) / b.astype(np.float64)
    keep = (b != 0) & (np.abs(q) >= 2.0**-14) & (np.abs(q) <= 65504)
    a, b = a[keep][:3000], b[keep][:3000]
    ours = (minimp.tensor(a) / minimp.tensor(b)).numpy()
    expected = [
        _round_fraction_to_float16(Fraction(float(x)) / Fraction(float(y)))
        for x, y in zip(a, b, strict=True)
    ]
    assert _same_bits(ours, np.array(expected))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_float16_arithmetic_matches_pytorch_bit_for_bit(op):
    a, b = _float16_operands(1_000_000, seed=3)
    ours = getattr(F, op)(minimp.tensor(a), minimp.tensor(b)).numpy()
    theirs = getattr(torch, op)(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert _same_bits(ours, theirs)


def test_python_scalars_join_in_float32_and_keep_the_dtype():
    """As in PyTorch: 0.1 is not rounded to float16 before the multiply."""
    x = minimp.tensor([1.0, 3.0, 1000.0], dtype=minimp.float16)
    for y in (x * 0.1, 0.1 * x, x * np.float32(0.1)):
        assert y.dtype == minimp.float16
        expected = (torch.tensor([1.0, 3.0, 1000.0], dtype=torch.float16) * 0.1).numpy()
        assert _same_bits(y.numpy(), expected)


# ---- explicit dtypes -------------------------------------------------------------------


def test_mixed_dtypes_outside_autocast_name_the_op_the_dtypes_and_the_fixes():
    a = minimp.tensor([1.0, 2.0])
    b = minimp.tensor([1.0, 2.0], dtype=minimp.float16)
    with pytest.raises(TypeError) as err:
        a * b
    message = str(err.value)
    for part in ("mul", "float32", "float16", ".to(", "autocast"):
        assert part in message


def test_tensor_constructor_dtypes_and_errors():
    assert minimp.tensor([1.0, 2.0]).dtype == minimp.float32
    assert minimp.tensor(np.zeros(3)).dtype == minimp.float32  # float64 -> default dtype
    assert minimp.tensor(np.zeros(3, np.float16)).dtype == minimp.float16
    assert minimp.tensor([1, 2], dtype="float16").dtype == minimp.float16
    assert minimp.tensor([1.0], dtype="bfloat16").dtype == minimp.bfloat16
    assert minimp.tensor([1e-8], dtype=minimp.float16).item() == 0.0  # below 2^-25: flushed
    assert minimp.tensor([70000.0], dtype=minimp.float16).item() == np.inf
    with pytest.raises(TypeError, match=r"dtype=minimp\.float32"):
        minimp.tensor([1, 2])
    with pytest.raises(TypeError, match="numbers"):
        minimp.tensor(["a"])
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        minimp.tensor([1.0], dtype="float8")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        minimp.tensor([1.0], device="gpu")
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        minimp.Tensor(np.zeros(3, np.int32))


@pytest.mark.skipif(backend.cuda_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_how_to_get_one():
    with pytest.raises(RuntimeError, match="cuda12"):
        minimp.tensor([1.0]).to("cuda")


def test_shape_errors_name_both_shapes():
    a, b = minimp.tensor(np.zeros((3, 4))), minimp.tensor(np.zeros(5))
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(5,\)"):
        a + b
    with pytest.raises(ValueError, match="inner dimensions 4 and 5"):
        a @ minimp.tensor(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="same shape"):
        F.mse_loss(a, minimp.tensor(np.zeros((4, 3))))
    with pytest.raises(ValueError, match="cannot reshape"):
        a.reshape(5, 3)
    with pytest.raises(ValueError, match="target of shape"):
        F.cross_entropy(a, [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        F.cross_entropy(a, [0, 1, 4])
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(a, [0.0, 1.0, 2.0])


# ---- autograd ----------------------------------------------------------------------------


def test_backward_on_a_non_scalar_needs_a_gradient():
    x = minimp.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\).*\.sum\(\)"):
        (x * 2).backward()
    (x * 2).backward(np.ones((2, 3)))
    assert np.all(x.grad.numpy() == 2)
    with pytest.raises(RuntimeError, match="requires_grad=True"):
        minimp.tensor([1.0]).sum().backward()


def test_gradients_accumulate_and_the_graph_is_freed():
    x = minimp.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.numpy().tolist() == [4.0, 8.0]  # 2x, twice
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_a_tensor_used_twice_sums_its_gradients():
    x = minimp.tensor([3.0], requires_grad=True)
    (x * x + x).sum().backward()
    assert x.grad.item() == 7.0


def test_gradient_through_a_cast_comes_back_in_the_source_dtype_and_can_underflow():
    """A float32 weight used in float16: its gradient is float32 but was computed in
    float16, so a value below 2^-25 arrives as 0 (Micikevicius et al. 2018, sec. 3.2)."""
    w = minimp.tensor([1.0, 1.0, 1.0], requires_grad=True)
    upstream = np.array([2.0**-26, 2.0**-24, 1e-3], dtype=np.float32)
    (w.half() * 1.0).backward(upstream)
    assert w.grad.dtype == minimp.float32
    assert w.grad.numpy().tolist() == [0.0, 2.0**-24, float(np.float16(1e-3))]


def test_float16_parameter_gets_a_float16_gradient():
    w = minimp.tensor([[1.0, 2.0]], dtype="float16", requires_grad=True)
    x = minimp.tensor([[1.0], [1.0]], dtype="float16")
    (w @ x).sum().backward()
    assert w.grad.dtype == minimp.float16


def test_retain_grad_keeps_an_activation_gradient():
    x = minimp.tensor([1.0, -1.0], requires_grad=True)
    h = F.relu(x).retain_grad()
    (h * 3.0).sum().backward()
    assert h.grad.numpy().tolist() == [3.0, 3.0]
    assert x.grad.numpy().tolist() == [3.0, 0.0]


def test_no_grad_records_nothing():
    x = minimp.tensor([1.0], requires_grad=True)
    with minimp.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf


def test_long_chains_do_not_hit_the_recursion_limit():
    x = minimp.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.sum().backward()
    assert x.grad.item() == 1.0


def test_repr_and_item():
    t = minimp.tensor([1.5], dtype="float16", requires_grad=True)
    assert repr(t) == "tensor([1.5], dtype=float16, requires_grad=True)"
    assert t.item() == 1.5
    with pytest.raises(ValueError, match="one element"):
        minimp.tensor([1.0, 2.0]).item()


def test_a_backward_that_fails_on_a_freed_graph_has_accumulated_nothing():
    """The walk is checked before any leaf receives a gradient (issue 16, item 8)."""
    x = minimp.tensor([1.0, 2.0], requires_grad=True)
    w = minimp.tensor([5.0, 7.0], requires_grad=True)
    h = x * 2.0
    h.sum().backward()  # frees h's graph
    before = x.grad.numpy().copy()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        (w * h).sum().backward()  # would reach w first, then the freed h
    assert w.grad is None
    assert np.array_equal(x.grad.numpy(), before)


def test_grad_mode_is_per_thread_as_in_pytorch():
    """no_grad() in one thread must not stop another thread's graph (issue 16, item 14)."""
    import threading

    inside, go_on = threading.Event(), threading.Event()
    seen = {}

    def evaluator():
        with minimp.no_grad():
            inside.set()
            go_on.wait(5)

    thread = threading.Thread(target=evaluator)
    thread.start()
    inside.wait(5)
    x = minimp.tensor([1.0], requires_grad=True)
    seen["requires_grad"] = (x * 2.0).requires_grad
    seen["enabled"] = is_grad_enabled()
    go_on.set()
    thread.join()
    assert seen == {"requires_grad": True, "enabled": True}
    t_seen = {}

    def torch_evaluator():  # torch does the same
        with torch.no_grad():
            inside.set()
            go_on.wait(5)

    inside.clear(), go_on.clear()
    thread = threading.Thread(target=torch_evaluator)
    thread.start()
    inside.wait(5)
    t_seen["enabled"] = torch.is_grad_enabled()
    go_on.set()
    thread.join()
    assert t_seen["enabled"] is True


def test_autocast_is_per_thread():
    import threading

    inside, go_on = threading.Event(), threading.Event()

    def other():
        with minimp.amp.autocast(dtype=minimp.float16):
            inside.set()
            go_on.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(5)
    a = minimp.tensor(np.ones((2, 2), np.float32))
    dtype = (a @ a).dtype
    go_on.set()
    thread.join()
    assert dtype == minimp.float32


def test_no_grad_works_as_a_decorator_with_and_without_parentheses():
    x = minimp.tensor([1.0], requires_grad=True)

    @minimp.no_grad()
    def f(t):
        return t * 2.0

    @minimp.no_grad
    def g(t):
        return t * 3.0

    assert not f(x).requires_grad and not g(x).requires_grad
    assert f.__name__ == "f" and g.__name__ == "g"
    assert (x * 2.0).requires_grad  # restored after each call
    with minimp.no_grad():  # and the same mode nests
        with minimp.no_grad():
            pass
        assert not (x * 2.0).requires_grad
    assert (x * 2.0).requires_grad
