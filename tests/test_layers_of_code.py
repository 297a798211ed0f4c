"""The package's modules import one way only: from the command line down to the metrics (docs/design.md).
Every `from trajcli.X import …` — at the top of a module or inside a function — must point to a layer
below its own (or within its own subpackage)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trajcli"

# Lower rank = lower layer. A module may import from its own rank's subpackage and from lower ranks.
RANKS = {
    "errors": 0, "options": 0, "atomic": 0, "types": 0, "metrics": 0,
    "io": 1,
    "arch": 2,
    "engine": 3, "curvature": 3,
    "analysis": 4,
    "report": 5,
    "pipeline": 6,
    "comparison": 7, "demo": 7,
    "results": 8,
    "api": 9,
    "cli": 10,
    "launch": 11,
    "__main__": 12,
}


def _unit(path: Path, package: Path) -> str:
    return path.relative_to(package).with_suffix("").parts[0]


def wrong_way_imports(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        unit = _unit(path, package)
        if unit == "__init__":
            continue  # the package's face: `trajcli.open`, `__version__`
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trajcli")):
                continue
            names = node.module.split(".")
            if len(names) == 1:  # `from trajcli import __version__` only
                if {a.name for a in node.names} != {"__version__"}:
                    found.append(f"{path.relative_to(package)}: from trajcli import {[a.name for a in node.names]}")
                continue
            target = names[1]
            if target == unit:
                continue
            if target not in RANKS or unit not in RANKS:
                found.append(f"{path.relative_to(package)}: {unit} or {target} has no layer in RANKS")
            elif RANKS[target] >= RANKS[unit]:
                found.append(f"{path.relative_to(package)}:{node.lineno}: {unit} imports {node.module}")
    return found


def test_imports_point_one_way():
    assert wrong_way_imports() == []


def test_a_wrong_way_import_is_caught(tmp_path):
    """The check itself: an engine module importing the report layer is reported."""
    import shutil

    copy = tmp_path / "trajcli"
    shutil.copytree(PACKAGE, copy)
    target = copy / "engine" / "store.py"
    target.write_text(target.read_text() + "\n\ndef _x():\n    from trajcli.report.writers import OutputSet\n")
    found = wrong_way_imports(copy)
    assert len(found) == 1 and "engine imports trajcli.report.writers" in found[0]


@pytest.mark.parametrize("unit", sorted(RANKS))
def test_every_layer_exists(unit):
    assert (PACKAGE / unit).is_dir() or (PACKAGE / f"{unit}.py").is_file()


def _module_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the trajcli modules it imports (top level or inside functions)."""
    modules = {}
    for path in package.rglob("*.py"):
        name = ".".join(("trajcli", *path.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trajcli"):
                for target in (node.module, *(f"{node.module}.{a.name}" for a in node.names)):
                    if target in modules and target not in (name, "trajcli"):
                        found.add(target)
        graph[name] = found
    return graph


def test_no_import_cycle_between_modules():
    graph = _module_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            assert state.get(target) != 1, " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
