"""Every lesson runs as a script and as a notebook, and its notebook is in sync.

The numbers each lesson's text claims are checked in tests/test_lesson_NN.py.
"""

import os

import jupytext
import nbformat
import pytest
from conftest import lesson_env
from nbclient import NotebookClient

from minimp.lessons import NOTEBOOKS, lesson_paths

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


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_lesson_runs_as_a_notebook(path, tmp_path, monkeypatch):
    for key, value in lesson_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    assert os.path.exists(tmp_path / "results.json")
