"""The architecture's rules, checked on the source: stages import each other in one direction only (lazy imports
inside functions count too), and only the task registry compares task names."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tuneforge"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def runtime_imports(tree: ast.AST) -> list[ast.AST]:
    """Import statements anywhere in the module (functions included), except under `if TYPE_CHECKING:`."""
    typing_only = {id(node) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
                   for node in ast.walk(block)}
    return [node for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only]


def import_graph() -> dict[str, set[str]]:
    names = modules()

    def owner(dotted: str) -> str | None:  # the module a dotted name lives in
        while dotted and dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in names.items():
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                targets = [owner(f"{node.module}.{alias.name}") for alias in node.names] if node.module else []
            else:
                targets = [owner(alias.name) for alias in node.names]
            graph[name].update(t for t in targets if t and t != name and t.startswith("tuneforge"))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle_even_through_lazy_imports():
    graph = import_graph()
    assert graph["tuneforge.train.loop"] >= {"tuneforge.tasks", "tuneforge.rundir"}  # the graph sees real edges
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_metrics_module_is_a_leaf():
    assert import_graph()["tuneforge.metrics"] == set()


def task_name_comparisons(path: Path) -> list[int]:
    """Lines comparing something called `task` with a string (`task == "classification"`, `meta.task != ...`)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named_task = any((isinstance(s, ast.Name) and s.id == "task") or
                             (isinstance(s, ast.Attribute) and s.attr == "task") for s in sides)
            literal = any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides)
            if named_task and literal:
                lines.append(node.lineno)
    return lines


def test_only_the_task_registry_compares_task_names():
    offenders = {str(path.relative_to(PACKAGE)): found for path in PACKAGE.rglob("*.py")
                 if "tasks" not in path.relative_to(PACKAGE).parts and (found := task_name_comparisons(path))}
    assert offenders == {}


def test_the_task_comparison_finder_sees_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('if config.task == "classification":\n    pass\nif task != "causal_lm":\n    pass\n')
    assert task_name_comparisons(sample) == [1, 3]
