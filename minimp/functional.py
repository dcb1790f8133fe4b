"""The ops and their backward rules.

Each op is a short function: it checks its operands (one helper, ``_operands``,
decides which dtype the op runs in), computes its output in float32, rounds it
once to that dtype, and attaches the closure that maps the output's gradient to
its inputs' gradients. Closures save the operands in their stored dtype (a
float16 activation is saved as float16: half the memory) and widen them only
when they run. Reductions (sum, mean, softmax, the losses) accumulate in float32,
as the paper prescribes (Micikevicius et al. 2018, sec. 3.3) and every framework
does; their result is then rounded to the input dtype.

At the end of the file, the ops become Tensor's operators and methods.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from minimp import backend
from minimp.tensor import Tensor, compute, ieee, round_to_dtype

__all__ = [
    "add",
    "cross_entropy",
    "div",
    "exp",
    "linear",
    "log",
    "log_softmax",
    "matmul",
    "mean",
    "mse_loss",
    "mul",
    "neg",
    "pow",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "sub",
    "sum",
    "tanh",
    "transpose",
]

AutocastHook = Callable[[str, tuple[Tensor, ...]], tuple[Tensor, ...]]


class _AutocastState(threading.local):
    """Set by minimp.amp.autocast while a region is active: (op name, operands) ->
    operands cast by the autocast policy. None means "no autocast: dtypes must
    already agree". Per thread, as PyTorch's autocast state is: a region opened in
    one thread never changes the ops of another."""

    hook: AutocastHook | None = None


_autocast = _AutocastState()


def get_autocast_hook() -> AutocastHook | None:
    return _autocast.hook


def set_autocast_hook(hook: AutocastHook | None) -> AutocastHook | None:
    """Install ``hook`` in this thread; returns the one it replaces."""
    previous, _autocast.hook = _autocast.hook, hook
    return previous


def _operands(op: str, *inputs: Any) -> tuple[list[Tensor], np.dtype]:
    """The one place that decides which dtype an op runs in.

    Python scalars join in float32 and take the tensor's dtype, as in PyTorch.
    Tensors must share a dtype and a device; inside autocast its policy casts
    them first. Returns the tensors and the dtype of the op's output.
    """
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    autocast_hook = _autocast.hook
    if autocast_hook is not None:
        cast = iter(autocast_hook(op, tuple(tensors)))
        inputs = tuple(next(cast) if isinstance(x, Tensor) else x for x in inputs)
        tensors = [x for x in inputs if isinstance(x, Tensor)]
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        a, b = (str(t.dtype) for t in tensors[:2])
        raise TypeError(
            f"{op}: got a {a} tensor and a {b} tensor. minimp never mixes dtypes silently: "
            f"cast one of them (.to(minimp.{b}), .half(), .float()), or run the op inside "
            "minimp.amp.autocast(), whose policy chooses the dtype"
        )
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{op}: tensors on different devices ({' and '.join(sorted(devices))})")
    out = []
    for x in inputs:
        if isinstance(x, Tensor):
            out.append(x)
        elif isinstance(x, int | float | np.number):
            xp = backend.array_module(tensors[0].data)
            out.append(Tensor(xp.asarray(x, dtype=np.float32)))
        else:
            raise TypeError(f"{op}: expected a Tensor or a Python number, got {type(x).__name__}")
    return out, tensors[0].dtype


def _broadcast_shape(op: str, a: Tensor, b: Tensor) -> None:
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together"
        ) from None


def _result(
    data32: Any, dtype: np.dtype, parents: tuple[Tensor, ...], backward, saved: tuple = ()
) -> Tensor:
    return Tensor.from_op(round_to_dtype(data32, dtype), parents, backward, saved)


# ---- elementwise arithmetic -----------------------------------------------------


@ieee()
def add(a: Any, b: Any) -> Tensor:
    (a, b), dtype = _operands("add", a, b)
    _broadcast_shape("add", a, b)
    return _result(compute(a.data) + compute(b.data), dtype, (a, b), lambda g: (g, g))


@ieee()
def sub(a: Any, b: Any) -> Tensor:
    (a, b), dtype = _operands("sub", a, b)
    _broadcast_shape("sub", a, b)
    return _result(compute(a.data) - compute(b.data), dtype, (a, b), lambda g: (g, -compute(g)))


@ieee()
def mul(a: Any, b: Any) -> Tensor:
    (a, b), dtype = _operands("mul", a, b)
    _broadcast_shape("mul", a, b)

    def backward(g):
        g = compute(g)
        return (
            g * compute(b.data) if a.requires_grad else None,
            g * compute(a.data) if b.requires_grad else None,
        )

    saved = (b.data if a.requires_grad else None, a.data if b.requires_grad else None)
    return _result(compute(a.data) * compute(b.data), dtype, (a, b), backward, saved)


@ieee()
def div(a: Any, b: Any) -> Tensor:
    (a, b), dtype = _operands("div", a, b)
    _broadcast_shape("div", a, b)

    def backward(g):
        g, y = compute(g), compute(b.data)
        return (
            g / y if a.requires_grad else None,
            -g * compute(a.data) / (y * y) if b.requires_grad else None,
        )

    saved = (b.data, a.data if b.requires_grad else None)
    return _result(compute(a.data) / compute(b.data), dtype, (a, b), backward, saved)


@ieee()
def neg(a: Tensor) -> Tensor:
    (a,), dtype = _operands("neg", a)
    return _result(-compute(a.data), dtype, (a,), lambda g: (-compute(g),))


@ieee()
def pow(a: Tensor, exponent: float) -> Tensor:
    """``a ** exponent`` for a constant Python exponent."""
    (a,), dtype = _operands("pow", a)
    if not isinstance(exponent, int | float):
        raise TypeError(f"pow: the exponent must be a Python number, got {type(exponent).__name__}")

    def backward(g):
        if exponent == 0:  # x^0 is constant: 0, not 0 * 0^-1 = NaN at x = 0 (as torch)
            return (_xp(a).zeros_like(g),)
        return (compute(g) * exponent * compute(a.data) ** (exponent - 1),)

    return _result(compute(a.data) ** exponent, dtype, (a,), backward, (a.data,))


# ---- pointwise functions ----------------------------------------------------------
# Computed in float32 and rounded once, as GPU kernels for 16-bit data do.


@ieee()
def exp(a: Tensor) -> Tensor:
    (a,), dtype = _operands("exp", a)
    out = round_to_dtype(_xp(a).exp(compute(a.data)), dtype)
    return Tensor.from_op(out, (a,), lambda g: (compute(g) * compute(out),), (out,))


@ieee()
def log(a: Tensor) -> Tensor:
    (a,), dtype = _operands("log", a)
    return _result(
        _xp(a).log(compute(a.data)), dtype, (a,), lambda g: (compute(g) / compute(a.data),),
        (a.data,),
    )  # fmt: skip


@ieee()
def tanh(a: Tensor) -> Tensor:
    (a,), dtype = _operands("tanh", a)
    out = round_to_dtype(_xp(a).tanh(compute(a.data)), dtype)
    return Tensor.from_op(out, (a,), lambda g: (compute(g) * (1 - compute(out) ** 2),), (out,))


@ieee()
def sigmoid(a: Tensor) -> Tensor:
    (a,), dtype = _operands("sigmoid", a)
    out = round_to_dtype(1 / (1 + _xp(a).exp(-compute(a.data))), dtype)

    def backward(g):
        s = compute(out)
        return (compute(g) * s * (1 - s),)

    return Tensor.from_op(out, (a,), backward, (out,))


@ieee()
def relu(a: Tensor) -> Tensor:
    """``0 if a < 0 else a``, as PyTorch: exact in any dtype, and -0.0 stays -0.0 (it
    is not below 0). Like PyTorch it saves only its output, and the gradient passes
    wherever that is not ±0: a NaN propagates forward and passes the gradient on.
    Its backward masks the gradient as stored, in any dtype: a selection is exact."""
    (a,), dtype = _operands("relu", a)
    xp = _xp(a)
    if dtype == np.float32 or xp is not np:
        out = xp.where(a.data < 0, xp.zeros((), a.data.dtype), a.data)
        return Tensor.from_op(out, (a,), lambda g: (xp.where(out != 0, g, 0),), (out,))
    out = _relu16(a.data)

    def backward(g16):  # a 16-bit gradient, masked on its bits like the forward
        passes = (out.view(np.int16) & np.int16(0x7FFF)) != 0  # not +0 or -0
        return ((g16.view(np.int16) * passes).view(g16.dtype),)

    return Tensor.from_op(out, (a,), backward, (out,))


# NumPy has no float16 arithmetic (it converts element by element, 5-10 ns each),
# while integer compares are vectorised, so on the CPU relu reads 16-bit bit
# patterns as int16: those of negative numbers and -inf are exactly the ones at or
# below -inf's, bar -0 (0x8000, the smallest int16), which relu keeps; negative NaNs
# lie between -inf and 0.
def _relu16(x: np.ndarray) -> np.ndarray:
    bits = x.view(np.int16)
    negative_inf = np.array(-np.inf, dtype=x.dtype).view(np.int16)
    keep = (bits > negative_inf) | (bits == np.iinfo(np.int16).min)
    return (bits * keep).view(x.dtype)  # np.where is 40x slower here


# ---- shape ---------------------------------------------------------------------


def reshape(a: Tensor, *shape: Any) -> Tensor:
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
    try:
        out = a.data.reshape(shape)
    except ValueError:
        raise ValueError(
            f"reshape: cannot reshape {a.shape} ({a.size} elements) into {shape}"
        ) from None
    return Tensor.from_op(out, (a,), lambda g: (g.reshape(a.data.shape),), ())


def transpose(a: Tensor, dim0: int = -2, dim1: int = -1) -> Tensor:
    """Swap two axes (the last two by default, so ``.T`` of a matrix). As in PyTorch,
    a 0-d or 1-d tensor takes dims 0 and -1 and comes back as it is."""
    dim0, dim1 = _dim(a, dim0, "transpose"), _dim(a, dim1, "transpose")
    if a.ndim < 2:
        return Tensor.from_op(a.data, (a,), lambda g: (g,), ())
    axes = list(range(a.ndim))
    axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
    return Tensor.from_op(a.data.transpose(axes), (a,), lambda g: (g.transpose(axes),), ())


# ---- matmul --------------------------------------------------------------------


def _mm(dtype: np.dtype, a: Any, b: Any, bias: Any = None) -> Any:
    """The matmul rule for ``dtype``: plain float32 BLAS, or backend.lowp_matmul."""
    if dtype == np.float32:
        return a @ b if bias is None else a @ b + bias
    return backend.lowp_matmul(a, b, dtype, bias)


@ieee()
def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``: 16-bit inputs, float32 accumulation, one rounding (a tensor core's rule).

    Operands are 2-D or batched (N-D, batch axes broadcast). The backward pass is two
    more matmuls with the same rule: dA = dC @ B^T, dB = A^T @ dC, on the incoming
    gradient as stored (16-bit, so a tensor core takes it as it is).
    """
    (a, b), dtype = _operands("matmul", a, b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(
            f"matmul: operands need at least 2 dimensions, got {a.shape} @ {b.shape}; "
            "reshape a vector to (1, n) or (n, 1)"
        )
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"matmul: {a.shape} @ {b.shape}: inner dimensions {a.shape[-1]} and "
            f"{b.shape[-2]} differ"
        )
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(
            f"matmul: {a.shape} @ {b.shape}: batch dimensions {a.shape[:-2]} and "
            f"{b.shape[:-2]} do not broadcast (each pair must be equal, or one of them 1)"
        ) from None

    def backward(g):
        return (
            _mm(dtype, g, b.data.swapaxes(-1, -2)) if a.requires_grad else None,
            _mm(dtype, a.data.swapaxes(-1, -2), g) if b.requires_grad else None,
        )

    saved = (b.data if a.requires_grad else None, a.data if b.requires_grad else None)
    return Tensor.from_op(_mm(dtype, a.data, b.data), (a, b), backward, saved)


@ieee()
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``, as ``torch.nn.functional.linear``: one fused op.

    The bias joins the float32 accumulator and the result is rounded once, as
    cuBLAS's bias epilogue does; and autocast sees the parameters themselves, so
    their casts are cached. ``x`` is (..., in_features), ``weight`` (out, in).
    """
    inputs, dtype = _operands("linear", x, weight, *([] if bias is None else [bias]))
    x, weight, bias = (*inputs, None)[:3]
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input {x.shape} does not fit weight {weight.shape} (out, in)")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"linear: bias {bias.shape} does not fit weight {weight.shape}")

    def backward(g):
        g2, x2 = g.reshape(-1, g.shape[-1]), x.data.reshape(-1, x.shape[-1])
        grads = (
            _mm(dtype, g, weight.data) if x.requires_grad else None,
            _mm(dtype, g2.T, x2) if weight.requires_grad else None,
            compute(g2).sum(axis=0, dtype=np.float32)
            if bias is not None and bias.requires_grad
            else None,
        )
        return grads[: len(inputs)]

    out = _mm(dtype, x.data, weight.data.T, None if bias is None else bias.data)
    saved = (weight.data if x.requires_grad else None, x.data if weight.requires_grad else None)
    return Tensor.from_op(out, tuple(inputs), backward, saved)


# ---- reductions: accumulated in float32 --------------------------------------------


def _dim(a: Tensor, d: Any, op: str) -> int:
    """One dim, checked and made >= 0. As in PyTorch, a 0-d tensor takes 0 and -1."""
    if isinstance(d, bool) or not isinstance(d, int | np.integer):
        raise TypeError(f"{op}: dim must be an int, got {d!r} ({type(d).__name__})")
    n = max(a.ndim, 1)
    if not -n <= d < n:
        raise ValueError(
            f"{op}: dim {d} is out of range for a tensor of shape {a.shape} "
            f"(allowed: {-n}..{n - 1})"
        )
    return int(d) % n


def _axes(a: Tensor, dim: Any, op: str) -> tuple[int, ...]:
    """The axes a reduction runs over: every axis for None or () (PyTorch's rule)."""
    dims = () if dim is None else tuple(dim) if isinstance(dim, tuple | list) else (dim,)
    axes = tuple(_dim(a, d, op) for d in dims)
    for i, d in enumerate(axes):
        if d in axes[:i]:
            raise ValueError(f"{op}: dim {d} appears more than once in dim={dim!r}")
    if not axes or a.ndim == 0:  # a 0-d tensor's dim 0 is the tensor itself
        return tuple(range(a.ndim))
    return axes


def _softmax_axis(a: Tensor, dim: Any, op: str) -> int | None:
    """The one axis a softmax normalizes over (None for a 0-d tensor)."""
    if isinstance(dim, tuple | list):
        raise TypeError(f"{op}: dim must be one int, got {dim!r}: a softmax runs over one axis")
    axis = _dim(a, dim, op)
    return None if a.ndim == 0 else axis


def _expand(g: Any, a: Tensor, axes: tuple[int, ...], keepdim: bool) -> Any:
    """Broadcast a reduced gradient back over the reduced axes."""
    if not keepdim:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(a.shape)])
    return _xp(a).broadcast_to(g, a.shape)


@ieee()
def sum(a: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    (a,), dtype = _operands("sum", a)
    axes = _axes(a, dim, "sum")
    out = compute(a.data).sum(axis=axes, keepdims=keepdim, dtype=np.float32)
    return _result(out, dtype, (a,), lambda g: (_expand(g, a, axes, keepdim),))


@ieee()
def mean(a: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    (a,), dtype = _operands("mean", a)
    axes = _axes(a, dim, "mean")
    count = int(np.prod([a.shape[i] for i in axes]))
    out = compute(a.data).sum(axis=axes, keepdims=keepdim, dtype=np.float32) / count
    return _result(out, dtype, (a,), lambda g: (_expand(compute(g) / count, a, axes, keepdim),))


def _log_softmax32(x: Any, axis: int) -> Any:
    """log softmax in float32, shifted by the max so exp cannot overflow."""
    xp = backend.array_module(x)
    if x.size == 0:  # nothing to normalize (an empty axis): an empty result, as torch's
        return x.copy()
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


@ieee()
def softmax(a: Tensor, dim: int = -1) -> Tensor:
    (a,), dtype = _operands("softmax", a)
    axis = _softmax_axis(a, dim, "softmax")
    out = round_to_dtype(_xp(a).exp(_log_softmax32(compute(a.data), axis)), dtype)

    def backward(g):
        g, s = compute(g), compute(out)
        return (s * (g - (g * s).sum(axis=axis, keepdims=True)),)

    return Tensor.from_op(out, (a,), backward, (out,))


@ieee()
def log_softmax(a: Tensor, dim: int = -1) -> Tensor:
    (a,), dtype = _operands("log_softmax", a)
    axis = _softmax_axis(a, dim, "log_softmax")
    out = round_to_dtype(_log_softmax32(compute(a.data), axis), dtype)

    def backward(g):
        g = compute(g)
        return (g - _xp(a).exp(compute(out)) * g.sum(axis=axis, keepdims=True),)

    return Tensor.from_op(out, (a,), backward, (out,))


# ---- losses: computed in float32 -----------------------------------------------------


@ieee()
def cross_entropy(logits: Tensor, target: Any) -> Tensor:
    """Mean negative log-likelihood of integer class ``target`` under softmax(``logits``).

    ``logits`` is (N, C); ``target`` holds N class indices (an integer array or
    list). The softmax, the log and the mean are computed in float32; the loss is
    rounded to the logits' dtype.
    """
    (logits,), dtype = _operands("cross_entropy", logits)
    xp = _xp(logits)
    target = _class_indices(target, logits, xp)
    n = logits.shape[0]
    rows = xp.arange(n)
    logp = _log_softmax32(compute(logits.data), axis=1)
    loss = -logp[rows, target].sum(dtype=np.float32) / n

    def backward(g):
        grad = xp.exp(logp)
        grad[rows, target] -= 1
        return (grad * (compute(g) / n),)

    return _result(loss, dtype, (logits,), backward, (logp, target))


def _class_indices(target: Any, logits: Tensor, xp: Any) -> Any:
    if isinstance(target, Tensor):
        raise TypeError(
            "cross_entropy: target must hold integer class indices (a NumPy/CuPy integer "
            "array or a list), not a float Tensor"
        )
    target = xp.asarray(target)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, C), got shape {logits.shape}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must be integer class indices, got {target.dtype}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy: logits {logits.shape} need a target of shape ({logits.shape[0]},), "
            f"got {tuple(target.shape)}"
        )
    if target.size and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise ValueError(
            f"cross_entropy: target classes must lie in [0, {logits.shape[1]}), "
            f"got values from {int(target.min())} to {int(target.max())}"
        )
    return target


@ieee()
def mse_loss(input: Tensor, target: Any) -> Tensor:
    """Mean of (input - target)**2, accumulated in float32."""
    (input, target), dtype = _operands("mse_loss", input, target)
    if input.shape != target.shape:
        raise ValueError(
            f"mse_loss: input {input.shape} and target {target.shape} must have the same shape"
        )
    diff = compute(input.data) - compute(target.data)
    n = max(diff.size, 1)
    loss = (diff * diff).sum(dtype=np.float32) / n

    def backward(g):
        grad = diff * (2 * compute(g) / n)
        return grad, -grad

    return _result(loss, dtype, (input, target), backward, (diff,))


def _xp(t: Tensor) -> Any:
    return backend.array_module(t.data)


# ---- Tensor's operators and methods ---------------------------------------------------
# Bound here, so tensor.py holds only the graph machinery and imports point down.


def _reflected(op: Callable[[Any, Any], Tensor]) -> Callable[[Tensor, Any], Tensor]:
    return lambda self, other: op(other, self)


Tensor.__add__ = add
Tensor.__radd__ = _reflected(add)
Tensor.__sub__ = sub
Tensor.__rsub__ = _reflected(sub)
Tensor.__mul__ = mul
Tensor.__rmul__ = _reflected(mul)
Tensor.__truediv__ = div
Tensor.__rtruediv__ = _reflected(div)
Tensor.__neg__ = neg
Tensor.__pow__ = pow
Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = _reflected(matmul)
Tensor.exp = exp
Tensor.log = log
Tensor.tanh = tanh
Tensor.sigmoid = sigmoid
Tensor.relu = relu
Tensor.sum = sum
Tensor.mean = mean
Tensor.softmax = softmax
Tensor.log_softmax = log_softmax
Tensor.reshape = reshape
Tensor.transpose = transpose
Tensor.T = property(lambda self: transpose(self, -2, -1))
