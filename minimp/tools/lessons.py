"""What the lessons in ``notebooks/`` share: quick mode, where figures go, and the
record of what each lesson measured.

A lesson is a Jupytext percent-format script, ``notebooks/NN_topic.py``, paired
with the notebook ``NN_topic.ipynb`` generated from it (``python -m minimp
notebooks``). It runs as a script, ``python notebooks/NN_topic.py``, or cell by
cell in Jupyter. Every sentence its text states about a measurement is checked by
``claim`` in the code cell beside it, on the run the lesson makes; the tests
execute every notebook, so a sentence that stops holding fails them.
"""

from __future__ import annotations

import base64
import io
import os
import runpy
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

__all__ = [
    "FIGURES",
    "NOTEBOOKS",
    "ClaimError",
    "claim",
    "lesson_paths",
    "save_figure",
    "show",
]

# The lessons' matmuls are tiny (64x128 at batch 64): with two BLAS threads they spend
# their time handing work between threads, and collapse when anything else runs on the
# machine (lesson 02 took 262 s instead of 11 s beside one busy process). One thread,
# for every lesson that imports this module; MINIMP_BLAS_THREADS overrides it.
BLAS_THREADS = int(os.environ.get("MINIMP_BLAS_THREADS") or 1)
_blas_limit = threadpool_limits(limits=BLAS_THREADS, user_api="blas")

# In a checkout the lessons are notebooks/ beside the package, and their figures go to
# figures/ there. An installed package carries the lessons' scripts and notebooks as
# minimp/notebooks (pyproject.toml maps the folder in), and its figures go to ./figures.
CHECKOUT = Path(__file__).resolve().parents[2]
IN_CHECKOUT = (CHECKOUT / "notebooks").is_dir() and (CHECKOUT / "pyproject.toml").is_file()
NOTEBOOKS = CHECKOUT / "notebooks" if IN_CHECKOUT else CHECKOUT / "minimp" / "notebooks"
FIGURES_DIR = CHECKOUT / "figures" if IN_CHECKOUT else Path.cwd() / "figures"
# Where lessons save their figures (the tests point this at a temporary folder).
FIGURES = Path(os.environ.get("MINIMP_FIGURES") or FIGURES_DIR)
DPI = 110


# PNG text chunks that would change from one run or machine to the next: dropped, so
# a figure redrawn from the same numbers has the same bytes.
_PNG_METADATA = {"Software": None}


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes, rendered by Agg (no window, no pyplot) the same way every time."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return buffer.getvalue()


def save_figure(fig: Figure, name: str) -> Path:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.png"
    path.write_bytes(png_bytes(fig))
    return path


def show(fig: Figure) -> None:
    """Show a figure inline when the lesson runs in Jupyter; do nothing as a script.

    The lessons build figures without pyplot (no window opens, nothing global), and
    Jupyter only draws a bare ``Figure`` when pyplot's inline backend has registered a
    PNG formatter for it. So the PNG is rendered here and handed to the notebook."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # no IPython: a plain script
        return
    if get_ipython() is None:
        return
    png = base64.b64encode(png_bytes(fig)).decode("ascii")
    width, height = fig.get_size_inches()
    label = f"<Figure size {width * DPI:.0f}x{height * DPI:.0f} with {len(fig.axes)} Axes>"
    display({"image/png": png, "text/plain": label}, raw=True)


class ClaimError(AssertionError):
    """A sentence of a lesson does not hold on the run the lesson just made."""


def claim(holds: Any, sentence: str, **values: Any) -> None:
    """Check one sentence of the lesson's prose on the run the lesson makes.

    The call sits in the code cell right after the markdown it supports, so whoever
    edits the sentence sees its check::

        # Most of the flushed gradients come back at the settled scale.
        claim(kept > 0.5, "most of the flushed gradients come back", kept=kept)

    It prints nothing when the sentence holds (the notebook stays as the reader sees
    it); when it does not, it raises :class:`ClaimError` quoting the sentence and the
    values it was checked with, and the lesson stops there, as a script and as a
    notebook (so the tests, which execute every notebook, fail on it)."""
    if not bool(holds):
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise ClaimError(
            f"the lesson says {sentence!r}, but on this run {shown or 'it does not hold'}"
        )


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


# A cell tagged "timing" (``# %% tags=["timing"]`` in the script) prints wall times, and
# one tagged "peak" a peak measured by the allocator (tracemalloc also counts what the
# notebook kernel's own threads allocate meanwhile, a few hundred bytes that vary): their
# outputs change from run to run, so a fresh execution is compared with the committed
# notebook only by the kinds of output such a cell makes, not their content.
VARYING_TAGS = ("timing", "peak")
# Notebook metadata kept: what Jupyter needs to open it and how it pairs with its
# script. The rest (language_info's versions, widget state) changes with the machine.
_KEPT_METADATA = ("kernelspec", "jupytext")


def notebook_from_script(script: Path):
    """The notebook of a lesson's script, with stable cell ids (regenerating changes nothing)."""
    import jupytext

    notebook = jupytext.read(script)
    for i, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{i}"
    return notebook


def execute_notebook(notebook, timeout: int = 900):
    """Run every cell in a fresh kernel (its cwd is notebooks/), outputs in place,
    then drop everything that would change on a rerun but the timing cells' output."""
    from nbclient import NotebookClient

    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        coalesce_streams=True,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    notebook.metadata = {k: notebook.metadata[k] for k in _KEPT_METADATA if k in notebook.metadata}
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    return notebook


def comparable_outputs(notebook) -> list:
    """Each code cell's outputs as compared between two executions: in full, except a
    timing or peak cell's, of which only the kinds of output (stream name, MIME types) count."""
    cells = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = [_plain(dict(out)) for out in cell.outputs]
        if set(VARYING_TAGS) & set(cell.metadata.get("tags", [])):
            outputs = [[out.get("name"), sorted(out.get("data", {}))] for out in outputs]
        cells.append((cell.source, outputs))
    return cells


def write_notebooks(execute: bool = True, names: tuple[str, ...] = ()) -> list[Path]:
    """Regenerate every ``.ipynb`` from its script (the script is the source) and, by
    default, execute it so the committed notebook shows every output and plot. The
    lessons save their figures as they run, so this pass also redraws ``figures/``."""
    import nbformat

    written = []
    for script in lesson_paths():
        if names and not script.name.startswith(names):
            continue
        print(f"{script.name} ...", flush=True)
        notebook = notebook_from_script(script)
        if execute:
            execute_notebook(notebook)
        target = script.with_suffix(".ipynb")
        nbformat.write(notebook, target)
        written.append(target)
    return written
