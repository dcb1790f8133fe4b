"""Optimizers: ``SGD``, ``Adam`` and ``AdamW`` with torch.optim's settings, parameter
groups and update rules.

Every new value (a moment, a parameter) is computed in float32 from the stored
values and rounded once to the parameter's dtype, as torch's fused kernels do: the
update of a 16-bit parameter uses the float32 moments it has just computed, and
the moments are stored rounded afterwards. So a float16 parameter keeps float16
moments and loses any update smaller than half its ulp, about 2^-11 of its
magnitude (Micikevicius et al. 2018, sec. 3.1): that is the failure FP32 master
weights exist to prevent.

Pure 16-bit training can also be rescued without a 32-bit copy, by changing how
the new parameter value is stored (``update_rounding``; Zamirai et al. 2020):
stochastic rounding keeps small updates on average (Gupta et al. 2015), and
Kahan summation keeps what rounding dropped in a 16-bit buffer and adds it back.

Settings are validated in one place (``_SETTINGS``), at construction, in
``add_param_group`` and in ``load_state_dict``: a bad one is refused with its name,
its value and what is allowed, and the optimizer is left as it was.

``minimp.optim.lr_scheduler`` holds the learning-rate schedules.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from numbers import Real
from typing import Any

import numpy as np

from minimp import backend
from minimp.formats import round_to
from minimp.tensor import Tensor, compute, ieee, round_to_dtype

__all__ = ["SGD", "UPDATE_ROUNDINGS", "Adam", "AdamW", "Optimizer"]

UPDATE_ROUNDINGS = ("nearest", "stochastic", "kahan")


def _real(low: float, high: float = math.inf, *, closed_high: bool = False) -> Callable:
    def check(value: Any) -> str | None:
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and low <= value and (value <= high if closed_high else value < high)
        bound = "]" if closed_high else ")"
        return None if ok else f"a finite number in [{low}, {high}{bound}"

    return check


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


def _betas(value: Any) -> str | None:
    ok = isinstance(value, tuple | list) and len(value) == 2
    ok = ok and all(_real(0.0, 1.0)(b) is None for b in value)
    return None if ok else "a pair (beta1, beta2) of numbers in [0, 1)"


def _rounding(value: Any) -> str | None:
    return None if value in UPDATE_ROUNDINGS else f"one of {', '.join(UPDATE_ROUNDINGS)}"


# Every setting a group may hold, and what it allows (None: allowed).
_SETTINGS: dict[str, Callable[[Any], str | None]] = {
    "lr": _real(0.0),
    "momentum": _real(0.0),
    "dampening": _real(-math.inf),
    "weight_decay": _real(0.0),
    "nesterov": _flag,
    "maximize": _flag,
    "betas": _betas,
    "eps": _real(0.0),
    "amsgrad": _flag,
    "demonstrate_16bit_moments": _flag,
    "update_rounding": _rounding,
}


def _check_setting(name: str, value: Any, where: str = "") -> None:
    allowed = _SETTINGS[name](value)
    if allowed is not None:
        raise ValueError(f"{where}{name} must be {allowed}, got {value!r}")


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
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        update_rounding: str = "nearest",
        generator: np.random.Generator | None = None,
    ) -> None:
        if isinstance(params, Tensor) or not isinstance(params, Iterable):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {type(params).__name__}: pass [tensor] or model.parameters()"
            )
        if hasattr(params, "parameters") and hasattr(params, "forward"):
            raise TypeError(
                f"the optimizer got a {type(params).__name__} module: pass model.parameters()"
            )
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(
                f"generator must be a numpy.random.Generator, got {type(generator).__name__}: "
                "pass generator=numpy.random.default_rng(seed)"
            )
        for name, value in defaults.items():
            _check_setting(name, value)
        _check_update_rounding(update_rounding, generator)
        self.defaults = {**defaults, "update_rounding": update_rounding, "generator": generator}
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}  # keyed by id(parameter)
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (a dict with "params" and any settings), as torch's: settings it
        omits take the optimizer's defaults; a parameter already in a group is refused."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(
                "a parameter group is a dict with a 'params' entry (and optional settings), "
                f"got {param_group!r}"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError(
                    "optimizer parameters must be Tensors with requires_grad=True "
                    f"(pass model.parameters()), got {type(p).__name__}"
                )
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if len({id(p) for p in params}) != len(params):
            warnings.warn(  # torch 2.13's words and behaviour: it warns and keeps them
                "optimizer contains a parameter group with duplicate parameters; in future, "
                "this will cause an error; see github.com/pytorch/pytorch/issues/40967 for "
                "more information",
                UserWarning,
                stacklevel=3,
            )
        unknown = sorted(set(param_group) - set(self.defaults) - {"params", "initial_lr"})
        if unknown:
            raise ValueError(
                f"unknown setting {unknown[0]!r} in a parameter group: "
                f"{type(self).__name__} takes {', '.join(sorted(self.defaults))}"
            )
        group = {**self.defaults, **param_group, "params": params}
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        for name in self.defaults:
            if name != "generator":
                _check_setting(name, group[name])
        self._check_group(group)
        _check_update_rounding(group["update_rounding"], group["generator"])
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if seen & {id(p) for p in params}:
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Rules across settings (SGD's nesterov); one group's settings are valid alone."""

    def _state_keys(self, group: dict[str, Any]) -> set[str]:
        """The entries a parameter's state holds after its first step."""
        return {"compensation"} if group["update_rounding"] == "kahan" else set()

    def __deepcopy__(self, memo: dict[int, Any]) -> Optimizer:
        """A copy that optimizes the copies of the parameters: ``state`` is keyed by
        ``id(parameter)``, so its keys must follow the parameters to their copies
        (``copy.deepcopy`` of a whole training run relies on this)."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for name, value in vars(self).items():
            if name != "state":
                setattr(new, name, copy.deepcopy(value, memo))
        new.state = {
            id(copy.deepcopy(p, memo)): copy.deepcopy(self.state[id(p)], memo)
            for p in self._params()
            if id(p) in self.state
        }
        return new

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        """Drop the gradients (set them to None, PyTorch's default)."""
        for p in self._params():
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: settings per group (params as indices) and state by index.
        Arrays come back as NumPy copies; counters as Python ints; the generator as
        its ``bit_generator.state`` in plain JSON values (None without one)."""
        params = self._params()
        index = {id(p): i for i, p in reversed(list(enumerate(params)))}
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
        """Load what ``state_dict`` returned, for the same parameters, all or nothing.

        Every setting is checked as the constructor checks it, and must be one this
        optimizer has (a missing or unknown one is refused); ``update_rounding`` must
        be this optimizer's (it is part of the regime: build the optimizer with it).
        Every parameter's state must hold exactly the entries a step leaves (a removed
        momentum buffer is refused, not silently restarted), each an array of the
        parameter's shape and dtype, and ``step`` an int >= 1. A parameter without
        state (never stepped, as in torch) starts afresh.

        A saved generator state is set into this optimizer's own generator, in
        place; one saved as None leaves the generator as it is."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"optimizer state dict must be a dict, got {type(state_dict).__name__}")
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or not isinstance(state_dict.get("state"), dict):
            raise KeyError(
                "optimizer state dict needs 'param_groups' (a list) and 'state' (a dict)"
            )
        if [len(g.get("params", ())) if isinstance(g, dict) else None for g in groups] != [
            len(g["params"]) for g in self.param_groups
        ]:
            raise ValueError("optimizer state dict is for a different set of parameters")
        params = self._params()
        settings = []
        for n, (group, saved) in enumerate(zip(self.param_groups, groups, strict=True)):
            where = f"optimizer state dict, param_groups[{n}]: "
            values = {k: v for k, v in saved.items() if k not in ("params", "generator")}
            expected = set(self.defaults) - {"generator"}
            unknown = sorted(set(values) - expected - {"initial_lr"})
            missing = sorted(expected - set(values))
            if unknown or missing:
                raise ValueError(
                    f"{where}unknown settings {unknown} and missing settings {missing}: "
                    f"{type(self).__name__} has {', '.join(sorted(expected))}"
                )
            if isinstance(values.get("betas"), list):
                values["betas"] = tuple(values["betas"])
            for name in expected:
                _check_setting(name, values[name], where)
            if "initial_lr" in values:
                _check_setting("lr", values["initial_lr"], where + "initial_")
            self._check_group({**group, **values})
            if values["update_rounding"] != group["update_rounding"]:
                raise ValueError(
                    f"{where}update_rounding is {values['update_rounding']!r}, this optimizer's "
                    f"is {group['update_rounding']!r}: build the optimizer with "
                    f"update_rounding={values['update_rounding']!r} to load it"
                )
            generator_state = saved.get("generator")
            if generator_state is not None and group["generator"] is not None:
                _set_generator_state(copy.deepcopy(group["generator"]), generator_state)
            settings.append((values, generator_state))
        owner = [g for g, group in zip(groups, self.param_groups, strict=True)
                 for _ in group["params"]]  # fmt: skip
        new_state = {}
        for i, values in state_dict["state"].items():
            try:
                i = int(i)
            except (TypeError, ValueError):
                raise ValueError(f"optimizer state dict has state for parameter {i!r}") from None
            if not 0 <= i < len(params):
                raise ValueError(
                    f"optimizer state dict has state for parameter {i}, of {len(params)}"
                )
            p, group_values = params[i], settings[self._group_index(i)][0]
            new_state[id(p)] = self._checked_state(i, p, values, {**owner[i], **group_values})
        for group, (values, generator_state) in zip(self.param_groups, settings, strict=True):
            group.update(values)
            if generator_state is not None and group["generator"] is not None:
                _set_generator_state(group["generator"], generator_state)
        self.state = new_state

    def _group_index(self, i: int) -> int:
        for n, group in enumerate(self.param_groups):
            if i < len(group["params"]):
                return n
            i -= len(group["params"])
        raise IndexError(i)

    def _checked_state(
        self, i: int, p: Tensor, values: Any, group: dict[str, Any]
    ) -> dict[str, Any]:
        where = f"optimizer state dict, state of parameter {i}: "
        if not isinstance(values, dict):
            raise ValueError(f"{where}must be a dict, got {type(values).__name__}")
        expected = self._state_keys(group)
        if set(values) != expected:
            raise ValueError(
                f"{where}holds {sorted(values)}, a {type(self).__name__} with these settings "
                f"keeps {sorted(expected)} (missing {sorted(expected - set(values))}, "
                f"unexpected {sorted(set(values) - expected)})"
            )
        out = {}
        for key, value in values.items():
            if key == "step":
                if not (isinstance(value, int | np.integer) and not isinstance(value, bool)
                        and value >= 1):  # fmt: skip
                    raise ValueError(f"{where}step must be an int >= 1, got {value!r}")
                out[key] = int(value)
                continue
            if not (hasattr(value, "shape") and hasattr(value, "dtype")) or (
                value.shape != p.shape or value.dtype != p.dtype
            ):
                described = (
                    f"{value.dtype}{list(value.shape)}"
                    if hasattr(value, "shape") and hasattr(value, "dtype")
                    else type(value).__name__
                )
                raise ValueError(
                    f"{where}{key!r} is {described}, it must be an array of the "
                    f"parameter's {p.dtype}{list(p.shape)}"
                )
            out[key] = backend.to_device(np.array(backend.to_numpy(value), copy=True), p.device)
        return out

    def step(self) -> None:
        """Update every parameter that has a gradient. The gradients are checked first
        (shape, dtype and device), so a bad one leaves every parameter unchanged."""
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and (
                    not isinstance(p.grad, Tensor)
                    or p.grad.shape != p.shape
                    or p.grad.dtype != p.dtype
                    or p.grad.device != p.device
                ):
                    got = (
                        f"{p.grad.dtype}{list(p.grad.shape)} on {p.grad.device}"
                        if isinstance(p.grad, Tensor)
                        else type(p.grad).__name__
                    )
                    raise ValueError(
                        f"the gradient of parameter {index} is {got}, the parameter is "
                        f"{p.dtype}{list(p.shape)} (shape {p.shape}) on {p.device}: a "
                        "gradient must have its parameter's shape, dtype and device "
                        "(set p.grad to one, or to None to skip p); nothing was updated"
                    )
                index += 1
        with ieee():
            for group in self.param_groups:
                self._step_group(group, [p for p in group["params"] if p.grad is not None])

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        for p in params:
            self._update(p, group, self.state.setdefault(id(p), {}))

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _write(
        self, p: Tensor, group: dict[str, Any], state: dict[str, Any], delta: Any, base: Any = None
    ) -> None:
        """Store ``base - delta`` (float32 arrays; ``base`` is p unless AdamW decayed it)
        in p's dtype, rounded as ``group["update_rounding"]`` says (see the class docstring).
        A float32 parameter is written in place, as torch's are; a 16-bit one gets a
        new array, the rounded result."""
        base = compute(p.data) if base is None else base
        mode = group["update_rounding"]
        if mode == "kahan" and "compensation" not in state:
            state["compensation"] = backend.array_module(p.data).zeros_like(p.data)
        if p.dtype == np.float32:
            # exact is a float32 already: every mode stores it unchanged (the carry stays
            # 0), in place, as torch's p.add_(update, alpha=-lr) does: no new array
            backend.array_module(p.data).subtract(base, delta, out=p.data)
        elif mode == "nearest":
            p.data = round_to_dtype(base - delta, p.dtype)
        elif mode == "stochastic":
            exact = base - delta
            # round_to returns float32 values of p's format: the cast is exact.
            p.data = round_to(exact, p.dtype, "stochastic", group["generator"]).astype(p.dtype)
        else:
            # The carry and delta are both small: adding them first keeps their bits.
            exact = base + (compute(state["compensation"]) - delta)
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
    """torch.optim.SGD: momentum, dampening, Nesterov, weight decay, maximize::

        g = -grad if maximize else grad
        g = g + weight_decay * p
        buf = g  (first step)  |  momentum * buf + (1 - dampening) * g
        g = g + momentum * buf  if nesterov else buf
        p = p - lr * g

    ``update_rounding`` and ``generator``: see :class:`Optimizer`."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        update_rounding: str = "nearest",
        generator: np.random.Generator | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults, update_rounding, generator)

    def _check_group(self, group: dict[str, Any]) -> None:
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening (torch's rule): "
                f"got nesterov=True with momentum={group['momentum']!r}, "
                f"dampening={group['dampening']!r}"
            )

    def _state_keys(self, group: dict[str, Any]) -> set[str]:
        return super()._state_keys(group) | ({"momentum_buffer"} if group["momentum"] else set())

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        # As torch's SGD, every buffer is read before the loop and written after it, and
        # updated in place: a parameter listed twice takes two steps, as in torch.
        buffers = [self.state.get(id(p), {}).get("momentum_buffer") for p in params]
        momentum, dampening = group["momentum"], group["dampening"]
        for i, (p, buf) in enumerate(zip(params, buffers, strict=True)):
            g = compute(p.grad.data)
            if group["maximize"]:
                g = -g
            if group["weight_decay"]:
                g = g + group["weight_decay"] * compute(p.data)
            if momentum:
                if buf is None:
                    b = g.copy()  # torch clones the gradient: never its array
                elif p.dtype == np.float32:  # in place: buf.mul_(momentum).add_(g, 1 - d)
                    b = buf
                    b *= momentum
                    b += g if dampening == 0 else (1 - dampening) * g
                else:  # a 16-bit buffer: computed in float32, stored rounded below
                    b = momentum * compute(buf) + (1 - dampening) * g
                buffers[i] = b
                # the float32 buffer, not its rounded copy, moves the weight (fused rule)
                g = g + momentum * b if group["nesterov"] else b
            self._write(p, group, self.state.setdefault(id(p), {}), group["lr"] * g)
        if momentum:
            for p, buf in zip(params, buffers, strict=True):
                self.state[id(p)]["momentum_buffer"] = round_to_dtype(buf, p.dtype)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` computes it: bias correction,
    L2 weight decay added to the gradient, ``amsgrad``, ``maximize``::

        g = -grad if maximize else grad
        g = g + weight_decay * p                  # AdamW: p = p * (1 - lr * weight_decay)
        m = m + (1 - beta1) * (g - m)             # torch's lerp
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                     # amsgrad: the denominator never shrinks
        p = p - lr / (1 - beta1^t) * m / (sqrt(v or v_max) / sqrt(1 - beta2^t) + eps)

    For a 16-bit parameter this is torch's fused rule (``fused=True``): m, v and v_max
    are computed in float32 from the stored moments, the update uses those float32
    values, and the moments are stored rounded afterwards. Rounding them *before* use
    breaks Adam in float16: (1 - beta2) * g^2 is below 2^-24 for any |g| < 7.7e-3, so v
    flushes to 0, eps (1e-8, itself below 2^-24) is the whole denominator and a weight
    of -0.375 jumps to 509 in one step. ``demonstrate_16bit_moments=True`` does exactly
    that, to show why Adam's state must not live in float16; never train with it.

    ``update_rounding`` and ``generator``: see :class:`Optimizer`."""

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        demonstrate_16bit_moments: bool = False,
        update_rounding: str = "nearest",
        generator: np.random.Generator | None = None,
    ) -> None:
        _check_setting("betas", betas)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "demonstrate_16bit_moments": demonstrate_16bit_moments,
        }
        super().__init__(params, defaults, update_rounding, generator)

    def _state_keys(self, group: dict[str, Any]) -> set[str]:
        keys = {"step", "exp_avg", "exp_avg_sq"} | (
            {"max_exp_avg_sq"} if group["amsgrad"] else set()
        )
        return super()._state_keys(group) | keys

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        g, base = compute(p.grad.data), compute(p.data)
        if group["maximize"]:
            g = -g
        if wd and self._decoupled:
            base *= 1 - lr * wd  # a float32 p in place: torch's param.mul_, before the update
        elif wd:
            g = g + wd * base
        xp = backend.array_module(p.data)
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        # In float32, in place: a float32 parameter's moments are these very arrays
        # (compute() hands them over uncopied), a 16-bit one's are widened copies.
        m, v = compute(state["exp_avg"]), compute(state["exp_avg_sq"])
        work = g - m
        work *= 1 - beta1
        m += work  # m + (1 - beta1) * (g - m)
        xp.multiply(g, 1 - beta2, out=work)
        work *= g
        v *= beta2
        v += work  # beta2 * v + (1 - beta2) * g * g
        state["exp_avg"], state["exp_avg_sq"] = (
            round_to_dtype(m, p.dtype),
            round_to_dtype(v, p.dtype),
        )
        if group["demonstrate_16bit_moments"]:  # the lesson's broken variant: see above
            m, v = compute(state["exp_avg"]), compute(state["exp_avg_sq"])
        if group["amsgrad"]:
            v = xp.maximum(compute(state["max_exp_avg_sq"]), v)
            state["max_exp_avg_sq"] = round_to_dtype(v, p.dtype)
            if group["demonstrate_16bit_moments"]:
                v = compute(state["max_exp_avg_sq"])
        step_size = lr / (1 - beta1 ** state["step"])
        denom = xp.sqrt(v, out=work)
        denom /= math.sqrt(1 - beta2 ** state["step"])
        denom += group["eps"]
        update = xp.divide(m, denom, out=work)
        update *= step_size  # step_size * (m / denom)
        self._write(p, group, state, update, base)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), ``torch.optim.AdamW``:
    the weight shrinks by ``lr * weight_decay`` of itself at each step instead of the
    decay joining the gradient, so Adam's normalisation does not scale it.
    Default ``weight_decay`` 1e-2, as torch's."""

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)


from minimp.optim import lr_scheduler  # noqa: E402, F401  (torch's layout: optim.lr_scheduler)
