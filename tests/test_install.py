"""minimp installed from a wheel (not editable) runs its command line and its lessons.

The wheel is built from this checkout and installed into a fresh virtual environment
that borrows the running environment's dependencies (numpy, matplotlib, ...) through
a .pth file, so the test needs no network; minimp itself comes only from the wheel.
"""

import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    """The packages are listed by hand (to map notebooks/ in): a new one must be added."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "minimp").rglob("__init__.py")
    }
    assert listed == found | {"minimp.datasets", "minimp.notebooks"}


def _setuptools_is_recent() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 68


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The python of a fresh venv with minimp installed from a wheel of this checkout."""
    tmp = tmp_path_factory.mktemp("install")
    # build with this environment's setuptools when it is recent enough (no network)
    flags = ["--no-build-isolation"] if _setuptools_is_recent() else []
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *flags, ROOT, "-w", tmp],
        capture_output=True, text=True, cwd=tmp,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp.glob("minimp-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies, from this environment (its .pth files, the editable minimp's
    # among them, are not read from a folder a .pth adds)
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    return python, tmp


def _run(python, *args, cwd):
    return subprocess.run(
        [python, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
        env={"PATH": "/usr/bin:/bin", "MINIMP_BLAS_THREADS": "1"},
    )  # fmt: skip


def test_the_installed_wheel_runs_its_command_line_and_a_lesson(installed):
    """One test, so the wheel is built once (xdist would build it on each worker, in
    the same source tree at the same time)."""
    python, tmp = installed
    where = _run(python, "-c", "import minimp; print(minimp.__file__)", cwd=tmp)
    assert where.returncode == 0, where.stderr
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout
    data = _run(python, "-c", "from minimp import data; print(len(data.load_digits().x_train))",
                cwd=tmp)  # fmt: skip
    assert data.returncode == 0 and int(data.stdout) > 1000, data.stderr  # the data ships
    help_ = _run(python, "-m", "minimp", "--help", cwd=tmp)
    assert help_.returncode == 0, help_.stderr
    for command in ("lessons", "notebooks", "figures", "policies", "regimes", "bench"):
        assert command in help_.stdout
    lesson = _run(python, "-m", "minimp", "lessons", "01", cwd=tmp)
    assert lesson.returncode == 0, lesson.stderr[-3000:]
    assert "01_formats.py" in lesson.stdout
    assert (tmp / "figures" / "number_line.png").is_file()
