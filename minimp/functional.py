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

import builtins
import operator
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
    "dropout",
    "embedding",
    "exp",
    "gelu",
    "layer_norm",
    "linear",
    "log",
    "log_softmax",
    "masked_fill",
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
    "split",
    "sub",
    "sum",
    "tanh",
    "transpose",
    "view",
    "where",
]

AutocastHook = Callable[[str, tuple[Tensor, ...]], tuple[Tensor, ...]]


class _AutocastState(threading.local):
    """Set by minimp.amp.autocast while a region is active: (op name, operands) ->
    operands cast by the autocast policy. None means "no autocast: dtypes must
    already agree". Per thread, as PyTorch's autocast state is: a region opened in
    one thread never changes the ops of another."""

    hook: AutocastHook | None = None


_autocast = _AutocastState()


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
            # On a GPU a NumPy scalar is a kernel argument; a device array would be a copy
            scalar = np.asarray(x, dtype=np.float32) if xp is np else np.float32(x)
            out.append(Tensor(scalar))
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
    out = backend.arithmetic(operator.add, a.data, b.data)
    return _result(out, dtype, (a, b), lambda g: (g, g))


@ieee()
def sub(a: Any, b: Any) -> Tensor:
    (a, b), dtype = _operands("sub", a, b)
    _broadcast_shape("sub", a, b)
    out = backend.arithmetic(operator.sub, a.data, b.data)
    return _result(out, dtype, (a, b), lambda g: (g, -compute(g)))


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
    out = backend.arithmetic(operator.mul, a.data, b.data)
    return _result(out, dtype, (a, b), backward, saved)


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
    out = backend.arithmetic(operator.truediv, a.data, b.data)
    return _result(out, dtype, (a, b), backward, saved)


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
    (a,), _ = _operands("relu", a)
    xp = _xp(a)
    if xp is not np:  # one kernel each way on the GPU
        out = xp.where(a.data < 0, xp.zeros((), a.data.dtype), a.data)
        return Tensor.from_op(out, (a,), lambda g: (xp.where(out != 0, g, 0),), (out,))
    out = _relu_bits(a.data)

    def backward(g):  # the gradient masked on its bits, like the forward
        bits = _bits(out)
        passes = (bits & np.iinfo(bits.dtype).max) != 0  # not +0 or -0: the sign bit off
        return ((_bits(g) * passes).view(g.dtype),)

    return Tensor.from_op(out, (a,), backward, (out,))


# NumPy has no float16 arithmetic (it converts element by element, 5-10 ns each),
# and its float32 where() is as slow, while integer compares are vectorised. So on
# the CPU relu reads the bit patterns as signed integers of the same width: those of
# negative numbers and -inf are exactly the ones at or below -inf's, bar -0 (the
# smallest integer: sign bit alone), which relu keeps; negative NaNs lie between
# -inf and 0. Multiplying by the mask is 5-10x faster than np.where, in any dtype.
def _bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.int16 if x.itemsize == 2 else np.int32)


def _relu_bits(x: np.ndarray) -> np.ndarray:
    bits = _bits(x)
    negative_inf = _bits(np.array(-np.inf, dtype=x.dtype))
    keep = (bits > negative_inf) | (bits == np.iinfo(bits.dtype).min)
    return (bits * keep).view(x.dtype)


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
    """The matmul rule for ``dtype``: plain float32 BLAS, or backend.lowp_matmul.

    A stack of rows times one matrix, (..., n) @ (n, m), is computed as one 2-D
    product: NumPy's batched matmul broadcasts the matrix and misses BLAS there
    (30x slower for a (16, 64, 64) @ (64, 192) linear layer); the values are the same.
    """
    if a.ndim > 2 and b.ndim == 2:
        out = _mm(dtype, a.reshape(-1, a.shape[-1]), b, bias)
        return out.reshape(*a.shape[:-1], b.shape[-1])
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

    # On the CPU a 16-bit weight is widened once, here, and backward uses the same copy
    # (the engine's floor, minimp.tools.baselines, widens it once per update, too).
    w = backend.matmul_operand(weight.data)
    w_for_backward = w if x.requires_grad else None  # not held when nothing needs it

    def backward(g):
        g = backend.matmul_operand(g)  # widened once for its two matmuls
        g2, x2 = g.reshape(-1, g.shape[-1]), x.data.reshape(-1, x.shape[-1])
        grads = (
            _mm(dtype, g, w_for_backward) if x.requires_grad else None,
            _mm(dtype, g2.T, x2) if weight.requires_grad else None,
            compute(g2).sum(axis=0, dtype=np.float32)
            if bias is not None and bias.requires_grad
            else None,
        )
        return grads[: len(inputs)]

    out = _mm(dtype, x.data, w.T, None if bias is None else bias.data)
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
    target, out_of_range = _class_indices(target, logits, xp)
    n = logits.shape[0]
    rows = xp.arange(n)
    logp = _log_softmax32(compute(logits.data), axis=1)
    loss = -logp[rows, target].sum(dtype=np.float32) / n
    if out_of_range is not None:  # a device-side check (see _in_range)
        loss = xp.where(out_of_range, np.float32(np.nan), loss)

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
    target = _on_host_or(target, xp)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, C), got shape {logits.shape}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must be integer class indices, got {target.dtype}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy: logits {logits.shape} need a target of shape ({logits.shape[0]},), "
            f"got {tuple(target.shape)}"
        )
    return _in_range(
        target, xp, logits.shape[1], "cross_entropy: target classes must lie in [0, {n}), "
    )


def _on_host_or(indices: Any, xp: Any) -> Any:
    """Host data (a list, a NumPy array) as a NumPy array, to be checked before it moves;
    an array already on ``xp``'s device as it is."""
    if xp is not np and isinstance(indices, xp.ndarray):
        return indices
    return np.asarray(indices)


def _in_range(
    indices: Any, xp: Any, n: int, message: str, error: type[Exception] = ValueError
) -> tuple[Any, Any]:
    """``indices`` checked to lie in [0, n), and a device flag for what the host cannot see.

    Host indices are checked on the host, before they move: free. Indices already on
    the GPU are not read back (each read stalls the GPU until its queue drains);
    instead, like CUDA's device-side assert in PyTorch's kernels, the check runs on
    the device: out-of-range indices are replaced by 0 and the flag they raise makes
    the op's result NaN, which the loss scaler and the history then show. Returns
    (indices on ``xp``, flag or None).
    """
    if backend.array_module(indices) is np:
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise error(message.format(n=n) + f"got values from {indices.min()} to {indices.max()}")
        return xp.asarray(indices), None
    bad = (indices < 0) | (indices >= n)
    return xp.where(bad, 0, indices), bad.any()


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


# ---- the ops a transformer needs --------------------------------------------------
# Embedding, LayerNorm, GELU, the causal mask, dropout and the head reshapes: what a
# GPT adds to an MLP. Each computes in float32 and rounds once, as before; the ones
# that only select or move values (embedding's gather, masked_fill, split, view)
# are exact in any dtype and pass 16-bit gradients on as stored.


def _index_array(op: str, indices: Any, xp: Any, size: int) -> Any:
    """Integer indices in [0, size), as an array of the weight's array module."""
    if isinstance(indices, Tensor):
        raise TypeError(
            f"{op}: indices must be an integer array (NumPy/CuPy) or a list, not a float "
            "Tensor: minimp tensors hold floating point only"
        )
    indices = _on_host_or(indices, xp)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers, got {indices.dtype}")
    message = f"{op}: indices must lie in [0, {{n}}) (the weight's rows), "
    return _in_range(indices, xp, size, message, IndexError)


def _scatter_add(target: Any, indices: Any, values: Any) -> None:
    """target[indices[i]] += values[i], repeated indices accumulating (in target's dtype)."""
    if backend.array_module(target) is np:
        np.add.at(target, indices, values)
    else:  # CuPy has no ufunc.at; cupyx.scatter_add is its atomicAdd equivalent
        import cupyx

        cupyx.scatter_add(target, indices, values)


@ieee()
def embedding(input: Any, weight: Tensor) -> Tensor:
    """Rows of ``weight`` (num_embeddings, embedding_dim) picked by integer ``input``,
    as ``torch.nn.functional.embedding``: output shape ``input.shape + (embedding_dim,)``.

    The forward is a gather, exact in any dtype. The backward is a scatter-add: a
    row used k times receives the sum of k gradients, accumulated in float32 and
    rounded once to the weight's dtype, as PyTorch's CUDA kernel accumulates (its
    CPU float16 kernel accumulates in float16: 4096 gradients of 1.0 into one row
    give 2048 there, a float16 sum that stopped growing; 4096 here).
    """
    (weight,), _ = _operands("embedding", weight)
    if weight.ndim != 2:
        raise ValueError(
            f"embedding: weight must be (num_embeddings, embedding_dim), got shape {weight.shape}"
        )
    xp = _xp(weight)
    idx, out_of_range = _index_array("embedding", input, xp, weight.shape[0])

    def backward(g):
        acc = xp.zeros(weight.shape, dtype=np.float32)
        _scatter_add(acc, idx.reshape(-1), compute(g).reshape(-1, weight.shape[1]))
        return (acc,)  # rounded once to the weight's dtype by Tensor.backward

    out = xp.take(weight.data, idx, axis=0)
    if out_of_range is not None:  # a device-side check (see _in_range)
        out = xp.where(out_of_range, out.dtype.type(np.nan), out)
    return Tensor.from_op(out, (weight,), backward, (idx,))


@ieee()
def layer_norm(
    x: Tensor,
    normalized_shape: Any,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last dims, as
    ``torch.nn.functional.layer_norm``: the biased variance, eps inside the root.

    The mean and variance are accumulated in float32 whatever x's dtype, as
    PyTorch's kernels do: in float16, the mean of squares of activations of
    magnitude m overflows once m^2 passes 65504 (m about 256), and a float16 sum of
    d of them once d*m^2 does. The result is rounded once to x's dtype.
    """
    inputs, dtype = _operands("layer_norm", x, *(t for t in (weight, bias) if t is not None))
    x = inputs[0]
    rest = iter(inputs[1:])
    weight = next(rest) if weight is not None else None
    bias = next(rest) if bias is not None else None
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or x.shape[x.ndim - k :] != shape or x.ndim < k:
        raise ValueError(
            f"layer_norm: normalized_shape={list(shape)} must be the last dims of the input, "
            f"got an input of shape {x.shape}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != shape:
            raise ValueError(
                f"layer_norm: {name} has shape {t.shape}, expected normalized_shape {shape}"
            )
    axes = tuple(range(x.ndim - k, x.ndim))
    xp = _xp(x)
    x32 = compute(x.data)
    mean = x32.mean(axis=axes, keepdims=True, dtype=np.float32)
    centered = x32 - mean
    rstd = 1 / xp.sqrt((centered * centered).mean(axis=axes, keepdims=True) + np.float32(eps))
    xhat = centered * rstd
    out = xhat
    if weight is not None:
        out = out * compute(weight.data)
    if bias is not None:
        out = out + compute(bias.data)

    def backward(g):
        g = compute(g)
        xhat = (compute(x.data) - mean) * rstd
        gx = g * compute(weight.data) if weight is not None else g
        dx = rstd * (
            gx
            - gx.mean(axis=axes, keepdims=True)
            - xhat * (gx * xhat).mean(axis=axes, keepdims=True)
        )
        grads = [dx if x.requires_grad else None]
        if weight is not None:
            grads.append(g * xhat if weight.requires_grad else None)  # summed over rows
        if bias is not None:
            grads.append(g if bias.requires_grad else None)
        return tuple(grads)

    saved = (x.data, mean, rstd, None if weight is None else weight.data)
    return _result(out, dtype, tuple(inputs), backward, saved)


_SQRT_HALF = np.float32(np.sqrt(0.5))
_SQRT_2_OVER_PI = np.float32(np.sqrt(2 / np.pi))
_INV_SQRT_2PI = np.float32(1 / np.sqrt(2 * np.pi))


def _erfc32(z: Any) -> Any:
    """erfc(z) in float32, with relative error below 1.2e-7 everywhere (Numerical
    Recipes' erfcc, a Chebyshev fit). NumPy has no erf; this keeps the far tails,
    where 1 + erf(x) = erfc(-x) is tiny, accurate to the last bits."""
    xp = backend.array_module(z)
    a = xp.abs(z)
    t = a * np.float32(0.5)
    t += 1
    xp.reciprocal(t, out=t)
    coefficients = (
        0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
        -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223,
    )  # fmt: skip
    poly = t * np.float32(coefficients[0])
    for c in coefficients[1:-1]:  # Horner's rule, in place: this is GELU's hot loop
        poly += np.float32(c)
        poly *= t
    poly += np.float32(coefficients[-1])
    a *= a
    poly -= a
    xp.exp(poly, out=poly)
    poly *= t  # erfc(|z|); erfc(z) = 2 - erfc(-z) for z < 0
    if xp is np:  # in place: a fresh 1 MB array costs NumPy more than the arithmetic
        return np.subtract(2, poly, out=poly, where=z < 0)
    return xp.where(z >= 0, poly, 2 - poly)


@ieee()
def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU, as ``torch.nn.functional.gelu``: x * Phi(x) with the normal CDF Phi
    (``approximate="none"``), or GPT-2's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    (``approximate="tanh"``). Computed in float32, rounded once.

    The exact form is computed as 0.5 x erfc(-x/sqrt 2), accurate to float32 in the
    negative tail; PyTorch's CPU kernel forms 1 + erf(x/sqrt 2), which cancels there
    (4e-5 relative at x = -3, under 2e-7 absolute): the two agree to float32 ulps of
    the largest value, not of every tiny one."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    (x,), dtype = _operands("gelu", x)
    xp = _xp(x)
    x32 = compute(x.data)
    if approximate == "tanh":
        t = xp.tanh(_SQRT_2_OVER_PI * (x32 + np.float32(0.044715) * x32**3))
        out = np.float32(0.5) * x32 * (1 + t)
    else:
        out = np.float32(0.5) * x32 * _erfc32(-x32 * _SQRT_HALF)

    def backward(g):
        g, x32 = compute(g), compute(x.data)
        if approximate == "tanh":
            inner = _SQRT_2_OVER_PI * (x32 + np.float32(0.044715) * x32**3)
            t = xp.tanh(inner)
            d_inner = _SQRT_2_OVER_PI * (1 + np.float32(3 * 0.044715) * x32 * x32)
            return (
                g * (np.float32(0.5) * (1 + t) + np.float32(0.5) * x32 * (1 - t * t) * d_inner),
            )
        cdf = np.float32(0.5) * _erfc32(-x32 * _SQRT_HALF)
        pdf = _INV_SQRT_2PI * xp.exp(np.float32(-0.5) * x32 * x32)
        return (g * (cdf + x32 * pdf),)

    return _result(out, dtype, (x,), backward, (x.data,))


def _bool_mask(op: str, mask: Any, xp: Any) -> Any:
    if isinstance(mask, Tensor):
        raise TypeError(
            f"{op}: the mask must be a boolean array (NumPy/CuPy), not a float Tensor: "
            "minimp tensors hold floating point only; build it with e.g. np.tril(...) == 0"
        )
    mask = xp.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{op}: the mask must be boolean, got {mask.dtype} (compare it: mask == 0)")
    return mask


def masked_fill(x: Tensor, mask: Any, value: float) -> Tensor:
    """``value`` where the boolean ``mask`` is True, x elsewhere, as
    ``Tensor.masked_fill``; the mask broadcasts to x's shape. The causal mask of
    attention: ``scores.masked_fill(future, -inf)``, so softmax gives those 0.

    A selection, exact in any dtype (``value`` is rounded once to x's dtype); the
    gradient passes, as stored, where the mask is False and is 0 where it is True.
    """
    (x,), dtype = _operands("masked_fill", x)
    xp = _xp(x)
    mask = _bool_mask("masked_fill", mask, xp)
    try:
        fits = np.broadcast_shapes(x.shape, mask.shape) == x.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"masked_fill: a mask of shape {mask.shape} does not broadcast to {x.shape}"
        )
    if not isinstance(value, int | float | np.number):
        raise TypeError(f"masked_fill: value must be a Python number, got {type(value).__name__}")
    with ieee():  # a NumPy scalar: on a GPU a kernel argument, not a copy to the device
        fill = np.asarray(value, dtype=np.float64).astype(dtype)[()]
    out = xp.where(mask, fill, x.data)
    return Tensor.from_op(
        out, (x,), lambda g: (xp.where(mask, xp.zeros((), dtype=g.dtype), g),), (mask,)
    )


def where(condition: Any, input: Any, other: Any) -> Tensor:
    """``input`` where the boolean ``condition`` is True, ``other`` elsewhere, as
    ``torch.where``; the three broadcast together, and either value may be a Python
    number. A selection (exact); each side's gradient is the incoming one where it
    was chosen, 0 elsewhere, summed back over broadcast axes."""
    if not isinstance(input, Tensor) and not isinstance(other, Tensor):
        raise TypeError("where: input or other must be a Tensor (the other may be a number)")
    (a, b), dtype = _operands("where", input, other)
    xp = _xp(a if isinstance(input, Tensor) else b)
    cond = _bool_mask("where", condition, xp)
    try:
        np.broadcast_shapes(cond.shape, a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"where: condition {cond.shape}, input {a.shape} and other {b.shape} do not broadcast"
        ) from None
    out = round_to_dtype(xp.where(cond, compute(a.data), compute(b.data)), dtype)

    def backward(g):
        zero = xp.zeros((), dtype=g.dtype)
        return (
            xp.where(cond, g, zero) if a.requires_grad else None,
            xp.where(cond, zero, g) if b.requires_grad else None,
        )

    return Tensor.from_op(out, (a, b), backward, (cond,))


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    generator: np.random.Generator | None = None,
) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p), as
    ``torch.nn.functional.dropout``; the identity (the same tensor) when p == 0 or
    not training. The mask is drawn from ``generator`` (a NumPy Generator: pass one
    for a reproducible run) as ``generator.random(shape) >= p``, on the CPU.

    The scale and the product are computed in float32 and rounded once, as PyTorch's
    CUDA kernel does (its CPU kernel rounds 1/(1-p) to the input's dtype first). The
    backward multiplies by the same saved mask and scale.
    """
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
        raise ValueError(f"dropout: probability p has to be between 0 and 1, got {p!r}")
    if p == 0 or not training:
        return input
    (x,), dtype = _operands("dropout", input)
    rng = generator if generator is not None else np.random.default_rng()
    keep = backend.to_device(rng.random(x.shape, dtype=np.float32) >= p, x.device)
    scale = np.float32(0) if p == 1 else np.float32(1) / np.float32(1 - p)
    factor = keep * scale  # float32: 0 or 1/(1-p)

    def backward(g):
        return (compute(g) * factor,)

    with ieee():
        return _result(compute(x.data) * factor, dtype, (x,), backward, (keep,))


def view(a: Tensor, *shape: Any) -> Tensor:
    """``Tensor.view``: the same values in another shape. An alias of ``reshape``:
    NumPy copies only when it must, so minimp has no contiguity rule to enforce
    (PyTorch's view refuses a non-contiguous input; its ``reshape`` would copy)."""
    return reshape(a, *shape)


def split(a: Tensor, split_size_or_sections: Any, dim: int = 0) -> tuple[Tensor, ...]:
    """Pieces of ``a`` along ``dim``, as ``torch.split``: an int gives pieces of that
    size (the last may be smaller), a list gives the size of each piece.

    Each piece is a view, exact in any dtype; in backward each puts its gradient, as
    stored, into its slice of zeros: summed over the pieces, that is the
    concatenation PyTorch's SplitBackward builds (an unused piece contributes 0).
    """
    dim = _dim(a, dim, "split")
    if a.ndim == 0:
        raise ValueError("split: cannot split a 0-d tensor")
    n = a.shape[dim]
    if isinstance(split_size_or_sections, int | np.integer) and not isinstance(
        split_size_or_sections, bool
    ):
        size = int(split_size_or_sections)
        if size <= 0 and n > 0:
            raise ValueError(f"split: split_size must be positive, got {size}")
        sizes = [min(size, n - start) for start in range(0, n, size)] if n else [0]
    elif isinstance(split_size_or_sections, list | tuple):
        sizes = [int(s) for s in split_size_or_sections]
        if any(s < 0 for s in sizes) or builtins.sum(sizes) != n:
            raise ValueError(
                f"split: sections {sizes} must be non-negative and sum to {n}, "
                f"the size of dim {dim}"
            )
    else:
        raise TypeError(
            f"split: split_size_or_sections must be an int or a list of ints, "
            f"got {type(split_size_or_sections).__name__}"
        )
    xp = _xp(a)
    pieces = []
    start = 0
    for size in sizes:
        index = (slice(None),) * dim + (slice(start, start + size),)

        def backward(g, index=index):
            full = xp.zeros(a.shape, dtype=g.dtype)
            full[index] = g
            return (full,)

        pieces.append(Tensor.from_op(a.data[index], (a,), backward, ()))
        start += size
    return tuple(pieces)


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
Tensor.view = view
Tensor.split = split
Tensor.masked_fill = masked_fill
Tensor.T = property(lambda self: transpose(self, -2, -1))
