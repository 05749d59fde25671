"""The house rules, read from the source with ast: which folder may import which, no import
cycles, and no function longer than a screen."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.fixtures.helpers import REPO

PACKAGES = ("models", "data", "utils")
# The floors, lowest first: each may import what stands below it, never what stands above
# (docs/architecture.md). utils/core is the ground floor: models/ and data/ may import it, the
# one folder of utils/ they may; utils/ is the application, one sub-package per job, in the
# order of UTILS_FLOORS; at its top only the entry points (Argparser.py, commands.py).
UTILS_FLOORS = ("core", "machine", "run", "reports", "deploy", "inference", "evaluation", "training", "demo")
ALLOWED = {
    "utils.core": set(),
    "models": {"utils.core"},
    "data": {"models", "utils.core"},
}
for _i, _floor_name in enumerate(UTILS_FLOORS[1:], start=1):
    ALLOWED[f"utils.{_floor_name}"] = {"models", "data", *(f"utils.{f}" for f in UTILS_FLOORS[:_i])}
ALLOWED["utils"] = {"models", "data", *(f"utils.{f}" for f in UTILS_FLOORS)}  # the entry points
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {"Experiment": REPO / "Experiment.py", "transfusion": REPO / "transfusion.py"}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _floor(module: str) -> str:
    """The floor a module stands on: its folder (utils/<job>/, models/, data/), or "utils" for the
    entry points at the top of utils/."""
    parts = module.split(".")
    if parts[0] == "utils" and len(parts) >= 2 and parts[1] in UTILS_FLOORS:
        return f"utils.{parts[1]}"
    return parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (inside functions too), except under
    ``if TYPE_CHECKING:``."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # "from utils import demo" imports utils.demo; "from utils.x import f" imports utils.x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        out.update(n for n in names if n in known)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(ast.parse(path.read_text()), set(mods)) - {name} for name, path in mods.items()}


def test_the_reader_sees_lazy_imports_and_skips_type_checking_ones():
    """The rules below mean something only if the reader catches every kind of import."""
    code = ("import models.unet\nfrom data import catalog\nif TYPE_CHECKING:\n    import utils.demo.recipe\n"
            "def f():\n    from utils.run.paths import RunPaths\n")
    known = {"models.unet", "data", "data.catalog", "utils.demo.recipe", "utils.run.paths"}
    assert _imports(ast.parse(code), known) == {"models.unet", "data.catalog", "utils.run.paths"}


def test_utils_keeps_only_its_entry_points_at_the_top():
    top = sorted(p.name for p in (REPO / "utils").glob("*.py"))
    assert top == ["Argparser.py", "__init__.py", "commands.py"]
    folders = sorted(p.name for p in (REPO / "utils").iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(UTILS_FLOORS), "every sub-package of utils/ stands on a floor of UTILS_FLOORS"


def test_no_folder_imports_upwards(graph):
    wrong = []
    for name, targets in graph.items():
        floor = _floor(name)
        if floor not in ALLOWED:
            continue
        for target in targets:
            there = _floor(target)
            if there == floor or there in ALLOWED[floor]:
                continue
            wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the floors: " + ", ".join(sorted(wrong))
    for entry in ("Experiment", "transfusion"):
        assert not any(entry in targets for targets in graph.values()), f"nothing imports the entry point {entry}"


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if state.get(nxt) is None:
                found = cycle_from(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if state.get(start) is None:
            found = cycle_from(start, [start])
            assert found is None, "import cycle: " + " -> ".join(found)


def test_no_function_longer_than_a_screen():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)
