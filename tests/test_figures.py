"""One figure pipeline: every PNG in figures/ is drawn by exactly one lesson, and every
figure the README shows is there. ``python -m minimp figures`` runs the lessons."""

import re

from minimp.tools.lessons import CHECKOUT, FIGURES_DIR, lesson_paths

# A lesson names each figure it saves as a string literal in its save_figure(...) call.
SAVED = re.compile(r"save_figure\((?:[^()]|\([^()]*\))*\)")
NAME = re.compile(r'(?<!== )"([0-9A-Za-z_]+)"')  # not the "cuda" of DEVICE == "cuda"


def saved_by_lesson() -> dict[str, list[str]]:
    """figure name -> the lessons whose source saves it."""
    writers: dict[str, list[str]] = {}
    for path in lesson_paths():
        for call in SAVED.findall(path.read_text()):
            for name in NAME.findall(call):
                writers.setdefault(name, []).append(path.name)
    return writers


def test_every_committed_figure_is_drawn_by_exactly_one_lesson():
    writers = saved_by_lesson()
    committed = sorted(p.stem for p in FIGURES_DIR.glob("*.png") if not p.stem.endswith("_cpu"))
    assert committed, "figures/ is empty"
    for name in committed:
        assert len(writers.get(name, [])) == 1, (
            f"figures/{name}.png is saved by {writers.get(name)}"
        )


def test_every_figure_a_lesson_saves_is_committed_or_an_ignored_cpu_twin():
    committed = {p.stem for p in FIGURES_DIR.glob("*.png")}
    for name in saved_by_lesson():
        assert name in committed or name.endswith("_cpu"), f"{name}.png is not in figures/"


def test_every_figure_the_readme_shows_exists():
    readme = (CHECKOUT / "README.md").read_text()
    shown = re.findall(r"figures/([0-9A-Za-z_]+\.png)", readme)
    assert shown
    for name in shown:
        assert (FIGURES_DIR / name).exists(), f"the README shows figures/{name}, which is missing"
