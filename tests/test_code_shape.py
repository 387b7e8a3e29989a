"""The shape rules of the code base: short functions and a leaf ``tool/`` package (issue 9)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}
NOT_FOR_TOOL = {"network", "voc12", "engine", "bench", "tests"} | SCRIPTS


def sources(exclude_tests: bool = True) -> list[Path]:
    files = sorted(p for p in ROOT.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))
    return [p for p in files if not (exclude_tests and p.relative_to(ROOT).parts[0] == "tests")]


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - start + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_function_outside_tests_is_longer_than_60_lines():
    too_long = [f for path in sources() for f in long_functions(path)]
    assert not too_long, "\n".join(too_long)


def test_tool_is_a_leaf_package():
    bad = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) & NOT_FOR_TOOL)
        for p in sorted((ROOT / "tool").glob("*.py"))
    }
    assert not {k: v for k, v in bad.items() if v}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the repository modules it imports (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    modules = {module_name(p): p for p in sources()}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert "network.heads" in graph["network"] and "network.backbone" in graph["network.resnet38d"]
    assert not cycles, cycles
