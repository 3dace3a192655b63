"""The package's floors: an import only ever points down (zr_ablate/__init__.py draws them), no cycles, and a
short top level. Read from the source with ast, so a function-level import counts as much as a top one."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "zr_ablate"
# floor of each top-level name; the command modules at the top (report, probe, dashboard) hand over to the
# floor they name, so they sit with it.
FLOORS = {
    "dropout": 1, "records": 1, "data": 1, "console": 1, "schema": 2,
    "model": 2, "training": 3, "experiment": 4,
    "analysis": 5, "report": 5, "probe": 5, "dashboard": 5,
    "bench": 6, "conf": 0,
}  # fmt: skip


def modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")
    }


def imports_of(name: str, path: Path) -> set[str]:
    """The zr_ablate modules `name` imports (absolute, or relative resolved against its package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("zr_ablate.") and m in modules()}


def floor(module: str) -> int:
    return FLOORS[module.split(".")[1]]


def test_every_import_points_down_or_across():
    upward = [
        f"{name} (floor {floor(name)}) imports {target} (floor {floor(target)})"
        for name, path in modules().items()
        if name != "zr_ablate"
        for target in imports_of(name, path)
        if floor(target) > floor(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = {name: imports_of(name, path) - {name} for name, path in modules().items()}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node) :] + [node]))
        if node in done:
            return
        stack.append(node)
        for target in graph[node]:
            # a package's __init__ importing nothing of its own is the common case; importing a child from a
            # parent package is not a cycle of modules
            if not target.startswith(node + "."):
                visit(target)
        stack.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_every_top_level_name_has_a_floor_and_the_top_level_is_short():
    top = [p for p in PACKAGE.iterdir() if p.suffix == ".py" and p.name != "__init__.py"]
    assert len(top) <= 8, sorted(p.name for p in top)
    unknown = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert unknown - {"__init__"} <= set(FLOORS), unknown - set(FLOORS)
