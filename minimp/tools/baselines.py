"""The same training step without minimp: hand-written NumPy (CuPy), and PyTorch.

A benchmark of minimp's regimes says how fast minimp is; it cannot say how much of
that time is the engine (the graph, the closures, the dtype checks, Python per op)
and how much is arithmetic any implementation must do. So the benchmark times,
beside minimp and in the same run, the same network trained the same way by:

- ``NumpyMLP``: the step written out by hand for this one MLP, with no autograd
  engine: one matmul per layer forward, two backward, in-place SGD. It is the floor
  for engine overhead: what minimp would cost if its engine were free.
  ``precision="fp32"`` follows minimp's ``fp32`` regime; ``precision="mixed"``
  follows ``mixed-dynamic``: float16 weights, activations and gradients, matmuls
  with float32 accumulation, float32 master weights, the loss in float32, and a
  dynamic loss scale with PyTorch's GradScaler rule. On the same batches both
  follow minimp's training exactly (bit for bit, on the CPU), so the time
  difference is overhead and nothing else.
- ``TorchMLP``: the network in PyTorch eager, ``fp32`` or ``amp`` (autocast to
  float16 and ``torch.amp.GradScaler``): what a production framework costs for the
  same work, an engine with C++ kernels and dispatch. Its arithmetic differs (its own
  BLAS, its own kernels), so it agrees with the others to rounding, not bit for bit.

Every baseline is built from (sizes, batches, lr, momentum, seed, device, precision),
starts from the float32 weights ``minimp.nn.MLP(sizes, "relu",
generator=np.random.default_rng(seed))`` draws, and moves its batches to the device
and dtype once, before any clock starts. Calling it trains one step on the next
batch (cycling) and returns the loss as a device scalar, without synchronising the
device; ``loss_value()`` reads it as a float. Any of them can be handed to
``minimp.tools.bench.time_steps``.

On the CPU, NumPy has no float16 BLAS (its float16 matmul is 250-300x slower than
float32's), so "float16 matmul, float32 accumulation" is computed as minimp does it:
a float32 matmul of the widened float16 operands, rounded once to float16
(``backend.widen`` / ``backend.narrow``, the fastest exact casts there are). That is
what the hardware rule means, not an engine feature, so the floor uses it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import cycle
from typing import Any

import numpy as np

from minimp import backend, nn

__all__ = ["NumpyMLP", "TorchMLP", "initial_weights", "torch_available"]

Batches = Sequence[tuple[np.ndarray, np.ndarray]]


def initial_weights(sizes: Sequence[int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (out, in), bias (out,)) per layer, float32: minimp's MLP initialisation."""
    model = nn.MLP(tuple(sizes), "relu", generator=np.random.default_rng(seed))
    return [
        (layer.weight.numpy().copy(), layer.bias.numpy().copy())
        for layer in model.layers
        if isinstance(layer, nn.Linear)
    ]


def _check_batches(sizes: Sequence[int], batches: Batches) -> None:
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
    if not batches:
        raise ValueError("batches is empty: give at least one (inputs, targets) pair")
    for x, y in batches:
        if x.ndim != 2 or x.shape[1] != sizes[0] or np.shape(y) != x.shape[:1]:
            raise ValueError(
                f"a batch of inputs {x.shape} and targets {np.shape(y)} does not fit an MLP "
                f"of sizes {tuple(sizes)}: inputs must be (N, {sizes[0]}), targets (N,)"
            )
        if np.asarray(y).dtype.kind not in "iu":
            raise TypeError(f"targets must be integer class indices, got {np.asarray(y).dtype}")


def _ieee() -> np.errstate:
    """Overflow to inf is an expected event in float16 (the loss scale looks for it)."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")


class NumpyMLP:
    """An MLP (Linear, ReLU, ..., Linear) trained by a hand-written step: cross-entropy
    (mean over the batch), backward, SGD with momentum (PyTorch's rule), no engine.

    ``precision="fp32"``: everything in float32, minimp's ``fp32`` regime.
    ``precision="mixed"``: minimp's ``mixed-dynamic`` regime (Micikevicius et al. 2018)::

        logits = MLP(x) in float16: each matmul accumulates in float32, rounds once
        loss   = cross_entropy(float32(logits))          # sec. 3.3
        grads  = backward(loss * S) in float16, widened to float32
        if all grads finite:                             # else: skip the step
            v = momentum * v + grads / S;  master -= lr * v;  weights = float16(master)
        S: halve on inf/NaN; double after growth_interval clean steps  (sec. 3.2)

    As in ``minimp.train``, the float32 initialisation is rounded to float16 and the
    masters start as copies of those values. Gradients pass through float16, as they
    would on a GPU, so they underflow and overflow exactly as minimp's do.

    On the CPU the float16 weights are held widened, as float32 arrays of float16
    values: BLAS multiplies only float32, and the weights are used twice per step
    (forward and backward), so widening them once per update beats widening at each
    use. Activations are held as float16 (half the memory) and widened where used.
    On the GPU everything 16-bit is a real float16 array and cuBLAS multiplies it.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batches: Batches,
        lr: float = 0.05,
        momentum: float = 0.9,
        seed: int = 0,
        device: str = "cpu",
        precision: str = "fp32",
        *,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if precision not in ("fp32", "mixed"):
            raise ValueError(f"NumpyMLP precision must be 'fp32' or 'mixed', got {precision!r}")
        _check_batches(sizes, batches)
        backend.check_device(device)
        self.sizes, self.device, self.precision = tuple(sizes), device, precision
        self.name = f"{'numpy' if device == 'cpu' else 'cupy'} {precision}"
        self.lr, self.momentum = lr, momentum
        self.mixed = precision == "mixed"
        if self.mixed:
            # An activation or gradient is stored rounded to float16; on the CPU a
            # matmul takes it widened to float32 (exact), on the GPU as it is.
            self._store: Callable[[Any], Any] = lambda a: backend.narrow(a, np.float16)
            self._operand: Callable[[Any], Any] = backend.widen if device == "cpu" else _same
        else:
            self._store = self._operand = _same
        # Weight then bias, layer by layer: minimp's parameter order.
        weights = [a for layer in initial_weights(sizes, seed) for a in layer]
        self.params = [backend.to_device(a, device) for a in weights]
        self.xp = xp = backend.array_module(self.params[0])
        if self.mixed:
            with _ieee():
                self.params = [self._operand(backend.narrow(p, np.float16)) for p in self.params]
            self.masters = [backend.widen(p).copy() for p in self.params]
        else:
            self.masters = []
        self.velocity = [xp.zeros(p.shape, np.float32) for p in self.params]  # momentum buffers
        self.loss_scale = float(np.float32(init_scale)) if self.mixed else 1.0
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self._growth_tracker = 0  # clean steps since the last growth or overflow
        self.found_inf = False  # the last step's gradients held inf/NaN: it was skipped
        with _ieee():
            self.batches = [
                (
                    backend.to_device(self._store(np.asarray(x, np.float32)), device),
                    backend.to_device(np.asarray(y), device),
                    xp.arange(len(y)),
                )
                for x, y in batches
            ]
        self._next = cycle(self.batches)
        self.loss: Any = None

    # ---- the step ---------------------------------------------------------------------
    def __call__(self) -> Any:
        """Train one step on the next batch; return the loss (a device scalar, no sync)."""
        with _ieee():
            self.loss, saved = self._forward(*next(self._next))
            grads = self._backward(saved)
            self._update(grads)
        return self.loss

    def _forward(self, x: Any, y: Any, rows: Any) -> tuple[Any, tuple]:
        """The loss, and what backward needs: each layer's input, and log-probabilities."""
        xp, n_layers = self.xp, len(self.params) // 2
        inputs, h = [], x
        for i in range(n_layers):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            inputs.append(h)
            z = self._operand(h) @ w.T
            z += b
            if i < n_layers - 1:
                # ReLU before the rounding: exact, since rounding is monotonic and keeps 0.
                xp.maximum(z, 0, out=z)
            h = self._store(z)
        # The loss in float32 (sec. 3.3), shifted by the max so exp cannot overflow.
        logits = backend.widen(h)
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        loss = -logp[rows, y].sum(dtype=np.float32) / len(rows)
        return loss, (inputs, logp, y, rows)

    def _backward(self, saved: tuple) -> list[Any]:
        """float32 gradients of the parameters (of the scaled loss, in mixed precision)."""
        xp = self.xp
        inputs, logp, y, rows = saved
        # d loss / d logits = (softmax - onehot) / N, times the loss scale.
        g = xp.exp(logp)
        g[rows, y] -= 1
        g *= np.float32(self.loss_scale) / len(rows)
        g = self._operand(self._store(g))
        grads: list[Any] = [None] * len(self.params)
        for i in reversed(range(len(inputs))):
            h = self._operand(inputs[i])
            grads[2 * i] = backend.widen(self._store(g.T @ h))
            grads[2 * i + 1] = backend.widen(self._store(g.sum(axis=0, dtype=np.float32)))
            if i > 0:
                # ReLU's backward selects, as minimp's and PyTorch's do: the gradient
                # passes where the ReLU's output (the next layer's input) is not 0.
                g = xp.where(h != 0, self._operand(self._store(g @ self.params[2 * i])), 0)
        return grads

    def _update(self, grads: list[Any]) -> None:
        """SGD with momentum on the float32 weights (the masters), unless a gradient
        overflowed; then the dynamic scale's rule."""
        if not self.mixed:
            for w, v, g in zip(self.params, self.velocity, grads, strict=True):
                v *= self.momentum
                v += g
                w -= self.lr * v
            return
        finite = [self.xp.isfinite(g).all() for g in grads]
        self.found_inf = not bool(self.xp.stack(finite).all())  # one device sync
        if not self.found_inf:
            # PyTorch computes 1/S in float64 and rounds it to float32; so does minimp.
            inv_scale = np.float32(1.0 / self.loss_scale)
            for i, (w, v, g) in enumerate(zip(self.masters, self.velocity, grads, strict=True)):
                g *= inv_scale
                v *= self.momentum
                v += g
                w -= self.lr * v
                self.params[i] = self._operand(backend.narrow(w, np.float16))
        self._update_scale()

    def _update_scale(self) -> None:
        """PyTorch's GradScaler update, in float32 (minimp.amp.GradScaler, hysteresis 1)."""
        if self.found_inf:
            self.loss_scale = float(np.float32(self.loss_scale * self.backoff_factor))
            self._growth_tracker = 0
            return
        self._growth_tracker += 1
        if self._growth_tracker == self.growth_interval:
            grown = float(np.float32(self.loss_scale * self.growth_factor))
            self.loss_scale = grown if math.isfinite(grown) else self.loss_scale
            self._growth_tracker = 0

    # ---- what it holds ------------------------------------------------------------------
    def loss_value(self) -> float:
        """The last step's loss as a Python float (synchronises the device)."""
        if self.loss is None:
            raise RuntimeError(f"{self.name}: no step has run yet")
        return float(self.loss)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The float32 weights the optimizer updates (the masters in mixed precision), as
        NumPy copies, under minimp's names ("layers.0.weight", ...)."""
        weights = self.masters if self.mixed else self.params
        return {
            name: backend.to_numpy(w).copy() for name, w in zip(self._names(), weights, strict=True)
        }

    def _names(self) -> list[str]:
        layers = range(0, 2 * (len(self.sizes) - 1), 2)  # Linear layers, between ReLUs
        return [f"layers.{i}.{k}" for i in layers for k in ("weight", "bias")]

    def memory(self) -> dict[str, int]:
        """Bytes of the arrays one step holds, by category, counted from the arrays
        themselves while running one real training step (it advances training):
        the weights the matmuls use (float32 arrays of float16 values on the CPU in
        mixed precision, see the class docstring), the float32 masters, the float32
        parameter gradients held until the update, the momentum buffers, and the
        activations kept for backward (each layer's input, the batch included, and the
        float32 log-probabilities). Temporaries that live inside one layer's forward or
        backward are not counted, as minimp's memory report does not count them."""
        with _ieee():
            self.loss, saved = self._forward(*next(self._next))
            inputs, logp, *_ = saved
            activations = sum(a.nbytes for a in inputs) + logp.nbytes
            grads = self._backward(saved)
            self._update(grads)
        return {
            "parameters": sum(p.nbytes for p in self.params),
            "master weights": sum(m.nbytes for m in self.masters),
            "gradients": sum(g.nbytes for g in grads),
            "optimizer state": sum(v.nbytes for v in self.velocity),
            "activations": activations,
        }


def _same(a: Any) -> Any:
    return a


# ---- PyTorch ------------------------------------------------------------------------------


def torch_available(device: str = "cpu") -> bool:
    """True when PyTorch can be imported and, for ``device="cuda"``, sees a GPU (it is
    optional: a test oracle and a baseline)."""
    try:
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError(
            "TorchMLP needs PyTorch, which is not installed: pip install torch (the CPU "
            "build is enough on a CPU), or leave the PyTorch baselines out "
            "(minimp.tools.baselines.torch_available() says whether they can run)"
        ) from None
    return torch


class TorchMLP:
    """The same MLP and step in PyTorch eager: ``torch.nn.Linear`` layers loaded with
    minimp's initial weights, ``torch.optim.SGD`` with momentum (its default
    implementation), ``F.cross_entropy``.

    ``precision="fp32"``: float32 throughout. ``precision="amp"``: PyTorch's recipe,
    ``torch.autocast(device, dtype=torch.float16)`` around the forward pass and
    ``torch.amp.GradScaler(device)``; the float32 parameters are the masters and
    autocast makes their float16 copies at each forward. Inputs are stored as float16
    for ``amp`` (as minimp's mixed regimes and ``NumpyMLP`` store them).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batches: Batches,
        lr: float = 0.05,
        momentum: float = 0.9,
        seed: int = 0,
        device: str = "cpu",
        precision: str = "fp32",
        *,
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
    ) -> None:
        torch = _torch()
        if precision not in ("fp32", "amp"):
            raise ValueError(f"TorchMLP precision must be 'fp32' or 'amp', got {precision!r}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but PyTorch sees no CUDA GPU")
        _check_batches(sizes, batches)
        self.torch, self.sizes, self.device, self.precision = torch, tuple(sizes), device, precision
        self.name = f"torch {precision}"
        self.amp = precision == "amp"
        layers: list[Any] = []
        for i, (w, b) in enumerate(initial_weights(sizes, seed)):
            # skip_init: no random draw (PyTorch's global generator is left alone).
            linear = torch.nn.utils.skip_init(torch.nn.Linear, *w.shape[::-1], device=device)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(w))
                linear.bias.copy_(torch.from_numpy(b))
            layers += [linear] if i == len(sizes) - 2 else [linear, torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.scaler = torch.amp.GradScaler(
            device, init_scale=init_scale, growth_interval=growth_interval, enabled=self.amp
        )
        dtype = torch.float16 if self.amp else torch.float32
        self.batches = [
            (
                torch.from_numpy(np.asarray(x, np.float32)).to(device=device, dtype=dtype),
                torch.from_numpy(np.asarray(y, np.int64)).to(device),
            )
            for x, y in batches
        ]
        self._next = cycle(self.batches)
        self.loss: Any = None

    def __call__(self) -> Any:
        """Train one step on the next batch; return the loss tensor (no ``.item()``)."""
        x, y = next(self._next)
        with self.torch.autocast(self.device, dtype=self.torch.float16, enabled=self.amp):
            logits = self.model(x)
        loss = self.torch.nn.functional.cross_entropy(logits.float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # PyTorch reads found_inf here: a sync on a GPU
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss.detach()
        return self.loss

    def loss_value(self) -> float:
        """The last step's loss as a Python float (synchronises the device)."""
        if self.loss is None:
            raise RuntimeError(f"{self.name}: no step has run yet")
        return self.loss.item()

    def state_dict(self) -> dict[str, np.ndarray]:
        """The float32 parameters as NumPy copies, under minimp's names."""
        return {
            f"layers.{name}": p.detach().cpu().numpy().copy()
            for name, p in self.model.named_parameters()
        }

    def memory(self) -> dict[str, int]:
        """Bytes by category, counted from the tensors while running one real training
        step (it advances training). Activations are what autograd saves for backward,
        seen through ``torch.autograd.graph.saved_tensors_hooks``, each storage once (the
        batch and the targets included, parameters and their casts not). With ``amp``
        the float32 parameters are the "master weights", and "parameters" are the
        float16 copies autocast makes of each of them for the forward pass (the weights'
        copies are kept until backward). What PyTorch's kernels or its allocator hold
        besides is not counted.
        """
        torch = self.torch
        params = list(self.model.parameters())
        param_storages = {p.untyped_storage().data_ptr() for p in params}
        saved: dict[int, int] = {}  # bytes by storage

        def pack(t: Any) -> Any:
            storage = t.untyped_storage()
            if storage.data_ptr() not in param_storages and not _copies_a_parameter(t):
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            x, y = next(self._next)
            with torch.autocast(self.device, dtype=torch.float16, enabled=self.amp):
                logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        self.scaler.scale(loss).backward()
        gradients = sum(_nbytes(p.grad) for p in params if p.grad is not None)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss.detach()
        state = sum(
            _nbytes(v)
            for s in self.optimizer.state.values()
            for v in s.values()
            if torch.is_tensor(v)
        )
        weights = sum(_nbytes(p) for p in params)
        return {
            "parameters": weights // 2 if self.amp else weights,  # float16 copies with amp
            "master weights": weights if self.amp else 0,
            "gradients": gradients,
            "optimizer state": state,
            "activations": sum(saved.values()),
        }


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size()


def _copies_a_parameter(t: Any) -> bool:
    """Whether a saved tensor is a parameter seen through casts and views (autocast's
    float16 weight, transposed): its graph leads straight back to a leaf."""
    fn = t.grad_fn
    while fn is not None and type(fn).__name__ in ("ToCopyBackward0", "TBackward0"):
        fn = fn.next_functions[0][0]
    return fn is not None and type(fn).__name__ == "AccumulateGrad"
