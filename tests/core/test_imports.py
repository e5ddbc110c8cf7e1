"""The package's import graph: no cycle, and no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "act_diagnostics"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every ``import`` / ``from ... import`` of the package, typing-only ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("act_diagnostics"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("act_diagnostics")]
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names in _imports(path):
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            subs = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            graph[name] |= subs or ({target} if target in modules else set())
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_imports_no_cycle() -> None:
    graph = _graph()
    assert "act_diagnostics.core.structure" in graph["act_diagnostics.core.monitor"]  # the graph sees imports
    assert _cycle(graph) is None
    core = {n: deps for n, deps in graph.items() if n.startswith("act_diagnostics.core")}
    assert all(not m.startswith(("act_diagnostics.rules", "act_diagnostics.outputs", "act_diagnostics.callbacks"))
               for deps in core.values() for m in deps)  # core is torch only


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_private_names_of_another() -> None:
    for path in PACKAGE.rglob("*.py"):
        for target, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.endswith("__")]
            assert not private, f"{path.name} imports {private} from {target}"
