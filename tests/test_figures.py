"""The figure pipeline runs end to end (on a short run) and writes every PNG."""

from minimp import figures
from minimp.train import TrainConfig


def test_make_all_writes_every_figure(tmp_path):
    quick = TrainConfig(steps=40, eval_every=20)
    numbers = figures.make_all(tmp_path, quick, seeds=(0,))
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(figures.FIGURES)
    assert all((tmp_path / f"{name}.png").stat().st_size > 10_000 for name in figures.FIGURES)
    # The master-weight trace: the float16 weight never moves, the master does.
    m = numbers["master_weights"]
    assert m["float16_final"] == 1.0
    assert abs(m["master_final"] - m["exact_final"]) < 1e-4


def test_every_figure_is_shown_in_the_readme():
    readme = (figures.FIGURES_DIR.parent / "README.md").read_text()
    for name in figures.FIGURES:
        assert f"figures/{name}.png" in readme
