"""Shared fixtures: each lesson is run once per test session, as a script, in quick mode."""

import json
import os
import subprocess
import sys

import pytest
from threadpoolctl import threadpool_limits

from minimp.tools.lessons import lesson_paths

# Every test runs on one BLAS thread: xdist already runs one test per core, and the
# networks' matmuls are too small to gain from more (they collapse when threads
# compete for cores; see minimp.tools.lessons).
_blas_limit = threadpool_limits(limits=1, user_api="blas")


def lesson_env(out_dir) -> dict[str, str]:
    """The environment a lesson runs in under test: shortened, figures and measured
    numbers written to a temporary folder, never over the committed figures."""
    return {
        **os.environ,
        "MINIMP_QUICK": "1",
        "MINIMP_FIGURES": str(out_dir),
        "MINIMP_RESULTS": str(out_dir / "results.json"),
        "MPLBACKEND": "Agg",
    }


@pytest.fixture(scope="session")
def lesson_run(tmp_path_factory):
    """``lesson_run("02")`` runs notebooks/02_*.py once and returns
    (completed process, figures folder, measured numbers)."""
    cache = {}

    def run(prefix: str):
        if prefix not in cache:
            (path,) = [p for p in lesson_paths() if p.name.startswith(prefix)]
            out = tmp_path_factory.mktemp(f"lesson{prefix}")
            proc = subprocess.run(
                [sys.executable, str(path)],
                env=lesson_env(out),
                capture_output=True,
                text=True,
                timeout=600,
            )
            results = out / "results.json"
            measured = json.loads(results.read_text()) if results.exists() else {}
            cache[prefix] = (proc, out, measured)
        return cache[prefix]

    return run
