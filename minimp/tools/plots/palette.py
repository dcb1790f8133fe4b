"""The one palette every figure uses: a colour and a line style per precision regime
and per format, colours per memory category, and the small formatting helpers the
plots share.

Adding a regime to :mod:`minimp.regimes` means adding its colour here (a test checks
that every regime has a colour of its own).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    NullFormatter,
)

from minimp.formats import Format

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}
"""Okabe & Ito (2008), "Color universal design": eight colours told apart with any
common form of colour blindness."""

_O = OKABE_ITO
COLORS: dict[str, str] = {
    # the regimes of minimp.train
    "fp32": OKABE_ITO["black"],
    "fp16": OKABE_ITO["vermillion"],
    "mixed-noscale": OKABE_ITO["orange"],
    "mixed-static": OKABE_ITO["sky blue"],
    "mixed-dynamic": OKABE_ITO["blue"],
    "bf16": OKABE_ITO["bluish green"],
    "fp8": OKABE_ITO["reddish purple"],  # fp8's colour: the format its forward pass uses
    "fp8-unscaled": OKABE_ITO["yellow"],
    # Okabe-Ito has eight colours and minimp fifteen regimes: the rest from Paul Tol's
    # colour-blind-safe "muted" scheme, the pure-bfloat16 family in greens beside bf16
    "amp": "#332288",  # indigo: AMP computes what mixed-dynamic (blue) computes
    "bf16-pure": "#117733",
    "bf16-sr": "#44AA99",
    "bf16-kahan": "#999933",
    # the block-scaled regimes beside fp8's reddish purple: Tol's wine and rose
    "mxfp8": "#882255",
    "nvfp4": "#CC6677",
    "fp16-everywhere": "#661100",  # dark red, beside fp16: float16 with nothing kept in float32
    # the formats of minimp.formats: a format has its regime's colour
    "float32": OKABE_ITO["black"],
    "float16": OKABE_ITO["vermillion"],
    "bfloat16": OKABE_ITO["bluish green"],
    "float8_e4m3fn": OKABE_ITO["reddish purple"],
    "float8_e5m2": OKABE_ITO["yellow"],
    # short names a caller may use for scaler runs and weights
    "static": OKABE_ITO["sky blue"],
    "dynamic": OKABE_ITO["blue"],
    "master": OKABE_ITO["black"],
    "skipped": OKABE_ITO["vermillion"],
    # lesson 11: schemes named after the regime they are the scaling of, accumulators
    "fp8 per tensor": OKABE_ITO["reddish purple"],
    "fp4 per tensor": OKABE_ITO["orange"],
    "mxfp4": "#AA4499",  # Tol's purple, beside nvfp4's rose
    "e8m13": "#88CCEE",  # Tol's cyan: the fp8 tensor core's 14-bit accumulator
    "e8m13_promote128": OKABE_ITO["blue"],
    "delayed": OKABE_ITO["reddish purple"],
    "current": OKABE_ITO["bluish green"],
}
"""One colour per precision regime and per format, in every figure."""

LINESTYLES: dict[str, Any] = {
    "fp32": "-",
    "fp16": (0, (5, 2)),
    "mixed-noscale": "-.",
    "mixed-static": (0, (1, 1.5)),
    "mixed-dynamic": "-",
    "bf16": (0, (7, 2, 1.5, 2, 1.5, 2)),
    "fp8": "-",
    "fp8-unscaled": (0, (5, 2)),
    "mxfp8": (0, (3, 1, 1, 1)),
    "nvfp4": (0, (1, 1)),
    # accumulators (lesson 11)
    "float16": (0, (5, 2)),
    "bfloat16": (0, (7, 2, 1.5, 2, 1.5, 2)),
    "e8m13": "-.",
    "e8m13_promote128": "-",
    # per-tensor scaling recipes (lesson 11)
    "delayed": "-",
    "current": (0, (5, 2)),
    "fp16-everywhere": (0, (4, 1, 1, 1, 1, 1)),
    "static": (0, (1, 1.5)),
    "dynamic": "-",
    # the ranks of a data-parallel run (lesson 12)
    "rank 0": "-",
    "rank 1": (0, (5, 2)),
}
"""One line style per regime, so a regime is named by style as well as colour."""

# Memory categories are not regimes: a sequential colour map, so none of them
# borrows a regime's colour (viridis is colour-blind safe and prints in grey).
CATEGORY_ORDER = ("parameters", "master weights", "gradients", "optimizer state", "activations")
CATEGORY_COLORS: dict[str, str] = {
    name: "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colormaps["viridis"](t)[:3]))
    for name, t in zip(CATEGORY_ORDER, (0.05, 0.3, 0.55, 0.78, 0.97), strict=True)
}
"""One colour per memory category of :func:`memory_bars`."""

SHORT_NAMES = {
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "fp8 e4m3fn",
    "float8_e5m2": "fp8 e5m2",
}
FALLBACK = [OKABE_ITO[k] for k in ("blue", "orange", "bluish green", "reddish purple", "sky blue")]
WIDE = (8.0, 4.5)


def color_of(name: str, index: int = 0) -> str:
    return COLORS.get(name, FALLBACK[index % len(FALLBACK)])


def short_name(fmt: Format) -> str:
    return SHORT_NAMES.get(fmt.name, fmt.name)


def as_pow2(x: float) -> str:
    """``x`` as mathtext ``2^k`` when it is a power of two, else in %g notation."""
    if x > 0:
        k = math.log2(x)
        if k == round(k):
            return f"$2^{{{round(k)}}}$"
    return f"{x:g}"


def as_percent(x: float) -> str:
    """A fraction as a percentage readable at any size: 0%, 0.0031%, 12.3%."""
    if x == 0:
        return "0%"
    if x < 0.001:
        return f"{100 * x:.2g}%"
    return f"{x:.1%}"


def moving_average(y: Any, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values, ignoring NaN/inf (a skipped or diverged step);
    NaN where the window holds no finite value. The first values average what exists."""
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    total = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    count = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, len(y) + 1)
    lo = np.maximum(hi - max(int(window), 1), 0)
    n = count[hi] - count[lo]
    out = np.full(len(y), np.nan)
    np.divide(total[hi] - total[lo], n, out=out, where=n > 0)
    return out


def seed_stats(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over axis 0 of the finite values (NaN where there are none)."""
    ok = np.isfinite(stack)
    n = ok.sum(axis=0)
    mean = np.full(stack.shape[1], np.nan)
    np.divide(np.where(ok, stack, 0.0).sum(axis=0), n, out=mean, where=n > 0)
    low = np.where(ok, stack, np.inf).min(axis=0)
    high = np.where(ok, stack, -np.inf).max(axis=0)
    low[n == 0] = high[n == 0] = np.nan
    return mean, low, high


def log2_axis(axis: Any) -> None:
    """A log2 axis with ticks at powers of two written as 2^k."""
    axis.set_major_locator(LogLocator(base=2))
    axis.set_major_formatter(FuncFormatter(lambda v, _: as_pow2(v) if v > 0 else ""))
    axis.set_minor_formatter(NullFormatter())
