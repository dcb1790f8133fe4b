"""Loss scaling: keep small gradients inside float16's range (Micikevicius et al. 2018, sec. 3.2).

Multiplying the loss by S multiplies every gradient by S (backpropagation is linear in
the loss), which lifts gradient values that would flush to zero below float16's 2^-24
back into its range. The float32 gradients of the master weights are divided by S
again ("unscaled") before the optimizer sees them, so the update is unchanged. If S is
too large some gradient overflows to inf: that step is skipped, which costs one
iteration and nothing else.

``GradScaler`` chooses S dynamically, with exactly ``torch.amp.GradScaler``'s float32
arithmetic. torch-identical: the interface, the default trajectory (no floor: the scale
keeps halving, below 1 and into float32's subnormals, as torch's), the errors on a second
unscale_/step and on a step with no inf checks, the float16-only refusal in unscale_, the
setters and ``update(new_scale)``. minimp's additions, off by default or invisible to a
torch loop: Megatron-LM's hysteresis (lesson 04 shows it), an optional floor
(``min_scale``) that raises ``LossScaleUnderflowError`` with its explanation, ``step``
returning whether the optimizer stepped, and the ``history``.
``StaticGradScaler`` is the paper's constant scale. Both keep a ``history``, one
``ScaleRecord`` per iteration, for the plots.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from minimp import backend
from minimp.checks import is_int, is_real
from minimp.tensor import Tensor, float16, float32, ieee, round_to_dtype

if TYPE_CHECKING:  # amp sits below optim in the layers: a type hint, not an import
    from minimp.amp.master import MasterWeights
    from minimp.optim import Optimizer

__all__ = [
    "GradScaler",
    "LossScaleUnderflowError",
    "ScaleRecord",
    "ScalerConfig",
    "StaticGradScaler",
]

_TORCH_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def _f32(x: float) -> float:
    """``x`` rounded to float32, as a Python float: PyTorch keeps the scale in a float32 tensor."""
    with ieee():
        return float(np.float32(x))


class LossScaleUnderflowError(RuntimeError):
    """The loss scale would fall below its minimum: backing off has stopped helping."""

    def __init__(self, scale: float, new_scale: float, minimum: float, overflows: int) -> None:
        self.scale, self.new_scale, self.minimum, self.overflows = (
            scale,
            new_scale,
            minimum,
            overflows,
        )
        super().__init__(
            f"loss scale underflow: after {overflows} consecutive steps with inf/NaN gradients "
            f"the loss scale would fall from {scale:.6g} to {new_scale:.6g}, below the minimum "
            f"{minimum:.6g}. Halving the scale has not helped, so the gradients are inf/NaN "
            "whatever the scale: the overflow does not come from the scaling. Usual causes: "
            "NaN or inf in the input data or the targets; a loss that is already inf/NaN before "
            "scaling (log of 0, a division by 0); a learning rate so large that the weights "
            "diverged; an op overflowing float16 (above 65504) in the forward pass (keep exp, "
            "softmax, norms and losses in float32, as autocast does). Check, in this order: is "
            "the unscaled loss finite, are the weights finite, which parameters have non-finite "
            "gradients after scaler.unscale_(optimizer). The scale and its trackers are "
            "unchanged; this iteration's inf checks are dropped, so the next iteration "
            "starts afresh (or call scaler.update(new_scale) to choose a scale yourself)."
        )


@dataclass(frozen=True, slots=True)
class ScaleRecord:
    """One iteration as the scaler saw it: for plotting the scale and the skipped steps."""

    step: int  # index of the update() call, counted from the start of the run
    scale: float  # the scale the iteration's loss was multiplied by
    found_inf: bool  # some gradient was inf or NaN
    skipped: bool  # an optimizer step was skipped because of it


@dataclass(frozen=True, slots=True)
class ScalerConfig:
    """The settings of a dynamic loss scale, validated in one place.

    ``hysteresis`` comes from Megatron-LM / DeepSpeed, ``min_scale`` from Megatron-LM /
    DeepSpeed / jmp (here it raises rather than clamps; None means no floor, as torch).
    """

    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    hysteresis: int = 1
    min_scale: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (is_real(self.growth_factor) and self.growth_factor > 1):
            problems.append(
                f"growth_factor must be a finite number > 1, got {self.growth_factor!r}"
            )
        if not (is_real(self.backoff_factor) and 0 < self.backoff_factor < 1):
            problems.append(f"backoff_factor must lie in (0, 1), got {self.backoff_factor!r}")
        if not (is_int(self.growth_interval) and self.growth_interval >= 1):
            problems.append(f"growth_interval must be an int >= 1, got {self.growth_interval!r}")
        if not (is_int(self.hysteresis) and self.hysteresis >= 1):
            problems.append(f"hysteresis must be an int >= 1, got {self.hysteresis!r}")
        value = self.min_scale
        if value is not None and not (is_real(value) and _f32(value) > 0):
            problems.append(f"min_scale must be None or a positive float32 number, got {value!r}")
        if problems:
            raise ValueError("invalid GradScaler settings: " + "; ".join(problems))
        # Plain Python numbers: a checkpoint stores them as JSON.
        for name, kind in [("growth_factor", float), ("backoff_factor", float),
                           ("growth_interval", int), ("hysteresis", int)]:  # fmt: skip
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.min_scale is not None:
            object.__setattr__(self, "min_scale", float(self.min_scale))

    def check_scale(self, name: str, value: Any) -> float:
        """``value`` as a float32 scale, or a ValueError saying why it cannot be one."""
        if not (is_real(value) and value > 0 and 0 < _f32(value) < math.inf):
            raise ValueError(f"{name} must be a positive finite float32 number, got {value!r}")
        with ieee():
            if not np.isfinite(np.float32(1.0 / _f32(value))):
                raise ValueError(
                    f"{name} {value!r} is too small: its reciprocal, which unscale_ multiplies "
                    "the gradients by, overflows float32 (the scale must be at least 2**-128)"
                )
        if self.min_scale is not None and value < self.min_scale:
            raise ValueError(f"{name} {value} is below min_scale {self.min_scale}")
        return _f32(value)


@dataclass
class _OptimizerState:
    stage: str = "ready"  # "ready" -> "unscaled" -> "stepped"; update() starts afresh
    found_inf: bool = False
    ran: bool | None = None
    checked: bool = False  # some gradient was checked for inf/NaN (torch: found_inf_per_device)


def _check_optimizer(method: str, optimizer: Any) -> None:
    if not isinstance(getattr(optimizer, "param_groups", None), list):
        raise TypeError(
            f"{method}() takes an optimizer (minimp.optim.SGD, Adam, ...), got "
            f"{type(optimizer).__name__}: pass the optimizer that holds the parameters"
        )


def _scale_value(new_scale: Any) -> Any:
    """``update(new_scale)`` takes a number or, as torch, a 1-element float32 tensor."""
    if not isinstance(new_scale, Tensor):
        return new_scale
    if new_scale.size != 1 or new_scale.dtype != float32 or new_scale.requires_grad:
        raise ValueError(
            "new_scale should be a float or a 1-element float32 Tensor with "
            f"requires_grad=False (torch's rule), got {new_scale!r}"
        )
    return float(new_scale.numpy().reshape(()))


class GradScaler:
    """Dynamic loss scaling with ``torch.amp.GradScaler``'s interface and trajectory.

    The loop, in the order a reader must learn it::

        scaler.scale(loss).backward()   # gradients are S times too large
        scaler.unscale_(optimizer)      # optional: divide them by S now, to clip or inspect
        ran = scaler.step(optimizer)    # unscale_ if not done; optimizer.step() unless inf/NaN
        scaler.update()                 # choose the next S

    The scale S is a float32 number and every update rounds to float32, as PyTorch's
    ``_amp_update_scale_`` does, so both libraries give the same scales for the same
    overflows. ``update()`` (growth and backoff: PyTorch; hysteresis: Megatron-LM's
    DynamicGradScaler; the floor: minimp)::

        if found_inf:                      # some gradient was inf/NaN: the step was skipped
            growth_tracker = 0
            hysteresis_tracker -= 1
            if hysteresis_tracker <= 0:    # always, when hysteresis == 1 (PyTorch)
                S = f32(S * backoff_factor)
                if min_scale and S < min_scale: raise LossScaleUnderflowError
        else:
            growth_tracker += 1
            if growth_tracker == growth_interval:
                S = f32(S * growth_factor)  if that is finite
                growth_tracker = 0
                hysteresis_tracker = hysteresis

    ``enabled=False`` makes every method a pass-through, as in PyTorch, so one loop
    serves float32, bfloat16 and float16 runs.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
        *,
        hysteresis: int = 1,
        min_scale: float | None = None,
    ) -> None:
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled must be True or False, got {enabled!r}")
        self.config = ScalerConfig(
            growth_factor, backoff_factor, growth_interval, hysteresis, min_scale
        )
        self._enabled = enabled
        self._scale = self.config.check_scale("init_scale", init_scale)
        self._growth_tracker = 0  # clean steps since the last growth or overflow
        self._hysteresis_tracker = hysteresis  # overflows tolerated before backing off
        self._step = 0  # update() calls so far: the index of the next ScaleRecord
        self._overflow_streak = 0  # consecutive iterations with inf/NaN, for the error message
        self._per_optimizer: dict[int, _OptimizerState] = {}  # by id(optimizer), as PyTorch
        self.history: list[ScaleRecord] = []
        self.last_step_ran: bool | None = None  # what the last step() returned

    # ---- the loop -------------------------------------------------------------------
    def scale(self, outputs: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Any:
        """``outputs * S``, in the outputs' dtype (a float16 loss stays float16)."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            return outputs * self._scale
        if isinstance(outputs, list | tuple):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"scale() takes a Tensor or a list of Tensors, got {type(outputs)}")

    def unscale_(self, optimizer: Optimizer, *, masters: MasterWeights | None = None) -> None:
        """Divide the optimizer's gradients by S and record whether any was inf/NaN.

        The same grad Tensors get new arrays. Call it once per optimizer step, after
        every micro-batch's backward: gradients accumulate scaled, and are unscaled once.

        ``masters`` is minimp's own (PyTorch's masters are the autocast model's float32
        parameters, which receive float32 gradients): a ``MasterWeights`` whose masters
        the optimizer holds and whose model gradients are not copied yet. Each master's
        gradient is then widened, checked and unscaled in one pass over its 16-bit
        model gradient (``copy_grads_to_masters(inv_scale)``), instead of a copy here and
        two more passes: the same bits, the same check.
        """
        if not self._enabled:
            if masters is not None:
                masters.copy_grads_to_masters()
            return
        _check_optimizer("unscale_", optimizer)
        state = self._per_optimizer.get(id(optimizer), _OptimizerState())
        if state.stage == "unscaled":
            raise RuntimeError(
                "unscale_() has already been called on this optimizer since the last update(). "
                "With gradient accumulation, call it once, after the last micro-batch's backward"
            )
        if state.stage == "stepped":
            raise RuntimeError("unscale_() is being called after step().")
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if masters is not None:
            held = {id(p) for p in params}
            if not all(id(m) in held for m in masters.parameters()):
                raise ValueError(
                    "unscale_(optimizer, masters=...): the optimizer does not hold these "
                    "masters; build it with masters.parameters()"
                )
        grads = [] if masters is not None else [p.grad for p in params if p.grad is not None]
        for grad in grads:
            if grad.dtype == float16:
                raise ValueError(
                    f"Attempting to unscale {grad.dtype} gradients (PyTorch: 'Attempting to "
                    f"unscale FP16 gradients.'). Unscaling brings back exactly the tiny values "
                    f"{grad.dtype} cannot hold, and an optimizer updating {grad.dtype} weights "
                    "loses any update below about 2^-11 of the weight (Micikevicius et al. 2018, "
                    "sec. 3.1). Keep FP32 master weights: give the optimizer float32 parameters "
                    "and use their float16 copies (or autocast) only in the forward pass"
                )
        with ieee():
            # PyTorch computes 1/S in float64, then rounds it to float32: the same bits here
            # (inf when S < 2**-128, which only a min_scale below the default allows).
            inv_scale = np.float32(1.0 / self._scale)
            if masters is not None:
                finite = masters.copy_grads_to_masters(inv_scale)
            else:
                # Checked before unscaling, as PyTorch's kernel does; on a GPU the flags
                # stay there, to be read back once (one synchronisation, not one per grad).
                finite = []
                for grad in grads:
                    unscaled, ok = backend.unscale(grad.data, inv_scale)
                    # A new array, not in place: two parameters' gradients may share one
                    # array (the backward of a + b hands the same array to both). A
                    # bfloat16 one is computed in float32, rounded once, as torch's kernel.
                    grad.data = round_to_dtype(unscaled, grad.dtype)
                    finite.append(ok)
        found_inf = bool(finite) and not all(bool(f) for f in _on_one_device(finite))
        found_inf = self._share_found_inf(found_inf)
        state.stage, state.found_inf, state.checked = "unscaled", found_inf, bool(finite)
        self._per_optimizer[id(optimizer)] = state

    def _share_found_inf(self, found_inf: bool) -> bool:
        """What every process agrees this optimizer's check found: here, on one process,
        what this one found. The one seam for many ranks: ``minimp.distributed``'s
        scaler all-reduces it (MAX), as PyTorch's ShardedGradScaler and Megatron-LM do,
        so that every rank skips or steps together."""
        return found_inf

    def step(self, optimizer: Optimizer) -> bool:
        """Unscale (unless done), then ``optimizer.step()`` unless a gradient was inf/NaN.

        Returns True when the optimizer step ran, False when it was skipped (also in
        ``last_step_ran``); PyTorch returns ``optimizer.step()``'s value instead.
        """
        _check_optimizer("step", optimizer)
        if not self._enabled:
            optimizer.step()
            self.last_step_ran = True
            return True
        state = self._per_optimizer.get(id(optimizer), _OptimizerState())
        if state.stage == "stepped":
            raise RuntimeError("step() has already been called since the last update().")
        if state.stage == "ready":
            self.unscale_(optimizer)
            state = self._per_optimizer[id(optimizer)]
        if not state.checked:
            raise AssertionError(
                "No inf checks were recorded for this optimizer. (torch's words: none of "
                "its parameters has a gradient; run scaler.scale(loss).backward() first)"
            )
        state.ran = not state.found_inf
        if state.ran:
            try:
                optimizer.step()
            except BaseException:
                # The iteration ends here for this optimizer, so that the next one
                # unscales its new gradients and steps as usual (issue 16, item 7).
                del self._per_optimizer[id(optimizer)]
                raise
        state.stage = "stepped"
        self.last_step_ran = state.ran
        return state.ran

    def update(self, new_scale: float | None = None) -> None:
        """Choose the next scale from this iteration's inf checks (or set it to ``new_scale``).

        Appends a ``ScaleRecord`` to ``history``. If it raises, nothing has changed.
        """
        if not self._enabled:
            return
        states = list(self._per_optimizer.values())
        found_inf = any(s.found_inf for s in states)
        if new_scale is not None:  # as PyTorch: the trackers stay as they are
            scale = self.config.check_scale("new_scale", _scale_value(new_scale))
            growth, hysteresis = self._growth_tracker, self._hysteresis_tracker
        elif not states:
            raise RuntimeError(
                "update() found no inf checks: call scaler.step(optimizer) (or unscale_) for "
                "each optimizer before scaler.update()"
            )
        else:
            try:
                scale, growth, hysteresis = self._next(found_inf)
            except LossScaleUnderflowError:
                self._per_optimizer = {}  # the iteration is over; scale and trackers stay
                raise
        skipped = any(s.ran is False for s in states)
        self.history.append(ScaleRecord(self._step, self._scale, found_inf, skipped))
        self._scale, self._growth_tracker, self._hysteresis_tracker = scale, growth, hysteresis
        self._overflow_streak = self._overflow_streak + 1 if found_inf else 0
        self._step += 1
        self._per_optimizer = {}

    def _next(self, found_inf: bool) -> tuple[float, int, int]:
        """(scale, growth tracker, hysteresis tracker) after this iteration: the pseudocode."""
        c = self.config
        if found_inf:
            hysteresis, scale = self._hysteresis_tracker - 1, self._scale
            if hysteresis <= 0:
                scale = _f32(self._scale * c.backoff_factor)  # float64 product, as PyTorch
                floor = c.min_scale
                if floor is not None and scale < floor:
                    raise LossScaleUnderflowError(
                        self._scale, scale, floor, self._overflow_streak + 1
                    )
            return scale, 0, hysteresis
        clean = self._growth_tracker + 1
        if clean < c.growth_interval:
            return self._scale, clean, self._hysteresis_tracker
        grown = _f32(self._scale * c.growth_factor)
        return (grown if math.isfinite(grown) else self._scale), 0, c.hysteresis

    # ---- what it is -----------------------------------------------------------------
    def get_scale(self) -> float:
        """The current scale (1.0 when disabled, as PyTorch)."""
        return self._scale if self._enabled else 1.0

    def is_enabled(self) -> bool:
        return self._enabled

    def get_growth_factor(self) -> float:
        return self.config.growth_factor

    def get_backoff_factor(self) -> float:
        return self.config.backoff_factor

    def get_growth_interval(self) -> int:
        return self.config.growth_interval

    def set_growth_factor(self, new_factor: float) -> None:
        self.config = dataclasses.replace(self.config, growth_factor=new_factor)

    def set_backoff_factor(self, new_factor: float) -> None:
        self.config = dataclasses.replace(self.config, backoff_factor=new_factor)

    def set_growth_interval(self, new_interval: int) -> None:
        self.config = dataclasses.replace(self.config, growth_interval=new_interval)

    def history_arrays(self) -> dict[str, np.ndarray]:
        """``history`` as NumPy arrays: "step", "scale", "found_inf", "skipped"."""
        return {
            "step": np.array([r.step for r in self.history], dtype=np.int64),
            "scale": np.array([r.scale for r in self.history], dtype=np.float64),
            "found_inf": np.array([r.found_inf for r in self.history], dtype=bool),
            "skipped": np.array([r.skipped for r in self.history], dtype=bool),
        }

    # ---- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """PyTorch's five keys, then minimp's; plain Python values (JSON-ready).

        The history is not in it: it is a log of the past, not state that decides the
        future, and it would make every checkpoint grow with the run.
        """
        if not self._enabled:
            return {}
        c = self.config
        return {
            "scale": self._scale,
            "growth_factor": c.growth_factor,
            "backoff_factor": c.backoff_factor,
            "growth_interval": c.growth_interval,
            "_growth_tracker": self._growth_tracker,
            "hysteresis": c.hysteresis,
            "_hysteresis_tracker": self._hysteresis_tracker,
            "min_scale": c.min_scale,
            "_step": self._step,
            "_overflow_streak": self._overflow_streak,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a minimp or a PyTorch ``GradScaler.state_dict()``; all or nothing.

        minimp's keys are optional: settings missing from the dict keep this
        scaler's, trackers missing start afresh.
        """
        if not self._enabled:
            return
        if not state_dict:
            raise RuntimeError(
                "The source state dict is empty, possibly because it was saved from a disabled "
                "instance of GradScaler."
            )
        missing = [k for k in _TORCH_KEYS if k not in state_dict]
        if missing:
            raise ValueError(
                f"GradScaler state dict lacks {missing} (a PyTorch GradScaler state dict has "
                f"{list(_TORCH_KEYS)}); nothing was loaded"
            )
        if state_dict.get("max_scale") is not None:
            raise ValueError(
                f"this state dict caps the scale at max_scale={state_dict['max_scale']!r}, "
                "which this GradScaler no longer has (PyTorch has no cap either); drop the "
                "key to load it uncapped; nothing was loaded"
            )
        sd, c = state_dict, self.config
        try:
            config = ScalerConfig(
                sd["growth_factor"],
                sd["backoff_factor"],
                sd["growth_interval"],
                sd.get("hysteresis", c.hysteresis),
                sd.get("min_scale", c.min_scale),
            )
            scale = config.check_scale("scale", sd["scale"])
            counters = {
                "_growth_tracker": (sd["_growth_tracker"], 0, config.growth_interval - 1),
                "_hysteresis_tracker": (
                    sd.get("_hysteresis_tracker", config.hysteresis),
                    -math.inf,
                    config.hysteresis,
                ),
                "_step": (sd.get("_step", 0), 0, math.inf),
                "_overflow_streak": (sd.get("_overflow_streak", 0), 0, math.inf),
            }
            for name, (value, low, high) in counters.items():
                if not (is_int(value) and low <= value <= high):
                    raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
        except ValueError as error:
            raise ValueError(f"bad GradScaler state dict, nothing was loaded: {error}") from None
        self.config, self._scale = config, scale
        self._growth_tracker, self._hysteresis_tracker, self._step, self._overflow_streak = (
            int(v[0]) for v in counters.values()
        )


class StaticGradScaler(GradScaler):
    """The paper's constant loss scale (Micikevicius et al. 2018, sec. 3.2).

    The paper used scales from 8 to 32K, chosen so that S * max|gradient| < 65504.
    The scale never changes; a step whose gradients hold inf/NaN is still skipped and
    recorded in ``history``.
    """

    def __init__(self, scale: float, enabled: bool = True) -> None:
        super().__init__(init_scale=scale, enabled=enabled)

    def _next(self, found_inf: bool) -> tuple[float, int, int]:
        return self._scale, 0, self._hysteresis_tracker


def _on_one_device(flags: list[Any]) -> Any:
    """Boolean flags as one array, so a GPU is synchronised once to read them."""
    xp = backend.array_module(flags[0])
    return flags if xp is np else xp.stack(flags).get()
