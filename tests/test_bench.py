"""The step timer: sane, positive values in a quick run; the step it times is the
training loop's step. No test asserts a time or a speed ratio: those depend on the
machine and its load."""

import math

import pytest

from minimp import backend, data, memory
from minimp.tools import bench
from minimp.train import REGIMES, Run, TrainConfig

DIGITS = data.load_digits()
TINY = dict(sizes=(8, 16, 4), batch_size=16, steps=2, repeats=3, warmup=1)
CATEGORIES = {"parameters", "master weights", "gradients", "optimizer state", "activations"}


@pytest.mark.parametrize("regime", ["fp32", "mixed-dynamic", "bf16"])
def test_a_quick_measurement_returns_sane_positive_values(regime):
    r = bench.time_training_steps(regime, **TINY)
    assert r["name"] == regime and r["device"] == "cpu" and r["device_name"].startswith("cpu")
    assert r["minimp"]
    assert len(r["samples_s"]) == 3 and all(s > 0 for s in r["samples_s"])
    # the reported figures are the median, fastest and slowest of the samples it timed
    samples = sorted(r["samples_s"])
    assert (r["step_time_min_s"], r["step_time_s"], r["step_time_max_s"]) == (
        samples[0],
        samples[1],
        samples[2],
    )
    assert r["examples_per_s"] == pytest.approx(16 / r["step_time_s"])
    assert set(r["memory"]) == CATEGORIES
    assert r["memory_total"] == sum(r["memory"].values())
    assert math.isfinite(r["loss"]) and r["loss"] > 0


def test_bytes_follow_the_dtypes():
    n_params = 8 * 16 + 16 + 16 * 4 + 4
    fp32 = bench.time_training_steps("fp32", **TINY)["memory"]
    mixed = bench.time_training_steps("mixed-dynamic", **TINY)["memory"]
    assert fp32["parameters"] == 4 * n_params and fp32["master weights"] == 0
    assert mixed["parameters"] == 2 * n_params and mixed["master weights"] == 4 * n_params
    # the model's float16 gradients and the masters' float32 ones
    assert mixed["gradients"] == 6 * n_params
    assert 0 < mixed["activations"] < fp32["activations"]


@pytest.mark.parametrize("regime", list(REGIMES))
def test_the_timed_step_is_the_training_loop_bit_for_bit(regime):
    """Fed batches moved to the device before the clock starts, the timed step makes
    the same losses and weights as ``Run.train``."""
    config = TrainConfig(sizes=(64, 32, 10), steps=6, eval_every=6)
    run = Run(regime, DIGITS, config)
    batches = [run._batch(i) for i in range(config.steps)]
    timed = bench._RunSteps(Run(regime, DIGITS, config), batches)
    losses = [timed().item() for _ in range(config.steps)]
    assert losses == run.train().loss
    for a, b in zip(timed.run.model.parameters(), run.model.parameters(), strict=True):
        assert a.numpy().tobytes() == b.numpy().tobytes()


def test_memory_report_leaves_the_run_as_it_was():
    run = Run("mixed-dynamic", DIGITS, TrainConfig(steps=3))
    before = [p.numpy().copy() for p in run.model.parameters()]
    memory.memory_report(run)
    assert run.steps_done == 0 and run.optimizer.state == {} and run.scaler.history == []
    for p, b in zip(run.model.parameters(), before, strict=True):
        assert p.numpy().tobytes() == b.tobytes()
    # after training, the copy's optimizer state is counted once (one momentum buffer)
    run.train(2)
    n_params = sum(p.size for p in run.model.parameters())
    assert memory.memory_report(run)["optimizer state"] == 4 * n_params


def test_time_steps_calls_the_step_warmup_plus_steps_times_repeats():
    calls = []
    r = bench.time_steps(lambda: calls.append(1), steps=4, repeats=3, warmup=2)
    assert len(calls) == 2 + 4 * 3 and len(r["samples_s"]) == 3
    with pytest.raises(ValueError, match="steps >= 1"):
        bench.time_steps(lambda: None, steps=0)


def test_interleaved_timing_takes_one_block_of_each_contender_per_round():
    calls = []
    r = bench.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        steps=2,
        repeats=2,
        warmup=1,
    )
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 2
    assert set(r) == {"a", "b"} and all(len(v["samples_s"]) == 2 for v in r.values())


def test_compare_training_steps_times_every_regime_on_the_same_problem():
    names = ["fp32", "mixed-dynamic", "bf16"]
    options = {k: v for k, v in TINY.items() if k not in ("sizes", "batch_size")}
    r = bench.compare_training_steps(names, (8, 16, 4), 16, **options)
    assert list(r) == names
    assert {v["sizes"][0] for v in r.values()} == {8} and all(
        v["step_time_s"] > 0 for v in r.values()
    )
    # same initialisation and batches: the losses agree to the 16-bit formats' precision
    for v in r.values():
        assert v["loss"] == pytest.approx(r["fp32"]["loss"], rel=0.05)
    with pytest.raises(ValueError, match="timed once"):
        bench.compare_training_steps(["fp32", "fp32"], (8, 16, 4), 16, **options)


def test_too_little_data_for_one_batch_is_an_error():
    x, y = DIGITS.x_train[:10], DIGITS.y_train[:10]
    with pytest.raises(ValueError, match="do not make a batch of 64"):
        bench.compare_training_steps(["fp32"], data=(x, y))


@pytest.mark.skipif(backend.cuda_available(), reason="checks the message on a machine without GPU")
def test_cuda_without_a_gpu_says_why():
    with pytest.raises(RuntimeError, match="device 'cuda' requested"):
        bench.time_training_steps("fp32", **TINY, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA GPU")
def test_on_the_gpu():
    r = bench.time_training_steps("mixed-dynamic", **TINY, device="cuda")
    assert r["device"] == "cuda" and r["device_name"].startswith("cuda")
    assert r["step_time_s"] > 0 and math.isfinite(r["loss"])
    with pytest.raises(ValueError, match="bfloat16"):
        bench.time_training_steps("bf16", **TINY, device="cuda")


def test_baselines_are_timed_beside_the_regimes_on_the_same_batches():
    names = ["numpy fp32", "numpy mixed", "torch fp32"]
    options = {k: v for k, v in TINY.items() if k not in ("sizes", "batch_size")}
    r = bench.compare_training_steps(["fp32"], (8, 16, 4), 16, baselines=names, **options)
    assert list(r) == ["fp32", *names]
    assert [v["minimp"] for v in r.values()] == [True, False, False, False]
    # the same initial weights and batches, in the same order: after the same
    # number of steps, float32 NumPy and minimp agree to float32 rounding
    assert r["numpy fp32"]["loss"] == pytest.approx(r["fp32"]["loss"], rel=1e-5)
    assert r["numpy fp32"]["memory"]["parameters"] == r["fp32"]["memory"]["parameters"]
    with pytest.raises(ValueError, match="unknown baseline"):
        bench.compare_training_steps(["fp32"], (8, 16, 4), 16, baselines=["jax"], **options)


def test_a_target_is_a_ratio_of_two_contenders_measured_in_one_run():
    results = {
        "a": {"step_time_s": 3.0, "memory": {"activations": 10, "parameters": 5}},
        "b": {"step_time_s": 2.0, "memory": {"activations": 20, "parameters": 10}},
    }
    speed = bench.Target("cpu", "large", "a", "b", 2.0, "a vs b")
    memory = bench.Target("cpu", "large", "a", "b", 0.55, "memory", ("activations", "parameters"))
    assert speed.ratio(results) == 1.5 and memory.ratio(results) == 0.5
    assert bench.Target("cpu", "large", "a", "missing", 1.0, "").ratio(results) is None


def test_the_benchmark_command_runs_in_quick_mode(tmp_path, capsys):
    """What CI runs so the benchmark cannot rot: every workload, every regime that runs
    on the CPU, the hand-written baselines and PyTorch, every CPU target measured."""
    import json

    from minimp.__main__ import main

    assert main(["bench", "--quick", "--json", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["quick"] and "quick mode" in out
    from minimp.tools.baselines import torch_available

    expected = [b for b in bench.BASELINES if torch_available() or not b.startswith("torch")]
    assert "BLAS: " in out and result["threads"]["blas"] == bench.blas()
    transformer = result["workloads"].pop("transformer")
    assert set(transformer["results"]) == {"gpt fp32", "gpt amp"}
    assert "| gpt amp |" in out
    for name, workload in result["workloads"].items():
        timed = set(workload["results"])
        assert set(REGIMES) <= timed and {"numpy fp32", "numpy mixed"} <= timed
        assert timed | set(workload["not_timed"]) == set(REGIMES) | set(expected), name
        for row in workload["results"].values():
            assert row["step_time_s"] > 0 and math.isfinite(row["loss"])
            assert f"| {row['name']} |" in out or f"| *{row['name']}* |" in out
    cpu_targets = [t for t in bench.TARGETS if t.device == "cpu"]
    assert len(result["targets"]) == len(cpu_targets)
    assert all(t["ratio"] is not None and t["ratio"] > 0 for t in result["targets"])
    assert out.count(" | large | ") + out.count(" | small | ") == len(cpu_targets)


def test_a_row_is_kept_only_if_its_rounds_reproduce_within_10_percent():
    def row(ms):
        return {"step_time_s": ms / 1e3, "name": "x"}

    rounds = [{"steady": row(10.0), "noisy": row(10.0)},
              {"steady": row(10.9), "noisy": row(13.0)},
              {"steady": row(10.4), "noisy": row(10.2)}]  # fmt: skip
    kept, left_out = bench.reproduced(rounds)
    assert set(kept) == {"steady"} and kept["steady"]["step_time_s"] == 10.4 / 1e3
    assert kept["steady"]["round_medians_s"] == [0.01, 0.0104, 0.0109]
    assert set(left_out) == {"noisy"} and "10.00, 10.20, 13.00 ms" in left_out["noisy"]


def test_the_blas_kernel_and_its_threads_are_named():
    from threadpoolctl import threadpool_info

    named = bench.blas()
    for pool in threadpool_info():
        if pool["user_api"] == "blas":
            assert pool["internal_api"] in named and f"{pool['num_threads']} threads" in named
