"""Every figure: measured data in, a matplotlib ``Figure`` out.

The functions take plain data (dicts and arrays, as ``minimp.train``,
``minimp.stats`` and ``GradScaler.history_arrays()`` produce them), so the plots
know nothing of training and save nothing: the caller does. Figures are built on
``matplotlib.figure.Figure`` directly, never through pyplot, so no display and no
global state are involved. Sizes are for the README: about 8 inches wide at
100-150 dpi.

One module per concept, each beside the lessons that draw it; every figure takes
its colours and line styles from :mod:`~minimp.tools.plots.palette`. The names are
gathered here so a lesson writes ``plots.number_line(...)``.
"""

from minimp.tools.plots.autocast import EXP_OVERFLOW, autocast_overview
from minimp.tools.plots.blocks import accumulation_error, outlier_blocks, spike_scaling
from minimp.tools.plots.formats import NUMBER_LINE_FORMATS, number_line
from minimp.tools.plots.gradients import layer_underflow, underflow_histogram
from minimp.tools.plots.memory import memory_bars, memory_compared
from minimp.tools.plots.palette import (
    CATEGORY_COLORS,
    CATEGORY_ORDER,
    COLORS,
    LINESTYLES,
    OKABE_ITO,
)
from minimp.tools.plots.ranks import found_inf_divergence, reduce_dtype_errors, zero_memory
from minimp.tools.plots.scaling import FP8_ROLE_FORMATS, fp8_scaling, loss_scale_trace
from minimp.tools.plots.training import regimes_compared
from minimp.tools.plots.transformer import transformer_regimes
from minimp.tools.plots.weights import PURE16_STYLES, master_weights, one_weight_rounding, pure16

__all__ = [
    "CATEGORY_COLORS",
    "CATEGORY_ORDER",
    "COLORS",
    "EXP_OVERFLOW",
    "FP8_ROLE_FORMATS",
    "LINESTYLES",
    "NUMBER_LINE_FORMATS",
    "OKABE_ITO",
    "PURE16_STYLES",
    "accumulation_error",
    "autocast_overview",
    "found_inf_divergence",
    "fp8_scaling",
    "layer_underflow",
    "loss_scale_trace",
    "master_weights",
    "memory_bars",
    "memory_compared",
    "number_line",
    "one_weight_rounding",
    "outlier_blocks",
    "pure16",
    "reduce_dtype_errors",
    "regimes_compared",
    "spike_scaling",
    "transformer_regimes",
    "underflow_histogram",
    "zero_memory",
]
