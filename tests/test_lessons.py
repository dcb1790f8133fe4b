"""Every lesson runs as a notebook at the size its committed notebook, the README and
the figures quote; its claims (``claim`` calls beside the prose) hold on that run; each
plot shows in Jupyter; and the committed notebook is that execution."""

import os
import subprocess
import sys

import jupytext
import nbformat
import pytest

from minimp.tools.lessons import (
    ClaimError,
    claim,
    comparable_outputs,
    execute_notebook,
    lesson_paths,
    notebook_from_script,
)

LESSONS = lesson_paths()
IDS = [p.stem for p in LESSONS]


def lesson_env(out_dir) -> dict[str, str]:
    """Figures go to a temporary folder, never over the committed ones."""
    return {**os.environ, "MINIMP_FIGURES": str(out_dir), "MPLBACKEND": "Agg"}


def test_the_lessons_are_numbered_from_01_without_a_gap():
    assert [int(p.name[:2]) for p in LESSONS] == list(range(1, len(LESSONS) + 1))


def test_a_claim_that_fails_names_its_sentence_and_values():
    claim(3 > 2, "three is more than two")
    with pytest.raises(ClaimError, match=r"'most come back'.*kept=0\.25"):
        claim(0.25 > 0.5, "most come back", kept=0.25)


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_notebook_is_in_sync_with_its_script(path):
    """The .ipynb must be what `python -m minimp notebooks` makes from the .py."""
    expected = [(c.cell_type, c.source) for c in jupytext.read(path).cells]
    notebook = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in notebook.cells] == expected, (
        f"{path.with_suffix('.ipynb').name} is out of sync: run `python -m minimp notebooks`"
    )


def plot_cells(notebook):
    """The code cells that draw a figure: those that save one."""
    return [c for c in notebook.cells if c.cell_type == "code" and "save_figure(" in c.source]


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_lesson_holds_its_claims_shows_its_plots_and_is_its_committed_notebook(
    path, tmp_path, monkeypatch
):
    for key, value in lesson_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    notebook = execute_notebook(notebook_from_script(path))  # a failed claim raises here
    cells = plot_cells(notebook)
    assert cells, "the lesson draws no figure"
    for cell in cells:
        kinds = [kind for out in cell.outputs for kind in out.get("data", {})]
        assert "image/png" in kinds, f"this plot cell shows no image in Jupyter:\n{cell.source}"
    assert list(tmp_path.glob("*.png")), "the lesson saved no figure"
    committed = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    stale = f"{path.stem}.ipynb is not a fresh execution: run `python -m minimp notebooks`"
    assert comparable_outputs(notebook) == comparable_outputs(committed), stale
    assert notebook.metadata == committed.metadata, stale


def test_a_lesson_runs_as_a_plain_script(tmp_path):
    """Outside Jupyter: `python notebooks/01_formats.py` (show() does nothing there)."""
    (first,) = [p for p in LESSONS if p.name.startswith("01")]
    proc = subprocess.run(
        [sys.executable, str(first)], env=lesson_env(tmp_path), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.glob("*.png"))
