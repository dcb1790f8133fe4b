"""Every lesson runs as a script and as a notebook, and its notebook is in sync.

The numbers each lesson's text claims are checked in tests/test_lesson_NN.py.
"""

import os

import jupytext
import nbformat
import pytest
from conftest import lesson_env

from minimp.lessons import execute_notebook, lesson_paths, notebook_from_script

LESSONS = lesson_paths()
IDS = [p.stem for p in LESSONS]


def test_the_eight_lessons_are_there_in_order():
    assert [p.name[:2] for p in LESSONS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_lesson_runs_as_a_script(path, lesson_run):
    proc, out, measured = lesson_run(path.name[:2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert measured, "the lesson recorded no measured numbers"
    assert list(out.glob("*.png")), "the lesson saved no figure"


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
def test_lesson_runs_as_a_notebook_and_shows_every_plot(path, tmp_path, monkeypatch):
    for key, value in lesson_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    notebook = execute_notebook(notebook_from_script(path))
    assert os.path.exists(tmp_path / "results.json")
    cells = plot_cells(notebook)
    assert cells, "the lesson draws no figure"
    for cell in cells:
        kinds = [kind for out in cell.outputs for kind in out.get("data", {})]
        assert "image/png" in kinds, f"this plot cell shows no image in Jupyter:\n{cell.source}"
