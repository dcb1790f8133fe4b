"""Modules: ``Module``, ``Linear``, activations, ``Sequential`` and ``MLP``, and the
transformer's pieces: ``Embedding``, ``LayerNorm``, ``GELU`` and ``Dropout``.

As in PyTorch, a module's parameters are its tensor attributes that require a
gradient, found recursively through its sub-modules; ``module.to(dtype)``
converts them in place, so an optimizer built earlier still holds the same
tensors. ``functional`` is re-exported so ``minimp.nn.functional.cross_entropy``
reads as it does in PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import pairwise
from typing import Any

import numpy as np

from minimp import backend, functional
from minimp.tensor import Tensor, as_dtype, compute, float32, ieee, round_to_dtype

__all__ = [
    "GELU",
    "MLP",
    "Dropout",
    "Embedding",
    "LayerNorm",
    "Linear",
    "Module",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "clip_grad_norm_",
    "functional",
]


class Module:
    """Base class: subclasses set tensors and sub-modules as attributes and define forward.

    Sub-modules are found in attributes and in lists or tuples of them (a GPT's
    blocks), named as PyTorch names them: ``blocks.0.attn.qkv.weight``.
    """

    training = True  # as in PyTorch: train() and eval() switch it (Dropout reads it)

    def forward(self, *args: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any) -> Tensor:
        return self.forward(*args)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(f"{prefix}{name}.")
            elif isinstance(value, list | tuple):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item.named_parameters(f"{prefix}{name}.{i}.")

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def children(self) -> Iterator[Module]:
        """The direct sub-modules, in attribute order (through lists and tuples)."""
        for value in vars(self).values():
            items = value if isinstance(value, list | tuple) else (value,)
            yield from (item for item in items if isinstance(item, Module))

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module (named ``prefix``, "" by default) and every sub-module below it,
        depth first, each once, with its dotted name: ``torch.nn.Module.named_modules``."""
        seen: set[int] = set()

        def walk(module: Module, name: str) -> Iterator[tuple[str, Module]]:
            if id(module) in seen:
                return
            seen.add(id(module))
            yield name, module
            for attr, value in vars(module).items():
                items = value if isinstance(value, list | tuple) else (value,)
                for i, item in enumerate(items):
                    if isinstance(item, Module):
                        sub = f"{attr}.{i}" if isinstance(value, list | tuple) else attr
                        yield from walk(item, f"{name}.{sub}" if name else sub)

        yield from walk(self, prefix)

    def train(self, mode: bool = True) -> Module:
        """Set training mode here and in every sub-module (Dropout drops only in it)."""
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, target: Any) -> Module:
        """Convert every parameter in place to a dtype (rounding to nearest-even) or device."""
        for p in self.parameters():
            if isinstance(target, str) and target in backend.DEVICES:
                p.data = backend.to_device(p.data, target)
            else:
                with ieee():
                    p.data = round_to_dtype(p.data, as_dtype(target))
            p.grad = None
        return self

    def half(self) -> Module:
        return self.to("float16")

    def float(self) -> Module:
        return self.to("float32")

    def bfloat16(self) -> Module:
        return self.to("bfloat16")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Each parameter's values, by name, as NumPy arrays (copies)."""
        return {name: backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load values saved by ``state_dict``. Names, shapes and dtypes must match
        exactly (convert the model with ``.to()`` first); everything is checked before
        any parameter changes."""
        params = dict(self.named_parameters())
        missing, unexpected = params.keys() - state.keys(), state.keys() - params.keys()
        if missing or unexpected:
            raise KeyError(
                f"load_state_dict: missing {sorted(missing)}, unexpected {sorted(unexpected)}: "
                "the state was saved from a different model"
            )
        for name, p in params.items():
            value = state[name]
            if tuple(value.shape) != p.shape or value.dtype != p.dtype:
                raise ValueError(
                    f"load_state_dict: {name} is {value.dtype}{list(value.shape)} in the state, "
                    f"{p.dtype}{list(p.shape)} in the model"
                )
        for name, p in params.items():
            p.data = backend.to_device(np.array(state[name], copy=True), p.device)
            p.grad = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Module):
    """y = x @ W.T + b, with W of shape (out_features, in_features).

    Initialised as ``torch.nn.Linear``: W and b uniform in [-k, k], k = 1/sqrt(in_features),
    drawn in float32 from ``generator`` (a NumPy Generator; pass one to make runs
    reproducible) and then rounded to ``dtype``, so models built in different dtypes
    from the same seed start from the same weights, up to that rounding.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: Any = float32,
        device: str = "cpu",
        generator: np.random.Generator | None = None,
    ) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear needs positive sizes, got ({in_features}, {out_features})")
        rng = generator if generator is not None else np.random.default_rng()
        k = 1.0 / math.sqrt(in_features)

        def init(*shape: int) -> Tensor:
            values = rng.uniform(-k, k, size=shape).astype(np.float32)
            array = backend.to_device(values.astype(as_dtype(dtype)), device)
            return Tensor(array, requires_grad=True)

        self.in_features, self.out_features = in_features, out_features
        self.weight = init(out_features, in_features)
        self.bias = init(out_features) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return functional.linear(x, self.weight, self.bias)

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, dtype={self.weight.dtype})"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return functional.relu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return functional.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return functional.sigmoid(x)


class Sequential(Module):
    def __init__(self, *layers: Module) -> None:
        self.layers = list(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}(\n  {inner}\n)"


_ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}


class MLP(Sequential):
    """Linear layers of the given sizes with an activation between them (none after the last)."""

    def __init__(
        self,
        sizes: list[int] | tuple[int, ...],
        activation: str = "relu",
        *,
        dtype: Any = float32,
        device: str = "cpu",
        generator: np.random.Generator | None = None,
    ) -> None:
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: use one of {list(_ACTIVATIONS)}")
        rng = generator if generator is not None else np.random.default_rng()
        layers: list[Module] = []
        for i, (n_in, n_out) in enumerate(pairwise(sizes)):
            layers.append(Linear(n_in, n_out, dtype=dtype, device=device, generator=rng))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.sizes = tuple(sizes)


class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors of size ``embedding_dim``, as
    ``torch.nn.Embedding``: ``weight`` is initialised N(0, 1) (a GPT re-initialises
    it N(0, 0.02)), drawn in float32 from ``generator`` and rounded to ``dtype``.
    The input is an integer array of indices; see ``functional.embedding``."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        dtype: Any = float32,
        device: str = "cpu",
        generator: np.random.Generator | None = None,
    ) -> None:
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"Embedding needs positive sizes, got ({num_embeddings}, {embedding_dim})"
            )
        rng = generator if generator is not None else np.random.default_rng()
        values = rng.standard_normal((num_embeddings, embedding_dim), dtype=np.float32)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _parameter(values, dtype, device)

    def forward(self, input: Any) -> Tensor:
        return functional.embedding(input, self.weight)

    def __repr__(self) -> str:
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}, dtype={self.weight.dtype})"


class LayerNorm(Module):
    """Normalise over the last dims, then scale and shift, as ``torch.nn.LayerNorm``:
    ``weight`` starts at ones and ``bias`` at zeros. A gain of 1.0 is where pure
    float16 training stalls: an update below 2^-11 (half an ulp of 1.0) rounds away."""

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: Any = float32,
        device: str = "cpu",
    ) -> None:
        shape = (
            (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        )
        self.normalized_shape, self.eps = shape, eps
        affine = elementwise_affine
        self.weight = _parameter(np.ones(shape, np.float32), dtype, device) if affine else None
        self.bias = (
            _parameter(np.zeros(shape, np.float32), dtype, device) if affine and bias else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def __repr__(self) -> str:
        return f"LayerNorm({self.normalized_shape}, eps={self.eps})"


class GELU(Module):
    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return functional.gelu(x, self.approximate)


class Dropout(Module):
    """Dropout with probability ``p`` while training, the identity in eval(), as
    ``torch.nn.Dropout``. Masks are drawn from ``generator`` (a NumPy Generator,
    advanced by every call): the same seed gives the same masks."""

    def __init__(self, p: float = 0.5, *, generator: np.random.Generator | None = None) -> None:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: probability p has to be between 0 and 1, got {p!r}")
        self.p = p
        self.generator = generator if generator is not None else np.random.default_rng()

    def forward(self, x: Tensor) -> Tensor:
        return functional.dropout(x, self.p, self.training, self.generator)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


def _parameter(values: np.ndarray, dtype: Any, device: str) -> Tensor:
    """A leaf that requires grad, from float32 ``values`` rounded once to ``dtype``."""
    with ieee():
        array = round_to_dtype(values, as_dtype(dtype))
    return Tensor(backend.to_device(array, device), requires_grad=True)


def clip_grad_norm_(
    parameters: Iterable[Tensor] | Tensor,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> np.float32:
    """Scale gradients in place so their global L2 norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``; returns the total norm before clipping.

    With a loss scaler, call it after ``scaler.unscale_(optimizer)``: clipping scaled
    gradients would clip against a threshold multiplied by the scale (Micikevicius et
    al. 2018, sec. 3.2). As torch's, it computes each gradient's norm (accumulated in
    float32), then the norm of those norms, and multiplies every gradient by
    ``min(1, max_norm / (total + 1e-6))`` in float32 (rounded to a 16-bit gradient's
    dtype first, torch's rule for a 0-d operand). A non-finite norm propagates: inf
    gives a coefficient of 0, so inf entries become NaN and the others 0; NaN makes
    every gradient NaN. The scaler has already recorded the inf and will skip the step;
    ``error_if_nonfinite=True`` raises instead. ``foreach`` is accepted and ignored
    (one implementation here). Only the L2 norm (``norm_type=2``) is provided.

    The norm comes back as a 0-d float32 NumPy value (torch returns a 0-d tensor in the
    gradients' dtype): it prints, compares and multiplies like a number. On the GPU it
    stays there, a 0-d CuPy array: clipping reads nothing back (``error_if_nonfinite``
    does, as torch's).
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    if not (isinstance(max_norm, int | float) and not isinstance(max_norm, bool)) or not (
        max_norm > 0
    ):
        raise ValueError(f"max_norm must be a number > 0, got {max_norm!r}")
    if norm_type != 2.0:
        raise ValueError(f"norm_type must be 2.0 (the L2 norm minimp computes), got {norm_type!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return np.float32(0.0)
    xp = backend.array_module(grads[0].data)
    with ieee():
        norms = xp.stack([xp.sqrt((compute(g.data) ** 2).sum(dtype=np.float32)) for g in grads])
        total = xp.sqrt(xp.sum(xp.square(norms), dtype=np.float32))
        if xp is np:
            total = np.float32(total)
        if error_if_nonfinite and not bool(xp.isfinite(total)):  # a read back, as torch's
            raise RuntimeError(
                f"The total norm of order 2.0 for gradients from `parameters` is non-finite "
                f"({total}), so it cannot be clipped. To disable this error and scale the "
                "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
            )
        coef = xp.minimum(xp.divide(np.float32(max_norm), total + np.float32(1e-6)), np.float32(1))
        for g in grads:
            factor = coef if g.dtype == float32 else round_to_dtype(xp.asarray(coef), g.dtype)
            g.data = round_to_dtype(compute(g.data) * compute(factor), g.dtype)
    return total
