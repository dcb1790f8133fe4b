"""Data parallel over MPI ranks (minimp.distributed), launched with ``mpiexec -n 2``.

One launch runs every multi-rank check (``python -m minimp.distributed checks``) and
writes its results as JSON; the tests below read them. The rest runs in this process.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import minimp.functional as F
from minimp import distributed, optim, tensor
from minimp.amp import GradScaler, MasterWeights


@pytest.fixture(scope="module")
def ranks():
    if distributed.find_mpiexec() is None:
        pytest.skip(f"no mpiexec beside {sys.executable} or on PATH ({distributed.INSTALL})")
    return distributed.launch("checks", ranks=2, timeout=240)


def test_two_ranks_ran(ranks):
    assert ranks["ranks"] == 2


def test_every_rank_holds_identical_weights_after_every_step(ranks):
    assert ranks["equivalence"]["identical"]
    shared = ranks["found_inf"]["shared"]
    assert all(shared["identical"]) and max(shared["spread"]) == 0.0


def test_skip_decisions_agree_with_the_shared_check_and_differ_without(ranks):
    result = ranks["found_inf"]
    t = result["outlier_step"]
    shared, alone = result["shared"], result["not shared"]
    # the outlier overflowed on rank 1 only, in both runs
    assert alone["found_inf_here"][1][t] == 1.0 and alone["found_inf_here"][0][t] == 0.0
    assert shared["found_inf_here"][1][t] == 1.0 and shared["found_inf_here"][0][t] == 0.0
    assert shared["stepped"][0] == shared["stepped"][1]
    assert shared["stepped"][0][t] == 0.0  # both skipped
    assert alone["stepped"][0][t] == 1.0 and alone["stepped"][1][t] == 0.0
    assert not all(alone["identical"]) and max(alone["spread"]) > 0
    # checked after the all-reduce, the inf reaches every rank through the sum
    after = result["after the reduce, not shared"]
    assert after["stepped"][0] == after["stepped"][1] and after["stepped"][0][t] == 0.0


def test_n_ranks_equal_one_rank_with_the_full_batch_within_the_bound(ranks):
    eq = ranks["equivalence"]
    assert eq["within_bound"], eq["worst_ratio"]
    # and the weights stay within a few float32 ulps of the one-rank run's
    assert max(eq["weight_gap_vs_one_rank"]) < 1e-6


def test_zero1_stores_the_masters_and_adam_state_once_over_the_ranks(ranks):
    zero = ranks["zero"]
    p = zero["n_params"]
    shard = -(-p // 2)
    full = {"parameters": 2 * p, "master weights": 4 * p,
            "gradients": 2 * p + 4 * p, "optimizer state": 8 * p}  # fmt: skip
    sharded = {"parameters": 2 * p, "master weights": 4 * shard,
               "gradients": 2 * p + 4 * shard, "optimizer state": 8 * shard}  # fmt: skip
    for rank in (0, 1):
        assert {k: v[rank] for k, v in zero["replicated"].items()} == full
        assert {k: v[rank] for k, v in zero["zero-1"].items()} == sharded
    assert zero["zero_equals_replicated"]  # elementwise updates: sharding changes no bit


def test_a_resumed_run_continues_bit_for_bit(ranks):
    resume = ranks["resume"]
    assert resume["replicated"] == {"bit_for_bit": True, "files": ["run-False.npz"]}
    assert resume["zero-1"]["bit_for_bit"]
    assert resume["zero-1"]["files"] == ["run-True.rank0of2.npz", "run-True.rank1of2.npz"]


# ---- in this process, no MPI --------------------------------------------------------
def test_one_process_is_the_plain_mixed_precision_loop():
    run = distributed.DataParallel(distributed.DataParallelConfig())
    plain = distributed.DataParallel(distributed.DataParallelConfig())  # for its model only
    model, masters = plain.model, MasterWeights(plain.model)
    opt = optim.SGD(masters.parameters(), lr=0.05, momentum=0.9)
    scaler = GradScaler()
    for t in range(4):
        run.step()
        x, y = run.global_batch(t)
        masters.zero_grad()
        loss = F.cross_entropy(model(tensor(x, dtype="float16")).float(), y)
        scaler.scale(loss).backward()
        masters.copy_grads_to_masters()
        scaler.step(opt)
        scaler.update()
        masters.copy_masters_to_model()
    ours = run.weights().view(np.uint32)
    theirs = np.concatenate([p.data.astype(np.float32).ravel() for p in model.parameters()])
    assert np.array_equal(ours, theirs.view(np.uint32))


def test_float16_sum_rounds_each_addition_as_float16():
    a = np.array([60000, 40000, 2.0**-24, 1.0, 2048], dtype=np.float16)
    b = np.array([10000, -1, 2.0**-24, 2.0**-11, 1], dtype=np.float16)
    inout = b.copy()
    distributed._float16_sum(a.tobytes(), memoryview(inout).cast("B"), None)
    with np.errstate(over="ignore"):
        assert np.array_equal(inout, a + b, equal_nan=True)
    assert np.isinf(inout[0]) and inout[3] == 1.0 and inout[4] == 2048  # ties to even


def test_missing_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"minimp\[mpi\]"):
        distributed.import_mpi()


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="reduce_dtype"):
        distributed.DataParallelConfig(reduce_dtype="int8")
    with pytest.raises(ValueError, match="reduce_dtype='float32'"):
        distributed.DataParallelConfig(dtype="float32", reduce_dtype="float16")
    with pytest.raises(ValueError, match="check='after-reduce'"):
        distributed.DataParallelConfig(zero=True, check="before-reduce")


def test_the_scaler_decides_on_what_the_ranks_agree_its_check_found():
    """The one seam: what _share_found_inf returns is what step() and update() act on."""

    class OtherRankOverflowed(GradScaler):
        def _share_found_inf(self, found_inf):
            return True  # as if another rank's gradients held an inf

    run = distributed.DataParallel(distributed.DataParallelConfig())
    x, y = run.global_batch(0)
    before = run.weights()
    scaler = OtherRankOverflowed()
    opt = optim.SGD(run.masters.parameters(), lr=0.05)
    scaler.scale(F.cross_entropy(run.model(tensor(x, dtype="float16")).float(), y)).backward()
    run.masters.copy_grads_to_masters()
    assert scaler.step(opt) is False  # this rank's gradients are finite, yet it skips
    scaler.update()
    run.masters.copy_masters_to_model()
    assert scaler.get_scale() == 2.0**15
    assert np.array_equal(run.weights(), before)
