"""No import cycles between modules of `automedsam` and `automedsam_training`.

A cycle means two modules can only be read (and imported) together; the layout by stage is only real if imports run
one way. Every import statement counts, also those inside functions (a lazy import still ties the modules together),
except imports under `if TYPE_CHECKING:`, which never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"automedsam": REPO / "Logic" / "automedsam",
            "automedsam_training": REPO / "Training" / "automedsam_training"}
Graph = dict[str, set[str]]


def module_files(packages: Mapping[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `packages` (a package's `__init__.py` under its own name)."""
    found = {}
    for package, root in packages.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (inner for statement in node.orelse for inner in (statement, *_runtime_nodes(statement)))
            continue
        yield node
        yield from _runtime_nodes(node)


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of `modules` (an imported name resolves to its module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names an import statement in `module` brings in (relative imports resolved)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        anchor = module.split(".")
        anchor = anchor if is_package else anchor[:-1]
        base = ".".join(anchor[: len(anchor) - node.level + 1] if node.level else [])
        base = ".".join(part for part in (base, node.module or "") if part)
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(packages: Mapping[str, Path]) -> Graph:
    """Module -> the modules of `packages` it imports."""
    modules = module_files(packages)
    graph: Graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = (name for node in _runtime_nodes(tree) for name in _imported(node, module, path.name == "__init__.py"))
        graph[module] = {target for name in names if (target := _known(name, modules)) not in (None, module)}
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_itself_through_others() -> None:
    cycle = find_cycle(import_graph(PACKAGES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_and_named(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n")
    assert find_cycle(import_graph({"pkg": package})) is None                # type-only imports do not count
    (package / "sub" / "b.py").write_text("def late():\n    from ..a import name\n")
    assert find_cycle(import_graph({"pkg": package})) == ["pkg.a", "pkg.sub.b", "pkg.a"]
