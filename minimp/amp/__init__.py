"""Mixed precision itself: the three techniques of Micikevicius et al. 2018.

- ``autocast``: each op runs in the dtype a written policy gives it (sec. 3.3);
- ``MasterWeights``: float32 copies that accumulate small updates (sec. 3.1);
- ``GradScaler`` / ``StaticGradScaler``: loss scaling, dynamic or constant (sec. 3.2).
"""

from minimp.amp.autocast import POLICY, autocast, policy_table
from minimp.amp.master import MasterWeights
from minimp.amp.scaler import (
    GradScaler,
    LossScaleUnderflowError,
    ScalerConfig,
    ScaleRecord,
    StaticGradScaler,
)

__all__ = [
    "POLICY",
    "GradScaler",
    "LossScaleUnderflowError",
    "MasterWeights",
    "ScaleRecord",
    "ScalerConfig",
    "StaticGradScaler",
    "autocast",
    "policy_table",
]
