"""The layers the README's layout describes: the engine and the core never import the
tools, and the data layer imports no other part of minimp."""

import ast
from pathlib import Path

import minimp

PACKAGE = Path(minimp.__file__).parent


def minimp_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    for node in ast.walk(tree):  # `from minimp import plots` names a module too
        if isinstance(node, ast.ImportFrom) and node.module == "minimp":
            names |= {f"minimp.{a.name}" for a in node.names}
    return {n for n in names if n == "minimp" or n.startswith("minimp.")}


def test_the_engine_and_the_core_never_import_the_tools():
    core = [p for p in PACKAGE.rglob("*.py") if "tools" not in p.relative_to(PACKAGE).parts]
    assert len(core) > 20
    for path in core:
        if path.name == "__main__.py":  # the command line is the one door into the tools
            continue
        tools = {n for n in minimp_imports(path) if n.startswith("minimp.tools")}
        assert not tools, f"{path.relative_to(PACKAGE)} imports {sorted(tools)}"


def test_the_data_layer_imports_no_other_part_of_minimp():
    assert minimp_imports(PACKAGE / "data.py") == set()
