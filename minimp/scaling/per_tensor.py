"""Per-tensor scaling: one scale fits a whole tensor into a narrow format.

fp8 has 3 (e4m3) or 2 (e5m2) mantissa bits and a tiny range: e4m3fn spans 2^-9 to
448, e5m2 2^-16 to 57344, against 2^-24 to 65504 for float16. Activations,
weights and gradients each sit in their own band of magnitudes, far apart, so one
global loss scale (enough for float16, Micikevicius et al. 2018, sec. 3.2)
cannot fit them all into fp8. Each tensor gets its own scale instead, chosen so
that its largest magnitude lands near the top of the format (Micikevicius et al.
2022, "FP8 Formats for Deep Learning"). The current maximum |x| (the amax) is
only known after reading the tensor, and reading it twice per cast costs memory
bandwidth, so Transformer Engine's DelayedScaling uses the largest amax seen in
the last ``amax_history_len`` casts of that tensor: the scale is one step late.

minimp's choice, where TE differs: the scale is rounded *down* to a power of
two. Multiplying and dividing a float32 by a power of two is exact, so the only
rounding is the fp8 one, and a test can check it bit for bit against
``ml_dtypes``. TE keeps ``fmt.max / amax`` as it is, and its ``x * scale`` and
``1 / scale`` then round in float32 too. The cost of rounding down is at most
one binade of headroom: amax lands in (max/2, max] instead of on max. The OCP
MX formats store their block scales as powers of two (E8M0) for the same reason.

Arrays may be NumPy or CuPy; on CuPy the scale, the amax history and the statistics
stay on the device, so that no cast waits for the host. This module
knows nothing of tensors or layers; :mod:`minimp.fp8` builds the fp8 matmul on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from minimp import backend
from minimp.checks import is_int
from minimp.formats import FLOAT8_E4M3FN, FLOAT8_E5M2, Format, get_format, round_in_range

__all__ = [
    "FP8_FORMATS",
    "CurrentScaling",
    "DelayedScaling",
    "TensorScaling",
    "decode",
    "encode",
    "saturation_by_step",
]

FP8_FORMATS = (FLOAT8_E4M3FN, FLOAT8_E5M2)
# A scale stays a normal float32 power of two, so x * scale is exact (TE clamps at FLT_MAX).
MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT = -126, 127


@dataclass(frozen=True, slots=True)
class DelayedScaling:
    """How each fp8 tensor chooses its scale: TE's ``DelayedScaling``, ``amax_compute_algo="max"``.

    ``margin``: keep 2^margin of headroom below the format's max (scale / 2^margin).
    ``amax_history_len``: how many past casts the amax is taken over (TE's default
    is 1024; 16 suits minimp's short runs). ``amax_compute_algo``: ``"max"`` (the
    largest amax of the history, TE's default) or ``"most_recent"`` (the last cast's
    amax: a spike is forgotten on the next cast). ``scaling=False`` fixes every scale
    at 1.0: plain fp8 casts, to show what fails without a per-tensor scale.
    """

    margin: int = 0
    amax_history_len: int = 16
    scaling: bool = True
    amax_compute_algo: str = "max"

    def __post_init__(self) -> None:
        problems = []
        if not (is_int(self.margin) and self.margin >= 0):
            problems.append(f"margin must be an int >= 0, got {self.margin!r}")
        if not (is_int(self.amax_history_len) and self.amax_history_len >= 1):
            problems.append(f"amax_history_len must be an int >= 1, got {self.amax_history_len!r}")
        if not isinstance(self.scaling, bool):
            problems.append(f"scaling must be True or False, got {self.scaling!r}")
        if self.amax_compute_algo not in ("max", "most_recent"):
            problems.append(
                f"amax_compute_algo must be 'max' or 'most_recent', got {self.amax_compute_algo!r}"
            )
        if problems:
            raise ValueError("invalid DelayedScaling recipe: " + "; ".join(problems))
        object.__setattr__(self, "margin", int(self.margin))
        object.__setattr__(self, "amax_history_len", int(self.amax_history_len))

    @property
    def label(self) -> str:
        """How the policy table names the recipe."""
        return "fp8, delayed scales" if self.scaling else "fp8, scale 1"


@dataclass(frozen=True, slots=True)
class CurrentScaling:
    """TE's ``Float8CurrentScaling``: each cast's scale from that cast's own amax.

    It costs a second read of the tensor (the amax, then the cast), which delayed
    scaling saves, and it never saturates on a spike: the spike sets its own scale.
    DeepSeek-V3 (arXiv 2412.19437, sec. 3.3.2) scales from the current values too,
    per tile (:mod:`minimp.scaling.blocks`). ``margin`` as in :class:`DelayedScaling`.
    The history keeps one entry, the last amax, for what a lesson reports.
    """

    margin: int = 0
    amax_history_len = 1  # not a field: the current amax is the whole history
    scaling = True

    def __post_init__(self) -> None:
        if not (is_int(self.margin) and self.margin >= 0):
            raise ValueError(
                f"invalid CurrentScaling recipe: margin must be an int >= 0, got {self.margin!r}"
            )
        object.__setattr__(self, "margin", int(self.margin))

    label = "fp8, current scales"  # how the policy table names the recipe


def _amax(x: Any, xp: Any) -> float:
    """max |x|, NaNs left out as TE's fmaxf reduction leaves them out; 0 for an empty x."""
    if not x.size:
        return 0.0
    return float(xp.where(xp.isnan(x), 0, xp.abs(x)).max())


def _is_power_of_two_scale(x: Any) -> bool:
    if not (isinstance(x, Real) and not isinstance(x, bool) and 0 < x < math.inf):
        return False
    mantissa, e = math.frexp(float(x))
    return mantissa == 0.5 and MIN_SCALE_EXPONENT <= e - 1 <= MAX_SCALE_EXPONENT


def _next_scale(amax: float, fmt: Format, margin: int, previous: float) -> float:
    """TE's fmt.max / amax / 2^margin, rounded down to a power of two; ``previous``
    when amax is 0 or not finite (nothing to learn from it)."""
    if not (0 < amax < math.inf):
        return previous
    _, e = math.frexp(fmt.max / amax)  # max / amax = f * 2^e, f in [0.5, 1): floor(log2) = e - 1
    return math.ldexp(1.0, min(max(e - 1 - margin, MIN_SCALE_EXPONENT), MAX_SCALE_EXPONENT))


class TensorScaling:
    """The scale of one tensor role (a layer's input, weight or output gradient).

    State: ``amax_history`` (float32, newest first, zeros at the start), ``scale``
    (starts at 1.0, as in TE: the first cast of each tensor is unscaled). Each
    :meth:`quantize` uses the current scale, then chooses the next one::

        q = round_to(clip(x * scale, -max, max), fmt) / scale   # saturating, as TE's satfinite cast
        amax_history = [max|x|] + amax_history[:-1]
        amax = max(amax_history)
        if scaling and 0 < amax < inf:
            scale = 2 ** (floor(log2(fmt.max / amax)) - margin)

    A spike is remembered for ``amax_history_len`` casts, then forgotten
    (``amax_compute_algo="most_recent"``: amax = amax_history[0]). With a
    :class:`CurrentScaling` recipe the scale is chosen first, from this cast's
    amax, and then used. NaN
    elements are left out of amax, as TE's fmaxf reductions leave them out; an
    inf keeps the scale where it was for as long as it stays in the history.
    After each updating call ``last_amax``, ``last_underflow`` (fraction of the nonzero
    inputs that became 0) and ``last_saturated`` (fraction of the nonzero inputs
    clipped to +-max) say what that cast did.
    """

    def __init__(
        self, fmt: Format | str, recipe: DelayedScaling | CurrentScaling | None = None
    ) -> None:
        fmt = get_format(fmt)
        if fmt not in FP8_FORMATS:
            names = ", ".join(f.name for f in FP8_FORMATS)
            raise ValueError(f"TensorScaling needs an fp8 format ({names}), got {fmt.name}")
        self.format = fmt
        self.recipe = recipe if recipe is not None else DelayedScaling()
        self.amax_history = np.zeros(self.recipe.amax_history_len, dtype=np.float32)
        self.scale = 1.0
        # The statistics of the last cast. On a GPU they stay there (0-d arrays, as
        # do amax_history and scale), and are read, one sync each, only when asked.
        self._last = {"scale": 1.0, "amax": 0.0, "underflow": 0.0, "saturated": 0.0}

    last_scale = property(lambda self: float(self._last["scale"]), doc="the last cast's scale")
    last_amax = property(lambda self: float(self._last["amax"]))
    last_underflow = property(lambda self: float(self._last["underflow"]))
    last_saturated = property(lambda self: float(self._last["saturated"]))

    def quantize(self, array: Any, update: bool = True) -> Any:
        """``array``'s values after a round trip through fp8 with the current scale, as
        float32. ``update=False`` leaves the history and the scale as they were."""
        stored, scale = self.cast(array, update)
        return decode(stored, self.format) / scale

    @np.errstate(all="ignore")  # overflow and NaN are what the statistics count, not errors
    def cast(self, array: Any, update: bool = True) -> tuple[Any, np.float32]:
        """``array`` stored in fp8 with the current scale: the fp8 array (1 byte a value;
        on CuPy, which has no fp8 dtype, float32 values of fp8) and that scale. The
        value each element stands for is ``stored / scale``."""
        xp = backend.array_module(array)
        x = array.astype(np.float32, copy=False)
        if xp is not np:
            return self._cast_on_device(x, xp, update)
        current = isinstance(self.recipe, CurrentScaling)
        if current:  # this cast's amax sets this cast's scale
            amax_now = _amax(x, xp)
            fmt, scale = (
                self.format,
                np.float32(_next_scale(amax_now, self.format, self.recipe.margin, self.scale)),
            )
        else:
            fmt, scale = self.format, np.float32(self.scale)
        # scale is a power of two in [2^-126, 2^127]: x * scale is exact unless it leaves
        # float32's normal range, where fp8 gives 0 or +-max anyway, and stored / scale is
        # a multiple of 2^-16 / 2^127 = 2^-143, which float32 holds even when subnormal.
        scaled = x * scale
        clipped = xp.clip(scaled, -fmt.max, fmt.max)
        rounded = round_in_range(clipped, fmt)
        if not update:  # an evaluation: the statistics stay those of the last training cast
            return (encode(rounded, fmt) if xp is np else rounded), scale
        nonzero = int(xp.count_nonzero(x))
        magnitude = xp.abs(x)
        last_amax = amax_now if current else _amax(x, xp)
        self._last = {
            "amax": last_amax,
            "underflow": int(((x != 0) & (rounded == 0)).sum()) / max(nonzero, 1),
            # |x * scale| is |x| * scale exactly (a power of two; inf past float32's range)
            "saturated": int((magnitude * scale > fmt.max).sum()) / max(nonzero, 1),
            "scale": float(scale),
        }
        self.amax_history = np.concatenate([[last_amax], self.amax_history[:-1]]).astype(np.float32)
        if current:
            self.scale = float(scale)
        elif self.recipe.scaling:
            history = self.amax_history
            amax = float(
                history[0] if self.recipe.amax_compute_algo == "most_recent" else history.max()
            )
            self.scale = _next_scale(amax, fmt, self.recipe.margin, self.scale)
        return (encode(rounded, fmt) if xp is np else rounded), scale

    def state_dict(self) -> dict[str, Any]:
        """The state training changes: a copy of the amax history and the scale."""
        return {
            "amax_history": backend.to_numpy(self.amax_history).copy(),
            "scale": float(self.scale),
        }

    def _cast_on_device(self, x: Any, xp: Any, update: bool) -> tuple[Any, Any]:
        """``cast`` on a GPU: the same arithmetic, with the scale, the amax history and the
        statistics kept on the device, so that a cast never waits for the host. The
        next scale is chosen there too (frexp and ldexp are exact, as math's are)."""
        fmt, recipe = self.format, self.recipe
        # moved to the device once (at the start, or after a load), then kept there
        self.amax_history = history = xp.asarray(self.amax_history, dtype=np.float32)
        self.scale = previous = xp.asarray(self.scale, dtype=np.float64)
        current = isinstance(recipe, CurrentScaling)
        if current:
            amax_now = _amax_on_device(x, xp)
            scale = _next_scale_on_device(amax_now, fmt, recipe.margin, previous, xp)
        else:
            scale = previous
        scale32 = scale.astype(np.float32)
        rounded = round_in_range(xp.clip(x * scale32, -fmt.max, fmt.max), fmt)
        if not update:
            return rounded, scale32
        amax = amax_now if current else _amax_on_device(x, xp)
        nonzero = xp.maximum(xp.count_nonzero(x), 1).astype(np.float64)
        self._last = {
            "amax": amax,
            "underflow": ((x != 0) & (rounded == 0)).sum() / nonzero,
            "saturated": (xp.abs(x) * scale32 > fmt.max).sum() / nonzero,
            "scale": scale,
        }
        self.amax_history = xp.concatenate([amax.reshape(1), history[:-1]])
        if current:
            self.scale = scale
        elif recipe.scaling:
            h = self.amax_history
            newest = h[0] if recipe.amax_compute_algo == "most_recent" else h.max()
            self.scale = _next_scale_on_device(newest, fmt, recipe.margin, previous, xp)
        return rounded, scale32

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.amax_history, self.scale = self._checked(state)

    def _checked(self, state: dict[str, Any]) -> tuple[np.ndarray, float]:
        """``state``'s values, or a KeyError / ValueError saying why they do not fit."""
        if set(state) != {"amax_history", "scale"}:
            raise KeyError(
                "TensorScaling state needs the keys 'amax_history' and 'scale', "
                f"got {sorted(state)}"
            )
        length = self.recipe.amax_history_len
        try:
            history = np.asarray(state["amax_history"], dtype=np.float32)
        except (TypeError, ValueError):
            history = None
        if history is None or history.shape != (length,) or not (history >= 0).all():
            raise ValueError(
                f"amax_history must hold {length} (amax_history_len) numbers >= 0, "
                f"got {state['amax_history']!r}"
            )
        scale = state["scale"]
        if not _is_power_of_two_scale(scale):
            raise ValueError(
                f"scale must be a power of two from 2^{MIN_SCALE_EXPONENT} to "
                f"2^{MAX_SCALE_EXPONENT}, got {scale!r}"
            )
        return history, float(scale)

    def __repr__(self) -> str:
        return f"TensorScaling({self.format.name}, scale={float(self.scale):g})"


def saturation_by_step(
    recipe: DelayedScaling | CurrentScaling, arrays: Any, fmt: Format | str = FLOAT8_E4M3FN
) -> list[float]:
    """The fraction of each array's nonzero values that one :class:`TensorScaling` clips to
    +-max, cast after cast: where a delayed scale misses a spike that current scaling fits."""
    scaling = TensorScaling(fmt, recipe)
    saturated = []
    for array in arrays:
        scaling.cast(array)
        saturated.append(scaling.last_saturated)
    return saturated


# ---- fast fp8 casts on the CPU -----------------------------------------------------
# ml_dtypes casts float32 to and from fp8 element by element (about 9 ns each way);
# these take about a tenth of that, and the tests check them bit for bit against it.


def _amax_on_device(x: Any, xp: Any) -> Any:
    """``_amax`` as a float32 0-d device array (no read back)."""
    if not x.size:
        return xp.zeros((), dtype=np.float32)
    return xp.where(xp.isnan(x), 0, xp.abs(x)).max().astype(np.float32)


def _next_scale_on_device(amax: Any, fmt: Format, margin: int, previous: Any, xp: Any) -> Any:
    """``_next_scale`` on device arrays: the same powers of two, chosen without the host."""
    amax = amax.astype(np.float64)
    usable = (amax > 0) & (amax < math.inf)
    _, e = xp.frexp(fmt.max / xp.where(usable, amax, 1.0))
    exponent = xp.clip(e - 1 - margin, MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT)
    return xp.where(usable, xp.ldexp(1.0, exponent), previous)


def _tables(fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """fp8 code -> float32 (256 entries), and the top 16 bits of a float32 holding an
    fp8 value -> its code (65,536 entries): every fp8 value has at most 3 mantissa
    bits and a normal float32 exponent, so those 16 bits determine it."""
    if fmt.name not in _TABLES:
        decode = np.arange(256, dtype=np.uint8).view(fmt.dtype).astype(np.float32)
        tops = (np.arange(2**16, dtype=np.uint32) << np.uint32(16)).view(np.float32)
        with np.errstate(all="ignore"):
            encode = tops.astype(fmt.dtype).view(np.uint8)
        _TABLES[fmt.name] = decode, encode
    return _TABLES[fmt.name]


_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def encode(values: np.ndarray, fmt: Format) -> np.ndarray:
    """float32 fp8 values -> the fp8 array (ml_dtypes dtype) holding them."""
    top = (values.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return np.take(_tables(fmt)[1], top).view(fmt.dtype)


def decode(stored: Any, fmt: Format) -> Any:
    """An fp8 array -> float32 (on CuPy the values already are float32)."""
    if backend.array_module(stored) is not np:
        return stored
    return np.take(_tables(fmt)[0], stored.view(np.uint8))
