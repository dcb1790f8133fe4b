"""``autocast``: choose each op's dtype by a written policy, as PyTorch's CUDA autocast does.

Inside ``with autocast(dtype=minimp.float16):`` an op's tensor inputs are cast
before it runs, by the table ``POLICY``:

- ``LOWER``: matmul and linear run in the low dtype, the tensor cores' job (inputs cast down);
- ``FLOAT32``: ops whose range or accumulated rounding error matters (exp, log,
  pow, softmax, log_softmax, sum, the losses) run in float32 (inputs cast up);
- ``PROMOTE``: binary arithmetic on mixed dtypes follows torch's result-type rule:
  a dimensioned operand's dtype wins over a 0-d one's (``float16[8] + float32[]``
  is float16, the 0-d value rounded to float16 first); between operands of the same
  kind the widest wins (float16 with bfloat16 is float32);
- every other op runs in the dtype of its input.

This is the paper's sec. 3.3 as PyTorch implements it. The float16 copy of a
float32 parameter (a leaf that requires grad) is made once per region and reused,
as in PyTorch, also under ``no_grad`` (inference casts each weight once); its
backward casts the gradient back to float32, so the float32 parameter is, in
effect, the master weight. A copy made under ``no_grad`` has no graph, so it is
made again (once) when gradients are enabled inside the same region.
"""

from __future__ import annotations

from typing import Any

from minimp import functional
from minimp.tensor import Tensor, as_dtype, bfloat16, float16, float32, is_grad_enabled

__all__ = ["FLOAT32", "LOWER", "POLICY", "PROMOTE", "autocast", "policy_table"]

LOWER, FLOAT32, PROMOTE = "lower precision", "float32", "promote to widest"

# From PyTorch's CUDA autocast lists (aten/src/ATen/autocast_mode.cpp), for the ops
# minimp has. Ops not listed run in their input dtype.
POLICY: dict[str, str] = {
    "matmul": LOWER,
    "linear": LOWER,
    "exp": FLOAT32,
    "log": FLOAT32,
    "pow": FLOAT32,
    "softmax": FLOAT32,
    "log_softmax": FLOAT32,
    "sum": FLOAT32,
    "cross_entropy": FLOAT32,
    "mse_loss": FLOAT32,
    "layer_norm": FLOAT32,
    "add": PROMOTE,
    "sub": PROMOTE,
    "mul": PROMOTE,
    "div": PROMOTE,
    "where": PROMOTE,  # not on torch's lists: torch.where's own type promotion does it
    # on none of torch's lists: they run in their input's dtype (no cast), listed so
    # that policy_table() shows a transformer's every op
    "embedding": "its input dtype",
    "gelu": "its input dtype",
    "dropout": "its input dtype",
    "masked_fill": "its input dtype",
    "split": "its input dtype",
}


def policy_table() -> str:
    """The policy as a table a reader can print."""
    rows = [f"{op:<14} {rule}" for op, rule in POLICY.items()]
    return "\n".join([f"{'op':<14} runs in", *rows, f"{'(any other)':<14} its input dtype"])


class autocast:
    """Context manager: ops inside run in the dtype ``POLICY`` chooses.

    Regions nest; ``autocast(enabled=False)`` inside one turns it off (e.g. to run
    a part of the model in float32 on purpose). ``float32_list=False`` (minimp's, for
    a lesson) runs the float32 list in the low dtype too, to show what it prevents.
    """

    def __init__(
        self, dtype: Any = float16, enabled: bool = True, float32_list: bool = True
    ) -> None:
        self.dtype = as_dtype(dtype)
        self.float32_list = float32_list  # False: the FLOAT32 ops run in ``dtype`` too
        if self.dtype not in (float16, bfloat16):
            raise ValueError(f"autocast needs float16 or bfloat16, got {self.dtype}")
        self.enabled = enabled
        self._cache: dict[int, tuple[Tensor, Tensor, bool]] = {}

    def __enter__(self) -> autocast:
        self._previous = functional.set_autocast_hook(self._cast_inputs if self.enabled else None)
        return self

    def __exit__(self, *exc: object) -> None:
        functional.set_autocast_hook(self._previous)
        self._cache.clear()

    def _cast_inputs(self, op: str, tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        rule = POLICY.get(op)
        if rule == LOWER or (rule == FLOAT32 and not self.float32_list):
            return tuple(self._lower(t) for t in tensors)
        if rule == FLOAT32:
            return tuple(t.to(float32) for t in tensors)
        if rule == PROMOTE and len({t.dtype for t in tensors}) > 1:
            target = _result_type(tensors)
            return tuple(t if t.dtype == target else t.to(target) for t in tensors)
        return tensors

    def _lower(self, t: Tensor) -> Tensor:
        if t.dtype == self.dtype:
            return t
        if not (t.is_leaf and t.requires_grad):
            return t.to(self.dtype)
        cached = self._cache.get(id(t))
        grad = is_grad_enabled()
        # A cast made with gradients on is reused until a backward() through it frees its
        # graph link (gradient accumulation inside one region), then made again; one made
        # under no_grad (no graph) serves no_grad only.
        stale = cached is None or cached[0] is not t
        stale = stale or (bool(cached[1]._parents) if grad else cached[2]) != grad
        if stale:
            cached = self._cache[id(t)] = (t, t.to(self.dtype), grad)
        return cached[1]


def _result_type(tensors: tuple[Tensor, ...]) -> Any:
    """torch's result type for floating operands: dimensioned tensors before 0-d ones,
    then the widest (two different 16-bit formats meet in float32)."""
    dimensioned = [t.dtype for t in tensors if t.data.ndim > 0]
    dtypes = set(dimensioned) if dimensioned else {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 else float32
