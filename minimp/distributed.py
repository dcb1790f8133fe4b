"""Data parallel training over MPI ranks: where mixed precision's scaler must agree.

Each rank is one process started by ``mpiexec -n N`` and holds a replica of the
model. Every step each rank takes its shard of the same global batch, computes its
gradients, and the ranks all-reduce them, as PyTorch's DDP does: each rank divides
its gradients by N, then the sum is taken (in float32, or in float16 to halve the
traffic). Then each rank runs the scaler and the optimizer on the averaged gradients::

    loss = F.cross_entropy(model(x_shard).float(), y_shard)  # this rank's B/N examples
    scaler.scale(loss).backward()
    average the gradients over the ranks (MPI Allreduce)     # float32 or float16
    masters.copy_grads_to_masters()
    scaler.unscale_(optimizer)   # found_inf all-reduced with MAX: all skip or all step
    scaler.step(optimizer); scaler.update(); masters.copy_masters_to_model()

The inf/NaN check is all-reduced (MAX) before the scaler decides, as Megatron-LM and
PyTorch's ShardedGradScaler do (``RankScaler``, through the scaler's one seam
``GradScaler._share_found_inf``). A rank that skips while another steps leaves the
replicas different for good. ZeRO stage 1 (Rajbhandari et al. 2020) shards the float32
masters and the optimizer state: rank r keeps and updates only its 1/N of them, then
the ranks all-gather the rounded 16-bit weights.

The collectives are mpi4py's (``Allreduce``, ``Allgather`` on NumPy buffers); a
float16 sum is an MPI user-defined operation that rounds each addition to float16, as
a float16 reduction on the wire does. CuPy arrays could go to MPI directly only
through a CUDA-aware MPI build, which the MPICH wheel from PyPI is not: this module
works on NumPy arrays (CPU) only and says so rather than copying through the host.

With ``comm=None`` (no MPI) or a 1-rank communicator, every collective is the
identity and a run is the plain single-process run, bit for bit.
``python -m minimp.distributed TASK --json FILE`` is the worker that lesson 12 and the
tests launch under ``mpiexec``; ``launch`` starts it and returns its JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import minimp.functional as F
from minimp import checkpoint, data, nn, optim
from minimp.amp import GradScaler, MasterWeights
from minimp.tensor import Tensor, as_dtype, compute, ieee, round_to_dtype, tensor

__all__ = [
    "INSTALL",
    "DataParallel",
    "DataParallelConfig",
    "RankScaler",
    "all_gather",
    "all_reduce_max",
    "all_reduce_mean",
    "find_mpiexec",
    "import_mpi",
    "launch",
]

INSTALL = "pip install 'minimp[mpi]'"


def import_mpi() -> Any:
    """``mpi4py.MPI``, or an ImportError naming the extra that installs it."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as error:  # RuntimeError: mpi4py without libmpi
        raise ImportError(
            f"minimp.distributed needs mpi4py and an MPI library ({error}). Install both "
            f"with {INSTALL} (mpi4py and the MPICH wheel), then start the ranks with "
            "mpiexec -n 2 python -m minimp.distributed ..."
        ) from None
    return MPI


# ---- the collectives ------------------------------------------------------------------
def _float16_sum(inbuf: Any, inoutbuf: Any, datatype: Any) -> None:
    """MPI's reduction callback: ``inout = in + inout`` in float16, each addition rounded
    (NumPy's float16 add rounds once, to nearest-even, as float16 hardware)."""
    a = np.frombuffer(inbuf, dtype=np.float16)
    b = np.frombuffer(inoutbuf, dtype=np.float16)
    with ieee():
        b[...] = a + b


_OPS: dict[str, Any] = {}


def _float16_op(MPI: Any) -> Any:
    if "float16" not in _OPS:
        _OPS["float16"] = MPI.Op.Create(_float16_sum, commute=True)
    return _OPS["float16"]


def all_reduce_mean(comm: Any, flat: np.ndarray, predivide: bool = True) -> np.ndarray:
    """The mean over the ranks of each rank's ``flat`` (float32 or float16), as DDP
    takes it: each rank divides by N first (rounded to the dtype), then the ranks
    sum. In float32 dividing by N = 2 is exact (but for subnormals); in float16 the
    pre-division flushes what is below 2^-23, and each addition rounds to float16 and
    overflows above 65504; ``predivide=False`` sums first and divides the sum (as a
    SUM all-reduce followed by a division does), which overflows where the sum of the
    ranks' values passes 65504. One rank: ``flat`` itself."""
    if comm is None or comm.Get_size() == 1:
        return flat
    MPI = import_mpi()
    n = np.float32(comm.Get_size() if predivide else 1)
    after = np.float32(1 if predivide else comm.Get_size())
    if flat.dtype == np.float32:
        with ieee():
            out = (flat / n).astype(np.float32)
            comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
            return out if predivide else (out / after).astype(np.float32)
    if flat.dtype == np.float16:
        half = np.dtype(np.float16)
        with ieee():
            out = round_to_dtype(compute(flat) / n, half)
            comm.Allreduce(MPI.IN_PLACE, [out.view(np.uint16), MPI.UINT16_T], op=_float16_op(MPI))
            return out if predivide else round_to_dtype(compute(out) / after, half)
    raise TypeError(f"all_reduce_mean takes float32 or float16 arrays, got {flat.dtype}")


def all_reduce_max(comm: Any, flag: bool) -> bool:
    """True on every rank when it is True on any rank (MPI MAX over one byte)."""
    if comm is None or comm.Get_size() == 1:
        return bool(flag)
    MPI = import_mpi()
    out = np.array([int(flag)], dtype=np.int8)
    comm.Allreduce(MPI.IN_PLACE, out, op=MPI.MAX)
    return bool(out[0])


def all_gather(comm: Any, part: np.ndarray) -> np.ndarray:
    """Every rank's ``part`` (same size on each), concatenated in rank order."""
    if comm is None or comm.Get_size() == 1:
        return part.copy()
    MPI = import_mpi()
    kinds = {1: MPI.UINT8_T, 2: MPI.UINT16_T, 4: MPI.UINT32_T, 8: MPI.UINT64_T}
    bits = np.ascontiguousarray(part).view(f"u{part.itemsize}")
    out = np.empty(bits.size * comm.Get_size(), dtype=bits.dtype)
    comm.Allgather([bits, kinds[part.itemsize]], [out, kinds[part.itemsize]])
    return out.view(part.dtype)


class RankScaler(GradScaler):
    """``GradScaler`` whose inf/NaN check is all-reduced (MAX) over the ranks before it
    decides, so every rank skips or steps together; ``share=False`` keeps each rank's
    own check (the bug lesson 12 measures). ``found_inf_here`` is what this rank's own
    gradients showed at the last ``unscale_``."""

    def __init__(self, comm: Any, *args: Any, share: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.comm, self.share, self.found_inf_here = comm, share, False

    def _share_found_inf(self, found_inf: bool) -> bool:
        self.found_inf_here = found_inf
        return all_reduce_max(self.comm, found_inf) if self.share else found_inf


# ---- data parallel training ----------------------------------------------------------
@dataclass(frozen=True)
class DataParallelConfig:
    """One data-parallel run of the digits MLP. ``batch_size`` is the global batch,
    split evenly over the ranks. ``check``: where the inf/NaN check runs,
    "after-reduce" (on the averaged gradients, as DDP + GradScaler) or "before-reduce"
    (each rank on its own gradients; a rank that skips sends zeros so that the
    all-reduce still completes: leaving it would hang the others, fairscale#180).
    ``outlier_step``: at that step, ``outlier_rank``'s shard of the batch is multiplied
    by ``outlier_factor`` (bad data on one rank: an overflow there only)."""

    sizes: tuple[int, ...] = (64, 128, 128, 10)
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adam"
    lr: float = 0.05
    dtype: str = "float16"  # the model's: float16 (float32 masters, loss scaling) or float32
    reduce_dtype: str = "float32"
    share_found_inf: bool = True
    check: str = "after-reduce"
    zero: bool = False  # ZeRO-1: masters and optimizer state sharded over the ranks
    init_scale: float = 2.0**16
    growth_interval: int = 2000
    seed: int = 0
    outlier_step: int | None = None
    outlier_rank: int = 1
    outlier_factor: float = 4096.0

    def __post_init__(self) -> None:
        choices = {
            "optimizer": ("sgd", "adam"),
            "dtype": ("float16", "float32"),
            "reduce_dtype": ("float16", "float32"),
            "check": ("after-reduce", "before-reduce"),
        }
        problems = [
            f"{name} must be one of {allowed}, got {getattr(self, name)!r}"
            for name, allowed in choices.items()
            if getattr(self, name) not in allowed
        ]
        if self.dtype == "float32" and self.reduce_dtype == "float16":
            problems.append("a float32 model all-reduces in float32: set reduce_dtype='float32'")
        if self.zero and self.check == "before-reduce":
            problems.append("ZeRO-1 checks its shard after the reduce: use check='after-reduce'")
        if problems:
            raise ValueError("invalid DataParallelConfig: " + "; ".join(problems))


class _ShardMasters:
    """This rank's slice of the flat float32 masters, with the state_dict a checkpoint saves."""

    def __init__(self, shard: Tensor) -> None:
        self.shard = shard

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"shard": self.shard.data.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        array = np.asarray(state["shard"])
        if array.shape != self.shard.shape or array.dtype != np.float32:
            raise ValueError(
                f"master shard is {array.dtype}{list(array.shape)}, expected "
                f"float32{list(self.shard.shape)}: a checkpoint of another rank count?"
            )
        self.shard.data = array.copy()


class DataParallel:
    """The digits MLP trained data parallel over ``comm``'s ranks (None: one process)."""

    def __init__(self, config: DataParallelConfig = DataParallelConfig(), comm: Any = None):
        self.config, self.comm = config, comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        if config.batch_size % self.size:
            raise ValueError(
                f"batch_size {config.batch_size} does not split over {self.size} ranks: "
                f"choose a multiple of {self.size}"
            )
        self.digits = data.load_digits(seed=0)
        self.dtype = as_dtype(config.dtype)
        # The same seed on every rank: the replicas start identical, as DDP broadcasts them.
        self.model = nn.MLP(list(config.sizes), dtype=self.dtype,
                            generator=np.random.default_rng(config.seed))  # fmt: skip
        mixed = config.dtype == "float16"
        self.masters = MasterWeights(self.model) if mixed else None
        self.params = self.masters.parameters() if mixed else list(self.model.parameters())
        self.shapes = [p.shape for p in self.params]
        total = sum(int(np.prod(s)) for s in self.shapes)
        self.n_params = total
        if config.zero:
            per_rank = -(-total // self.size)  # padded so every shard has the same size
            self.lo, self.hi = self.rank * per_rank, (self.rank + 1) * per_rank
            flat = np.zeros(per_rank * self.size, dtype=np.float32)
            flat[:total] = _flatten([p.data for p in self.params], np.float32)
            self.shard = Tensor(flat[self.lo : self.hi].copy(), requires_grad=True)
            self.shard_masters = _ShardMasters(self.shard)
            self.masters = None  # the full float32 masters exist on no rank
            trained = [self.shard]
        else:
            trained = self.params
        if config.optimizer == "sgd":
            self.optimizer = optim.SGD(trained, lr=config.lr, momentum=0.9)
        else:
            self.optimizer = optim.Adam(trained, lr=config.lr)
        self.scaler = RankScaler(
            comm,
            init_scale=config.init_scale,
            growth_interval=config.growth_interval,
            enabled=mixed,
            share=config.share_found_inf,
        )
        self.steps_done = 0
        self.last_gradient: np.ndarray | None = None  # the averaged float32 gradient

    # ---- the batches ----------------------------------------------------------------
    def global_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole batch of ``step``, the same on every rank, from (seed, step) alone
        (so a resumed run draws the batches an uninterrupted one would)."""
        rng = np.random.default_rng([self.config.seed, step])
        idx = rng.choice(len(self.digits.x_train), self.config.batch_size, replace=False)
        return self.digits.x_train[idx], self.digits.y_train[idx]

    def local_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.global_batch(step)
        b = self.config.batch_size // self.size
        x, y = x[self.rank * b : (self.rank + 1) * b].copy(), y[self.rank * b : (self.rank + 1) * b]
        c = self.config
        if step == c.outlier_step and self.rank == c.outlier_rank % self.size:
            x *= np.float32(c.outlier_factor)
        return x, y

    # ---- one step -------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """One data-parallel step; what this rank saw and decided."""
        c, t = self.config, self.steps_done
        self.optimizer.zero_grad()
        self.model.zero_grad()
        x, y = self.local_batch(t)
        logits = self.model(tensor(x, dtype=self.dtype))
        loss = F.cross_entropy(logits.float() if self.dtype != np.float32 else logits, y)
        self.scaler.scale(loss).backward()
        model_params = list(self.model.parameters())
        if c.check == "before-reduce":
            self.scaler.unscale_(self.optimizer, masters=self.masters)
            found = self.scaler._per_optimizer[id(self.optimizer)].found_inf
            flat = _flatten([p.grad.data for p in self.params], np.float32)
            if found:
                flat[:] = 0.0
            grad = all_reduce_mean(self.comm, flat)
            self._set_grads(self.params, grad)
        else:
            if c.reduce_dtype == "float16":
                flat = _flatten([p.grad.data for p in model_params], np.float16)
                grad = compute(all_reduce_mean(self.comm, flat))
            else:
                flat = _flatten([compute(p.grad.data) for p in model_params], np.float32)
                grad = all_reduce_mean(self.comm, flat)
            if c.zero:
                padded = np.zeros(self.shard.size * self.size, dtype=np.float32)
                padded[: grad.size] = grad
                self.shard.grad = Tensor(padded[self.lo : self.hi].copy())
            else:
                self._set_grads(self.params, grad)
        self.last_gradient = grad
        stepped = self.scaler.step(self.optimizer)
        scale = self.scaler.get_scale()
        self.scaler.update()
        if c.zero:
            self._gather_weights()
        elif self.masters is not None:
            self.masters.copy_masters_to_model()
        self.steps_done += 1
        return {
            "loss": float(loss.item()),
            "stepped": bool(stepped),
            "found_inf_here": bool(self.scaler.found_inf_here),
            "scale": float(scale),
        }

    def _set_grads(self, params: list[Tensor], flat: np.ndarray) -> None:
        for p, g in zip(params, _unflatten(flat, self.shapes), strict=True):
            p.grad = Tensor(np.ascontiguousarray(g, dtype=np.float32))

    def _gather_weights(self) -> None:
        """ZeRO-1: round this rank's masters to the model's dtype, all-gather the ranks'
        16-bit shards, and write the whole into the model."""
        with ieee():
            part = round_to_dtype(self.shard.data, self.dtype)
        whole = all_gather(self.comm, part)[: self.n_params]
        for p, w in zip(self.model.parameters(), _unflatten(whole, self.shapes), strict=True):
            p.data = np.ascontiguousarray(w)

    # ---- what a rank holds ----------------------------------------------------------
    def weights(self) -> np.ndarray:
        """The model's weights, flat, widened to float32 (exact)."""
        return _flatten([compute(p.data) for p in self.model.parameters()], np.float32)

    def stored_bytes(self) -> dict[str, int]:
        """Bytes this rank holds after a step, from its arrays: the model's weights, the
        gradients (the model's and the float32 ones the optimizer reads), the masters
        (or this rank's shard of them) and the optimizer state. The transient flat
        buffer of the all-reduce is not counted."""
        trained = self.optimizer._params()
        model_params = list(self.model.parameters())
        grads = [p.grad for p in model_params + trained if p.grad is not None]
        state = [v for s in self.optimizer.state.values() for v in s.values()]
        mixed = self.dtype != np.float32  # a float32 model's weights are its own masters
        return {
            "parameters": sum(p.data.nbytes for p in model_params),
            "master weights": sum(p.data.nbytes for p in trained) if mixed else 0,
            "gradients": sum(g.data.nbytes for g in grads),
            "optimizer state": sum(v.nbytes for v in state if hasattr(v, "nbytes")),
        }

    # ---- checkpoints ----------------------------------------------------------------
    def checkpoint_path(self, path: str | os.PathLike) -> Path:
        """Where this rank's checkpoint goes: ``path`` itself (rank 0 saves the whole run),
        or, with ZeRO-1, one file per rank beside it (each rank saves its shard)."""
        path = Path(path)
        if not self.config.zero:
            return path
        return path.with_name(f"{path.stem}.rank{self.rank}of{self.size}{path.suffix}")

    def save(self, path: str | os.PathLike) -> None:
        """Save the run (``checkpoint.save``): without sharding rank 0 writes everything,
        the replicas being identical; with ZeRO-1 every rank writes its shard."""
        extra = {"steps_done": self.steps_done, "ranks": self.size}
        if self.config.zero:
            checkpoint.save(self.checkpoint_path(path), model=self.model,
                            optimizer=self.optimizer, masters=self.shard_masters,
                            scaler=self.scaler, extra=extra)  # fmt: skip
        elif self.rank == 0:
            checkpoint.save(path, model=self.model, optimizer=self.optimizer,
                            masters=self.masters, scaler=self.scaler, extra=extra)  # fmt: skip
        if self.comm is not None:
            self.comm.Barrier()  # every file is complete before any rank reads one

    def load(self, path: str | os.PathLike) -> None:
        """Load what ``save`` wrote into this run (every rank reads; all or nothing)."""
        masters = self.shard_masters if self.config.zero else self.masters
        extra = checkpoint.load(self.checkpoint_path(path), model=self.model,
                                optimizer=self.optimizer, masters=masters,
                                scaler=self.scaler)  # fmt: skip
        if extra.get("ranks") != self.size:
            raise checkpoint.CheckpointError(
                f"{path}: saved by {extra.get('ranks')} ranks, loaded by {self.size}"
            )
        self.steps_done = int(extra["steps_done"])


def _flatten(arrays: list[Any], dtype: Any) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=dtype).reshape(-1) for a in arrays])


def _unflatten(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    out, start = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[start : start + n].reshape(shape))
        start += n
    return out


def spread(comm: Any, weights: np.ndarray) -> tuple[float, bool]:
    """(max |w_r - w_0| over ranks and elements, whether all ranks hold the same bits)."""
    every = all_gather(comm, weights).reshape(-1, weights.size)
    same = all(np.array_equal(every[0].view(np.uint32), w.view(np.uint32)) for w in every)
    with ieee():
        gap = float(np.max(np.abs(every - every[0]))) if every.size else 0.0
    return gap, same


# ---- launching the ranks ---------------------------------------------------------------
def find_mpiexec() -> str | None:
    """``mpiexec`` beside this Python first (the MPICH wheel installs it there), then on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def launch(task: str, ranks: int = 2, timeout: float = 300, **options: Any) -> dict[str, Any]:
    """Run ``python -m minimp.distributed TASK`` on ``ranks`` MPI ranks and return the JSON
    rank 0 wrote. ``options`` become ``--key value`` arguments (as JSON)."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise FileNotFoundError(
            f"no mpiexec beside {sys.executable} or on PATH: {INSTALL} installs MPICH's"
        )
    with tempfile.TemporaryDirectory(prefix="minimp-ranks-") as folder:
        out = Path(folder) / "result.json"
        command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "minimp.distributed", task,
                   "--json", str(out), "--options", json.dumps(options)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
            )
        return json.loads(out.read_text())


# ---- what the lesson and the tests run on the ranks --------------------------------------
def _gather_rows(comm: Any, rows: list[dict[str, Any]], keys: list[str]) -> dict[str, list]:
    """Per-step records of every rank: {key: [[rank 0's values], [rank 1's], ...]}."""
    out = {}
    for key in keys:
        mine = np.array([float(r[key]) for r in rows], dtype=np.float64)
        out[key] = all_gather(comm, mine).reshape(-1, len(rows)).tolist()
    return out


def task_found_inf(comm: Any, steps: int = 40, outlier_step: int = 10) -> dict[str, Any]:
    """(a): an overflow on one rank only, the check shared or not, and where it runs."""
    result = {}
    variants = [
        ("shared", True, "before-reduce"),
        ("not shared", False, "before-reduce"),
        ("after the reduce, not shared", False, "after-reduce"),
    ]
    for name, share, check in variants:
        config = DataParallelConfig(share_found_inf=share, check=check, outlier_step=outlier_step)
        run = DataParallel(config, comm)
        rows = []
        for _ in range(steps):
            row = run.step()
            row["spread"], row["identical"] = spread(comm, run.weights())
            rows.append(row)
        result[name] = {
            **_gather_rows(comm, rows, ["stepped", "found_inf_here", "scale", "loss"]),
            "spread": [r["spread"] for r in rows],
            "identical": [r["identical"] for r in rows],
        }
    result["outlier_step"] = outlier_step
    return result


def task_reduce_dtype(comm: Any, warmup: int = 50) -> dict[str, Any]:
    """(b): the ranks' float16 gradients averaged in float16, divided by N before the
    sum (DDP) or after it, against the float32 average of the same gradients, over a
    sweep of loss scales, after ``warmup`` steps of mixed-precision training."""
    run = DataParallel(DataParallelConfig(), comm)
    for _ in range(warmup):
        run.step()
    x, y = run.local_batch(run.steps_done)
    out: dict[str, Any] = {"scales": [2.0**k for k in range(25)], "local_overflow": []}
    for order in ("divide first", "sum first"):
        out[order] = {"overflow": [], "flushed": [], "rel_error": []}
    for scale in out["scales"]:
        run.model.zero_grad()
        loss = F.cross_entropy(run.model(tensor(x, dtype=run.dtype)).float(), y)
        (loss * scale).backward()
        grads = _flatten([p.grad.data for p in run.model.parameters()], np.float16)
        out["local_overflow"].append(all_reduce_max(comm, not np.isfinite(grads).all()))
        exact = all_reduce_mean(comm, compute(grads))
        finite = np.isfinite(exact)
        nonzero = max(int(np.sum(finite & (exact != 0))), 1)
        for order, predivide in (("divide first", True), ("sum first", False)):
            half = compute(all_reduce_mean(comm, grads, predivide=predivide))
            with ieee():
                rest = finite & np.isfinite(half) & (exact != 0) & (half != 0)
                rel = np.abs(half[rest] - exact[rest]) / np.abs(exact[rest])
                row = out[order]
                row["overflow"].append(float(np.sum(finite & ~np.isfinite(half)) / nonzero))
                row["flushed"].append(float(np.sum(finite & (exact != 0) & (half == 0)) / nonzero))
                row["rel_error"].append(float(np.median(rel)) if rel.size else float("nan"))
    out["scaler_scale"] = run.scaler.get_scale()
    return out


def task_zero(comm: Any, steps: int = 5) -> dict[str, Any]:
    """(c): bytes each rank stores with and without ZeRO-1 (Adam), and whether both
    runs hold the same weights (bit for bit) after ``steps`` steps."""
    out: dict[str, Any] = {}
    weights = {}
    for name, zero in [("replicated", False), ("zero-1", True)]:
        run = DataParallel(DataParallelConfig(optimizer="adam", lr=1e-3, zero=zero), comm)
        for _ in range(steps):
            run.step()
        held = run.stored_bytes()
        per_rank = {k: all_gather(comm, np.array([v], dtype=np.int64)).tolist()
                    for k, v in held.items()}  # fmt: skip
        out[name] = per_rank
        weights[name] = run.weights()
        out["n_params"] = run.n_params
    out["zero_equals_replicated"] = bool(
        np.array_equal(weights["replicated"].view(np.uint32), weights["zero-1"].view(np.uint32))
    )
    return out


def task_timing(comm: Any, steps: int = 30) -> dict[str, Any]:
    """Median wall time of one step on each rank, after a few warm-up steps."""
    run = DataParallel(DataParallelConfig(), comm)
    for _ in range(3):
        run.step()
    times = []
    for _ in range(steps):
        if comm is not None:
            comm.Barrier()
        start = time.perf_counter()
        run.step()
        times.append(time.perf_counter() - start)
    median = np.array([np.median(times)], dtype=np.float64)
    return {"ranks": run.size, "step_seconds": all_gather(comm, median).tolist()}


def _full_batch_reference(run: DataParallel, step: int) -> tuple[list, list]:
    """Per parameter tensor: the float32 gradient of the whole batch of ``step`` on one
    process, at ``run``'s weights, and the bound on its distance to the data-parallel
    average, ``2 gamma_B max_k sum_i |x_ik| |g_ik|`` (weights; ``sum_i |g_i|`` for biases),
    gamma_B = B u / (1 - B u), u = 2^-24. A float32 sum of B products lies within
    gamma_B sum |x g| of the exact one in any order (Higham, Accuracy and Stability of
    Numerical Algorithms, sec. 3.1); the two runs sum the batch in two orders, hence 2.
    The bound is per tensor (its largest element), not per element: BLAS sums a dot
    product of the forward pass in an order that depends on the batch size, so the
    ranks' activations differ from the one process's in their last bit too, and an
    element whose own sum is tiny can move by the rounding of its larger neighbours."""
    x, y = run.global_batch(step)
    h = tensor(x)
    inputs, outputs = [], []
    linears = [m for m in run.model.layers if isinstance(m, nn.Linear)]
    for layer in run.model.layers:
        if isinstance(layer, nn.Linear):
            inputs.append(h)
            h = layer(h)
            h.retain_grad()
            outputs.append(h)
        else:
            h = layer(h)
    for p in run.model.parameters():
        p.grad = None
    F.cross_entropy(h, y).backward()
    u = 2.0**-24
    gamma = len(x) * u / (1 - len(x) * u)
    grads, bounds = [], []
    for layer, a, out in zip(linears, inputs, outputs, strict=True):
        g = np.abs(out.grad.data.astype(np.float64))
        grads += [layer.weight.grad.data.reshape(-1), layer.bias.grad.data.reshape(-1)]
        weight_sums = g.T @ np.abs(a.data.astype(np.float64))
        bounds += [2 * gamma * float(weight_sums.max()), 2 * gamma * float(g.sum(axis=0).max())]
    for p in run.model.parameters():
        p.grad = None
    return grads, bounds


def task_checks(comm: Any, folder: str, steps: int = 12) -> dict[str, Any]:
    """What tests/test_distributed.py asserts, from one launch."""
    out: dict[str, Any] = {"ranks": 1 if comm is None else comm.Get_size()}
    # Equivalence: float32 model, float32 all-reduce, against the full batch on one rank.
    run = DataParallel(DataParallelConfig(dtype="float32"), comm)
    single = DataParallel(DataParallelConfig(dtype="float32"), None)
    within, worst, identical, gaps = True, 0.0, True, []
    for t in range(steps):
        references, bounds = _full_batch_reference(run, t)
        run.step()
        single.step()
        averaged = _unflatten(run.last_gradient, [r.shape for r in references])
        for mine, reference, bound in zip(averaged, references, bounds, strict=True):
            gap = float(np.max(np.abs(mine.astype(np.float64) - reference)))
            within &= gap <= bound
            worst = max(worst, gap / bound)
        identical &= spread(comm, run.weights())[1]
        gaps.append(float(np.max(np.abs(run.weights() - single.weights()))))
    out["equivalence"] = {"within_bound": within, "worst_ratio": worst,
                          "identical": identical, "weight_gap_vs_one_rank": gaps}  # fmt: skip
    # Skip decisions with and without the shared check (mixed precision, one outlier).
    out["found_inf"] = task_found_inf(comm, steps=steps, outlier_step=4)
    # ZeRO-1: bytes and bit-equality with the replicated run.
    out["zero"] = task_zero(comm, steps=3)
    # Resume bit for bit, replicated (rank 0 saves) and ZeRO-1 (each rank its shard).
    out["resume"] = {}
    for zero in (False, True):
        config = DataParallelConfig(optimizer="adam", lr=1e-3, zero=zero)
        whole = DataParallel(config, comm)
        for _ in range(6):
            whole.step()
        first = DataParallel(config, comm)
        for _ in range(3):
            first.step()
        path = Path(folder) / f"run-{zero}.npz"
        first.save(path)
        resumed = DataParallel(config, comm)
        resumed.load(path)
        for _ in range(3):
            resumed.step()
        same = np.array_equal(whole.weights().view(np.uint32), resumed.weights().view(np.uint32))
        same = not all_reduce_max(comm, not same)
        files = sorted(p.name for p in Path(folder).glob(f"run-{zero}*"))
        out["resume"]["zero-1" if zero else "replicated"] = {"bit_for_bit": same, "files": files}
    return out


TASKS = {
    "checks": task_checks,
    "found-inf": task_found_inf,
    "reduce-dtype": task_reduce_dtype,
    "zero": task_zero,
    "timing": task_timing,
}


def main(argv: list[str] | None = None) -> int:
    """The worker: run one task on every rank; rank 0 writes the JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m minimp.distributed")
    parser.add_argument("task", choices=[*sorted(TASKS), "lesson"])
    parser.add_argument("--json", required=True, help="where rank 0 writes the results")
    parser.add_argument("--options", default="{}", help="keyword arguments, as JSON")
    args = parser.parse_args(argv)
    comm = import_mpi().COMM_WORLD
    options = json.loads(args.options)
    if args.task == "lesson":
        result = {name: TASKS[name](comm, **options.get(name, {}))
                  for name in ("found-inf", "reduce-dtype", "zero", "timing")}  # fmt: skip
    else:
        if args.task == "checks":  # its checkpoints go beside the JSON, in launch's folder
            options.setdefault("folder", str(Path(args.json).parent))
        result = TASKS[args.task](comm, **options)
    if comm.Get_rank() == 0:
        Path(args.json).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
