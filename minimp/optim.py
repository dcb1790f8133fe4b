"""Optimizers: ``SGD`` (momentum, weight decay) and ``Adam``, with PyTorch's update rules.

An optimizer updates its parameters in their own dtype. Every new value (a
moment, a parameter) is computed in float32 from the stored values and rounded
once to the parameter's dtype, as a fused GPU optimizer kernel does. So a
float16 parameter keeps float16 moments and loses any update smaller than half
its ulp, about 2^-11 of its magnitude (Micikevicius et al. 2018, sec. 3.1):
that is the failure FP32 master weights exist to prevent.

Pure 16-bit training can also be rescued without a 32-bit copy, by changing how
the new parameter value is stored (``update_rounding``; Zamirai et al. 2020):
stochastic rounding keeps small updates on average (Gupta et al. 2015), and
Kahan summation keeps what rounding dropped in a 16-bit buffer and adds it back.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from minimp import backend
from minimp.formats import round_to
from minimp.tensor import Tensor, compute, ieee, round_to_dtype

__all__ = ["SGD", "UPDATE_ROUNDINGS", "Adam", "Optimizer"]

UPDATE_ROUNDINGS = ("nearest", "stochastic", "kahan")


class Optimizer:
    """Holds ``param_groups`` (PyTorch's layout: a list of dicts with "params" and settings)
    and per-parameter ``state``.

    ``update_rounding`` says how the new value of a parameter, computed in float32
    as ``exact = p - delta``, is stored in the parameter's dtype:

    - ``"nearest"``: ``p = round_to_dtype(exact)``, as the hardware does. A 16-bit
      weight loses every update below half its ulp.
    - ``"stochastic"``: round up with probability (exact - lo) / (hi - lo), down
      otherwise (Gupta et al. 2015), drawing from ``generator``, a
      ``numpy.random.Generator`` (required). The stored weight equals ``exact`` in
      expectation (``exact`` is a float32: right to 2^-24 relative), so a small
      update moves it by a whole ulp once in so many steps instead of never.
      Only the weight write is stochastic, where the papers apply it: a weight
      sums many small updates and forgets none, so each one that nearest rounding
      drops is lost for good; a moment or momentum buffer decays by its beta at
      every step, so its rounding errors fade instead of piling up. (Not all of
      them: in bfloat16, 0.999 * v rounds back to v, so an ``exp_avg_sq`` with
      beta2 = 0.999 never decreases.)
    - ``"kahan"``: Kahan summation with a 16-bit carry (Zamirai et al. 2020)::

          exact = p + (compensation - delta)              # in float32
          p = round_to_dtype(exact)
          compensation = round_to_dtype(exact - p)        # what rounding dropped

      The buffer holds the rounding error of the last write and adds it back at
      the next one, so small updates pile up in it until they are big enough to
      move the weight. ``state["compensation"]`` is one buffer per parameter in
      its dtype (counted as optimizer state): 2 bytes per weight instead of the 4
      of an FP32 master copy. Stored in 16 bits, the carry keeps 8 (bfloat16) or
      11 (float16) significant bits of the error; fewer when it is a float16
      subnormal, which happens for weights below about 2^-3.

    For float32 parameters both alternatives are pointless: ``exact`` already is
    a float32 value, so it is stored unchanged and the compensation stays 0.

    ``state_dict()`` records ``update_rounding`` and the generator's
    ``bit_generator.state`` (arrays as lists: JSON, no pickle) with the group's
    settings; ``load_state_dict()`` restores that state into the generator the
    optimizer was given, so a resumed stochastic run continues bit for bit.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        defaults: dict[str, Any],
        update_rounding: str = "nearest",
        generator: np.random.Generator | None = None,
    ) -> None:
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for p in params:
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError(
                    "optimizer parameters must be Tensors with requires_grad=True "
                    "(pass model.parameters())"
                )
        if defaults["lr"] < 0:
            raise ValueError(f"learning rate must be >= 0, got {defaults['lr']}")
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(
                f"generator must be a numpy.random.Generator, got {type(generator).__name__}: "
                "pass generator=numpy.random.default_rng(seed)"
            )
        _check_update_rounding(update_rounding, generator)
        defaults = {**defaults, "update_rounding": update_rounding, "generator": generator}
        self.defaults = defaults
        self.param_groups = [{"params": params, **defaults}]
        self.state: dict[int, dict[str, Any]] = {}  # keyed by id(parameter)

    def __deepcopy__(self, memo: dict[int, Any]) -> Optimizer:
        """A copy that optimizes the copies of the parameters: ``state`` is keyed by
        ``id(parameter)``, so its keys must follow the parameters to their copies
        (``copy.deepcopy`` of a whole training run relies on this)."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for name, value in vars(self).items():
            if name != "state":
                setattr(new, name, copy.deepcopy(value, memo))
        params = [p for group in self.param_groups for p in group["params"]]
        new.state = {
            id(copy.deepcopy(p, memo)): copy.deepcopy(self.state[id(p)], memo)
            for p in params
            if id(p) in self.state
        }
        return new

    def zero_grad(self) -> None:
        """Drop the gradients (set them to None, PyTorch's default)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: settings per group (params as indices) and state by index.
        Arrays come back as NumPy copies; counters as Python ints; the generator as
        its ``bit_generator.state`` in plain JSON values (None without one)."""
        params = [p for group in self.param_groups for p in group["params"]]
        index = {id(p): i for i, p in enumerate(params)}
        groups = [
            {
                **{k: v for k, v in group.items() if k != "params"},
                "generator": _generator_state(group["generator"]),
                "params": [index[id(p)] for p in group["params"]],
            }
            for group in self.param_groups
        ]
        state = {
            index[id(p)]: {
                k: v if isinstance(v, int) else backend.to_numpy(v).copy()
                for k, v in self.state[id(p)].items()
            }
            for p in params
            if id(p) in self.state
        }
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what ``state_dict`` returned, for the same parameters; checks the
        structure, shapes, dtypes and settings before changing anything.

        A saved generator state is set into this optimizer's own generator, in
        place; one saved as None leaves the generator as it is. A state dict that
        rounds stochastically needs an optimizer given a generator."""
        params = [p for group in self.param_groups for p in group["params"]]
        groups = state_dict.get("param_groups")
        if groups is None or "state" not in state_dict:
            raise KeyError("optimizer state dict needs 'param_groups' and 'state'")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("optimizer state dict is for a different set of parameters")
        new_state = {}
        for i, values in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(
                    f"optimizer state dict has state for parameter {i}, of {len(params)}"
                )
            p = params[i]
            for key, value in values.items():
                if not isinstance(value, int) and (
                    value.shape != p.shape or value.dtype != p.dtype
                ):
                    raise ValueError(
                        f"optimizer state {key!r} of parameter {i} is "
                        f"{value.dtype}{list(value.shape)}, "
                        f"the parameter is {p.dtype}{list(p.shape)}"
                    )
            new_state[id(p)] = {
                k: v if isinstance(v, int) else backend.to_device(np.array(v, copy=True), p.device)
                for k, v in values.items()
            }
        settings = []
        for group, saved in zip(self.param_groups, groups, strict=True):
            values = {
                k: (tuple(v) if isinstance(v, list) else v)
                for k, v in saved.items()
                if k not in ("params", "generator")
            }
            mode = values.get("update_rounding", group["update_rounding"])
            _check_update_rounding(mode, group["generator"])
            generator_state = saved.get("generator")
            if generator_state is not None and group["generator"] is not None:
                _set_generator_state(copy.deepcopy(group["generator"]), generator_state)
            settings.append((values, generator_state))
        for group, (values, generator_state) in zip(self.param_groups, settings, strict=True):
            group.update(values)
            if generator_state is not None and group["generator"] is not None:
                _set_generator_state(group["generator"], generator_state)
        self.state = new_state

    def step(self) -> None:
        with ieee():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, group, self.state.setdefault(id(p), {}))

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _write(self, p: Tensor, group: dict[str, Any], state: dict[str, Any], delta: Any) -> None:
        """Store ``p - delta`` (``delta`` a float32 array) in p's dtype, rounded as
        ``group["update_rounding"]`` says (see the class docstring)."""
        mode = group["update_rounding"]
        if mode == "nearest":
            p.data = round_to_dtype(compute(p.data) - delta, p.dtype)
        elif mode == "stochastic":
            exact = compute(p.data) - delta
            # round_to returns float32 values of p's format: the cast is exact.
            p.data = round_to(exact, p.dtype, "stochastic", group["generator"]).astype(p.dtype)
        else:
            if "compensation" not in state:
                state["compensation"] = backend.array_module(p.data).zeros_like(p.data)
            # The carry and delta are both small: adding them first keeps their bits.
            exact = compute(p.data) + (compute(state["compensation"]) - delta)
            p.data = round_to_dtype(exact, p.dtype)
            # exact and p are within half a 16-bit ulp of each other, so their
            # float32 difference is exact; only storing it in 16 bits rounds.
            state["compensation"] = round_to_dtype(exact - compute(p.data), p.dtype)


def _check_update_rounding(mode: str, generator: np.random.Generator | None) -> None:
    if mode not in UPDATE_ROUNDINGS:
        raise ValueError(
            f"unknown update_rounding {mode!r}: use one of {', '.join(UPDATE_ROUNDINGS)}"
        )
    if mode == "stochastic" and generator is None:
        raise ValueError(
            "update_rounding='stochastic' needs a random generator: "
            "pass generator=numpy.random.default_rng(seed)"
        )


def _generator_state(generator: np.random.Generator | None) -> dict[str, Any] | None:
    """``bit_generator.state`` as JSON values: MT19937, SFC64 and Philox hold arrays."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value.tolist() if isinstance(value, np.ndarray) else value

    return None if generator is None else plain(generator.bit_generator.state)


def _set_generator_state(generator: np.random.Generator, state: dict[str, Any]) -> None:
    """NumPy's setter takes lists where the state held arrays."""
    try:
        generator.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            f"optimizer state dict holds a generator state this "
            f"{type(generator.bit_generator).__name__} generator cannot take: {err}"
        ) from None


class SGD(Optimizer):
    """p <- p - lr * v, with v = momentum * v + (g + weight_decay * p) (PyTorch's SGD).

    ``update_rounding`` and ``generator``: see :class:`Optimizer`."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        update_rounding: str = "nearest",
        generator: np.random.Generator | None = None,
    ) -> None:
        if momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}"
            )
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults, update_rounding, generator)

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        g = compute(p.grad.data)
        if group["weight_decay"]:
            g = g + group["weight_decay"] * compute(p.data)
        if group["momentum"]:
            if "momentum_buffer" in state:
                g = group["momentum"] * compute(state["momentum_buffer"]) + g
            state["momentum_buffer"] = round_to_dtype(g, p.dtype)
        self._write(p, group, state, group["lr"] * g)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` computes it, bias correction included.

    ``update_rounding`` and ``generator``: see :class:`Optimizer`."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        update_rounding: str = "nearest",
        generator: np.random.Generator | None = None,
    ) -> None:
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, update_rounding, generator)

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        g = compute(p.grad.data)
        if group["weight_decay"]:
            g = g + group["weight_decay"] * compute(p.data)
        if not state:
            state["step"] = 0
            xp = backend.array_module(p.data)
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        m = compute(state["exp_avg"])
        m = m + (1 - beta1) * (g - m)
        v = beta2 * compute(state["exp_avg_sq"]) + (1 - beta2) * g * g
        state["exp_avg"] = m = round_to_dtype(m, p.dtype)
        state["exp_avg_sq"] = v = round_to_dtype(v, p.dtype)
        step_size = group["lr"] / (1 - beta1 ** state["step"])
        denom = (
            backend.array_module(v).sqrt(compute(v)) / math.sqrt(1 - beta2 ** state["step"])
            + group["eps"]
        )
        self._write(p, group, state, step_size * (compute(m) / denom))
