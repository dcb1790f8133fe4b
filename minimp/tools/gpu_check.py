"""``python -m minimp gpu-check``: everything minimp claims about GPUs, in one command.

A GPU may be lent for a few minutes only, so the check is prepared in advance and
kept working on the CPU (a test runs it there). On a machine with CuPy and a CUDA
GPU it runs, each piece in its own process with its own time limit (400 s in
all, under the 8 minutes the check may take on an H100/H200):

1. the GPU tests, ``pytest -m gpu`` (the CPU tests' ops and a training step on CuPy);
2. the GPU lesson (``notebooks/*_on_the_gpu.py``), its figures saved in ``--out``;
3. the transformer (``minimp.gpt``) trained a few AMP steps on ``cuda``;
4. ``bench --device cuda``;

and writes every number to ``<out>/gpu-check.json`` (the lesson's and the bench's
own JSON are folded in). It exits non-zero if any piece fails. Without a GPU it
says so, checks that each piece imports, and exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minimp import backend

# Seconds each piece may take on the GPU machine: 400 in all, under the 8 minutes
# the check may spend (the machine's start and the transfers take the rest).
LIMITS = {"gpu-tests": 120, "lesson": 90, "transformer": 60, "bench": 130}
TAIL = 4000  # characters of each piece's output kept in the JSON


def _lesson_path() -> Path:
    from minimp.tools.lessons import lesson_paths

    (path,) = [p for p in lesson_paths() if p.stem.endswith("on_the_gpu")]
    return path


def _tests_dir() -> Path | None:
    tests = Path(__file__).resolve().parents[2] / "tests"
    return tests if (tests / "test_gpu.py").exists() else None


def pieces(out: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, command, extra environment) of each piece, in the order they run."""
    py = sys.executable
    figures = out / "figures"
    found = []
    tests = _tests_dir()
    if tests is not None:  # a checkout: an installed wheel ships no tests
        found.append(("gpu-tests", [py, "-m", "pytest", "-q", "-m", "gpu", str(tests)], {}))
    found += [
        (
            "lesson",
            [py, str(_lesson_path())],
            {
                "MINIMP_FIGURES": str(figures),
                "MINIMP_RESULTS": str(out / "lesson.json"),
                "MPLBACKEND": "Agg",
            },
        ),
        ("transformer", [py, "-m", "minimp.tools.gpu_check", "transformer"], {}),
        ("bench", [py, "-m", "minimp", "bench", "--device", "cuda",
                   "--json", str(out / "bench.json")], {}),
    ]  # fmt: skip
    return found


def run_pieces(
    out: Path, commands: Sequence[tuple[str, list[str], dict[str, str]]], limits: dict[str, float]
) -> dict[str, Any]:
    """Run each command with its time limit; what each printed, how long it took and
    whether it passed. Never raises on a failing piece: the next one still runs."""
    results = {}
    for name, command, env in commands:
        print(f"gpu-check: {name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                command,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=limits.get(name, 120),
            )
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            rc = "timeout"
            output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        wall = time.perf_counter() - start
        results[name] = {
            "ok": rc == 0,
            "rc": rc,
            "wall_s": round(wall, 1),
            "output": output[-TAIL:],
        }
        print(
            f"gpu-check: {name}: {'ok' if rc == 0 else 'FAILED'} ({rc}) in {wall:.0f} s", flush=True
        )
    for name, file in (("lesson", "lesson.json"), ("bench", "bench.json")):
        if name in results and (out / file).exists():
            results[name]["numbers"] = json.loads((out / file).read_text())
    if "transformer" in results and results["transformer"]["ok"]:
        last = results["transformer"]["output"].strip().splitlines()[-1]
        results["transformer"]["numbers"] = json.loads(last)
    return results


def transformer(device: str = "cuda", steps: int = 20) -> dict[str, Any]:
    """The small GPT trained ``steps`` AMP steps on ``device`` (float32 weights, autocast
    float16, dynamic loss scale, AdamW): its losses and its median step time."""
    import numpy as np

    from minimp import data, gpt, optim
    from minimp.amp import GradScaler, autocast

    config = gpt.GPTConfig()
    model = gpt.GPT(config, device=device, generator=np.random.default_rng(0))
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    scaler = GradScaler()
    text = data.load_shakespeare(block_size=config.block_size)
    rng = np.random.default_rng(0)
    xp = backend.array_module(model.parameters()[0].data)
    losses, times = [], []
    for _ in range(steps):
        x, y = text.batch("train", 16, rng)
        x, y = xp.asarray(x), xp.asarray(y)
        start = time.perf_counter()
        with autocast("float16"):
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        losses.append(loss.item())  # the sync that ends the step's timing
        times.append(time.perf_counter() - start)
    return {
        "device": device,
        "steps": steps,
        "batch": 16,
        "block_size": config.block_size,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "step_ms_median": 1e3 * float(np.median(times[steps // 2 :])),  # after warm-up
        "scale": scaler.get_scale(),
    }


def check_imports() -> list[str]:
    """Import every piece without running it: what a machine without a GPU can check."""
    import minimp.gpt
    import minimp.tools.bench
    import minimp.tools.lessons  # noqa: F401

    checked = ["minimp.gpt", "minimp.tools.bench", "minimp.tools.lessons", str(_lesson_path())]
    if _tests_dir() is not None:
        import pytest  # noqa: F401

        checked.append("pytest")
    return checked


def main(out: str | os.PathLike = "gpu-check") -> int:
    """The check; the exit status: 0 when every piece passed, or when there is no GPU."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from minimp.tools.bench import device_name

    report: dict[str, Any] = {"imports": check_imports()}
    try:
        backend.check_device("cuda")
    except RuntimeError as no_gpu:
        report.update(gpu=False, device=device_name("cpu"), why=str(no_gpu))
        print(f"gpu-check: NO GPU here, nothing measured ({no_gpu}). Its pieces import: "
              + ", ".join(report["imports"]))  # fmt: skip
        status = 0
    else:
        report.update(gpu=True, device=device_name("cuda"))
        report["pieces"] = run_pieces(out, pieces(out), LIMITS)
        failed = [name for name, r in report["pieces"].items() if not r["ok"]]
        report["failed"] = failed
        status = 1 if failed else 0
        print(f"gpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'every piece passed'}")
    (out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu-check: numbers in {out / 'gpu-check.json'}")
    return status


if __name__ == "__main__":  # the transformer piece, in a process of its own
    if sys.argv[1:] == ["transformer"]:
        print(json.dumps(transformer()))
