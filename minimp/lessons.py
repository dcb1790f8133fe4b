"""What the lessons in ``notebooks/`` share: quick mode, where figures go, and the
record of what each lesson measured.

A lesson is a Jupytext percent-format script, ``notebooks/NN_topic.py``, paired
with the notebook ``NN_topic.ipynb`` generated from it (``python -m minimp
notebooks``). It runs as a script, ``python notebooks/NN_topic.py``, or cell by
cell in Jupyter. Every number its text claims is computed in a cell above the
claim and passed to ``measured``, so the tests can check the claim against the
code that makes it.
"""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from minimp.figures import DPI, FIGURES_DIR

__all__ = ["FIGURES", "NOTEBOOKS", "QUICK", "lesson_paths", "measured", "save_figure"]

# MINIMP_QUICK=1: the tests run each lesson shortened (fewer steps and seeds).
QUICK = os.environ.get("MINIMP_QUICK") == "1"
# Where lessons save their figures (the tests point this at a temporary folder).
FIGURES = Path(os.environ.get("MINIMP_FIGURES") or FIGURES_DIR)
NOTEBOOKS = FIGURES_DIR.parent / "notebooks"


def save_figure(fig: Figure, name: str) -> Path:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    return path


def measured(**values: Any) -> dict[str, Any]:
    """Record numbers the lesson's text relies on. With MINIMP_RESULTS set (by the
    tests), they are added to that JSON file; otherwise this only returns them."""
    target = os.environ.get("MINIMP_RESULTS")
    if target:
        path = Path(target)
        known = json.loads(path.read_text()) if path.exists() else {}
        known.update({k: _plain(v) for k, v in values.items()})
        path.write_text(json.dumps(known, indent=1))
    return values


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def lesson_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def run_lesson(path: Path) -> None:
    """Run one lesson as a script, as ``python notebooks/NN_topic.py`` would."""
    print(f"\n=== {path.name} ===", flush=True)
    runpy.run_path(str(path), run_name="__main__")


def write_notebooks() -> list[Path]:
    """Regenerate every ``.ipynb`` from its script (the script is the source)."""
    import jupytext

    written = []
    for script in lesson_paths():
        notebook = jupytext.read(script)
        for i, cell in enumerate(notebook.cells):  # stable ids: regenerating changes nothing
            cell["id"] = f"cell-{i}"
        target = script.with_suffix(".ipynb")
        jupytext.write(notebook, target)
        written.append(target)
    return written
