"""The architecture's rules, checked on the source (ARCHITECTURE.md states them): stages import each other downwards
only, in the order of LAYERS; the import graph has no cycle; only the task registry compares task names. Every
import counts — inside functions, under `if TYPE_CHECKING:` — and importing `a.b.c` counts as importing the
packages `a` and `a.b` too, since Python runs their `__init__` first."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tuneforge"

# Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS: list[set[str]] = [
    {"tuneforge", "errors", "atomic", "metrics", "native", "cluster", "scoring", "constrain", "hardware", "taskspec",
     "rundir", "probes", "logprobs"},  # leaves
    {"config"},
    {"data", "plan", "report", "observe", "check"},
    {"models"},
    {"generate", "predict", "predict_tokens"},  # inference
    {"evaluate", "fidelity", "eval_views", "card", "benchmarks"},
    {"tasks"},  # the bindings of each task's stage code
    {"train", "export"},
    {"tune", "serve", "gguf_chat"},
    {"doctor", "ui", "cli"},
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the tuneforge modules it imports, packages whose __init__ runs on the way included."""
    names = {".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): path
             for path in package.rglob("*.py")}

    def owner(dotted: str) -> str | None:  # the module a dotted name lives in
        while dotted and dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [owner(f"{node.module}.{alias.name}") for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names]
            else:
                continue
            for target in filter(None, targets):
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):  # the packages on the way run their __init__ first
                    step = ".".join(parts[:depth])
                    if step in names and step != name and not name.startswith(step + "."):
                        graph[name].add(step)
    return graph


def stage(module: str) -> str:
    """tuneforge.train.loop -> train; tuneforge -> tuneforge."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(module: str) -> int:
    found = [index for index, layer in enumerate(LAYERS) if stage(module) in layer]
    assert found, f"{module}: its stage '{stage(module)}' is in no layer of LAYERS; place it there"
    return found[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(module))


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


def test_the_import_graph_has_no_cycle_even_through_lazy_and_type_only_imports():
    graph = import_graph()
    assert graph["tuneforge.train.loop"] >= {"tuneforge.tasks", "tuneforge.rundir"}  # the graph sees real edges
    assert cycles(graph) == []


def test_stages_import_downwards_only():
    assert upward_imports(import_graph()) == []


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_the_graph_sees_type_only_imports_and_package_inits(tmp_path):
    package = tmp_path / "tuneforge"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("from tuneforge.low.helper import x\n")
    (package / "low" / "helper.py").write_text("x = 1\n")
    (package / "low" / "spec.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from tuneforge.high import Thing\n")
    (package / "high.py").write_text("def f():\n    from tuneforge.low.spec import y\n")
    graph = import_graph(package)
    assert "tuneforge.high" in graph["tuneforge.low.spec"]  # a type-only import is an edge
    assert "tuneforge.low" in graph["tuneforge.high"]  # importing low.spec runs low/__init__ first
    assert cycles(graph) == [["tuneforge.high", "tuneforge.low.spec"]]  # the type-only import closes a circle
    assert upward_imports({"tuneforge.config": {"tuneforge.tasks"}}) == ["tuneforge.config -> tuneforge.tasks"]


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


def tables_keyed_by_task(path: Path) -> list[int]:
    """Lines of dict literals keyed by a built-in task's name: a second registry beside the task's binding."""
    from tuneforge.taskspec import ALIASES, SPECS

    names = {*SPECS, *ALIASES}
    return [node.lineno for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Dict)
            and any(isinstance(key, ast.Constant) and key.value in names for key in node.keys)]


def test_no_table_outside_the_task_spec_and_bindings_is_keyed_by_task_name(tmp_path):
    offenders = {str(path.relative_to(PACKAGE)): found for path in PACKAGE.rglob("*.py")
                 if "tasks" not in path.relative_to(PACKAGE).parts and path.name != "taskspec.py"
                 and (found := tables_keyed_by_task(path))}
    assert offenders == {}
    sample = tmp_path / "sample.py"
    sample.write_text('RENDERERS = {"classification": print, "other": len}\n')
    assert tables_keyed_by_task(sample) == [1]  # the finder sees one
