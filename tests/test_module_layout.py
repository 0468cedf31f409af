"""How the project's modules depend on each other, read from their source with `ast`
(nothing is imported, so a module that only imports something inside a function or
under `if TYPE_CHECKING:` is seen as well):

- no import circles among the modules of the project packages: a circle works only as
  long as every module in it happens to import the others' names late, and it hides
  which of them is the lower layer;
- the ML code (training/ml/) imports nothing from Django or from the Django apps, so it
  runs from a command line, a test or `accelerate launch` without settings.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prefloop", "labeling", "training", "experiments", "api", "webhooks")
ML_PACKAGE = "training.ml"


@dataclass(frozen=True)
class Import:
    """One import statement's edge: `source` imports `target` at `line`."""

    source: str
    target: str
    line: int


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name → file, for every module of the packages (migrations left
    out: they are written by makemigrations and only ever imported by Django)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "migrations" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of everything `module` imports anywhere in its body.
    `from x import y` gives `x.y` (a submodule, when it is one; the caller decides) and
    relative imports are resolved against the module's package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names += [(f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno) for alias in node.names]
    return names


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, list[Import]]:
    """Each project module's imports of other project modules. A name resolves to the
    longest project module it starts with: `from training.ml import reward_features`
    is an edge to that submodule, `from training.ml.loading import pick_device` one to
    training.ml.loading."""
    modules = project_modules(root, packages)
    graph: dict[str, list[Import]] = {module: [] for module in modules}
    for module, path in modules.items():
        for name, line in imported_names(module, path):
            parts = name.split(".")
            target = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules),
                          None)
            if target is not None and target != module:
                graph[module].append(Import(module, target, line))
    return graph


def import_cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One circle of imports per strongly connected group of modules (Tarjan's
    algorithm), each as the edges that close it, so a failure names the lines to change."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for edge in graph[module]:
            if edge.target not in index:
                visit(edge.target)
                low[module] = min(low[module], low[edge.target])
            elif edge.target in on_stack:
                low[module] = min(low[module], index[edge.target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [cycle_within(graph, group) for group in groups]


def cycle_within(graph: dict[str, list[Import]], group: set[str]) -> list[Import]:
    """The shortest circle through the group's first module, by breadth-first search
    over the edges that stay inside the group."""
    start = min(group)
    came_by: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for edge in graph[module]:
                if edge.target not in group:
                    continue
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came_by[path[0].source])
                    return path
                if edge.target not in came_by:
                    came_by[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no circle in {sorted(group)}")  # a strongly connected group always has one


def describe(cycle: list[Import]) -> str:
    steps = " → ".join(f"{edge.source} (line {edge.line})" for edge in cycle)
    return f"{steps} → {cycle[0].source}"


def test_the_project_has_no_import_cycles():
    cycles = import_cycles(import_graph(ROOT, PACKAGES))
    assert not cycles, "import circles:\n" + "\n".join(describe(cycle) for cycle in cycles)


def test_the_ml_code_imports_nothing_from_django_or_the_apps(settings):
    """training/ml runs without Django; only the apps (training/services, the tasks)
    hand it plain values. Forbidden: Django itself and every installed app's package,
    the rest of the training app included."""
    forbidden = {"django"} | {app.split(".")[0] for app in settings.INSTALLED_APPS}
    modules = project_modules(ROOT, PACKAGES)
    found = []
    for module, path in modules.items():
        if module != ML_PACKAGE and not module.startswith(ML_PACKAGE + "."):
            continue
        for name, line in imported_names(module, path):
            inside_ml = name == ML_PACKAGE or name.startswith(ML_PACKAGE + ".")
            if name.split(".")[0] in forbidden and not inside_ml:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert "training" in forbidden and ML_PACKAGE in modules  # the check looks where it should
    assert not found, "\n".join(found)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cycles_are_found_through_every_kind_of_import(tmp_path):
    """The checker itself: a function-level import, a `TYPE_CHECKING` one, a relative one
    and `from package import submodule` each close a circle; a migration and a name
    imported from a package (not a submodule) do not."""
    write(tmp_path, {
        "app/__init__.py": "",
        "app/a.py": "def f():\n    from app.b import g\n",
        "app/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.a import f\n",
        "app/sub/__init__.py": "from .c import h\n",
        "app/sub/c.py": "from .. import d\n",
        "app/d.py": "from app import sub\n",
        "app/e.py": "from app.sub import h\n",
        "app/migrations/0001_initial.py": "from app import a\n",
    })
    graph = import_graph(tmp_path, ("app",))
    assert "app.migrations.0001_initial" not in graph
    assert [edge.target for edge in graph["app.e"]] == ["app.sub"]
    cycles = sorted(sorted(edge.source for edge in cycle) for cycle in import_cycles(graph))
    assert cycles == [["app.a", "app.b"], ["app.d", "app.sub", "app.sub.c"]]
    assert describe(import_cycles(graph)[0]).count("→") == len(import_cycles(graph)[0])
