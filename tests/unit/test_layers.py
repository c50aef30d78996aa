"""The package's import structure: no cycles, and no lower layer importing a higher one (docs/architecture.md#layers).

Every `import sinkflow...` counts, at module level or inside a function or a TYPE_CHECKING block: a lazy or
type-only import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sinkflow"
# Lowest first. A module may import from its own layer and those below it; a module belongs to the layer of the
# longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sinkflow.checks", "sinkflow.registry", "sinkflow.pathway"),  # torch and the standard library only
    # config, console, guards, plotting; a job's loggers and extras (lightning, hydra, wandb, rich only)
    ("sinkflow.config", "sinkflow.console", "sinkflow.divergence", "sinkflow.plotting", "sinkflow.loggers")
    + ("sinkflow.wandb_logger", "sinkflow.extras", "sinkflow.job"),
    ("sinkflow.data",),  # question files, collation, templates, instruct data, the resumable loader
    ("sinkflow.benchmarks",),  # one module per benchmark: loaders, parse rules, scores
    ("sinkflow.data.predictions", "sinkflow.data.datamodule"),  # both check records against BENCHMARKS
    ("sinkflow.shapes",),  # the generated dataset, written in the benchmarks' formats
    ("sinkflow.models",),  # families, loading, LoRA, tiny models, checkpoints and exports
    ("sinkflow.sinks", "sinkflow.interventions"),  # detectors, strategies, sink statistics; interventions
    ("sinkflow.eval",),  # the metric, the predictions callback, the scorer CLI
    (
        "sinkflow.module",
        "sinkflow.resume",
        "sinkflow.caption",
        "sinkflow.loss_curves",
        "sinkflow.sweep_table",
        "sinkflow.paper_table",
    ),
    ("sinkflow.analysis",),
    ("sinkflow.run",),
    ("sinkflow.integrations",),  # sinkflow inside other tools (lmms-eval); nothing else imports them
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The sinkflow modules a file imports (a `from package import name` counts as `package.name` when that is a
    module, else as `package`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sinkflow")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sinkflow"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


FILES = [path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "__init__.py"]  # the root holds a docstring
MODULES = {module_name(path) for path in FILES}
GRAPH = {module_name(path): imports_of(path) for path in FILES}


def layer_of(module: str) -> int | None:
    """The index of the module's layer (its longest matching prefix), or None."""
    matches = [
        (len(prefix), index)
        for index, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        return None
    return max(matches)[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    unplaced = sorted(module for module in MODULES if layer_of(module) is None)
    assert len(MODULES) > 50 and not unplaced, f"add {unplaced} to LAYERS here and in docs/architecture.md"
    assert layer_of("sinkflow.pathway") == 0 and layer_of("sinkflow.data.datamodule") > layer_of("sinkflow.benchmarks")


def test_no_module_imports_a_higher_layer():
    upward = sorted(
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if target in MODULES and layer_of(target) > layer_of(module)
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    assert not cycles(GRAPH), cycles(GRAPH)


def test_the_pathway_module_imports_only_torch_and_the_standard_library():
    tree = ast.parse((PACKAGE / "pathway.py").read_text())
    roots = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"__future__", "collections", "dataclasses", "typing", "torch"}, roots


@pytest.mark.parametrize(
    "graph,expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
        ({"a": {"a"}}, [["a"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected
