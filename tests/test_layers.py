"""The package's import graph: no cycle among its modules, and strategies as the train loop finds them."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import rayline
from rayline.spec import TrainSpec
from rayline.train.strategies import STRATEGIES

PACKAGE = Path(rayline.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, known: set[str]) -> set[str]:
    """The rayline modules ``path`` imports when it is imported (not inside functions or TYPE_CHECKING)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rayline"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rayline")}
    return found & known


def _graph() -> dict[str, set[str]]:
    paths = {_module(path): path for path in PACKAGE.rglob("*.py")}
    return {module: _module_level_imports(path, set(paths)) - {module} for module, path in paths.items()}


def test_no_module_imports_itself_through_others() -> None:
    graph, cycles = _graph(), []
    assert "rayline.train.strategies" in graph["rayline.train.loop"]  # the graph holds the imports

    def visit(module: str, trail: list[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in trail:
                cycles.append(" -> ".join([*trail[trail.index(imported):], imported]))
            elif imported not in seen:
                seen.add(imported)
                visit(imported, [*trail, imported])

    seen: set[str] = set()
    for start in sorted(graph):
        if start not in seen:
            seen.add(start)
            visit(start, [start])
    assert cycles == []


def test_every_strategy_the_spec_names_is_registered_with_its_parts() -> None:
    assert set(STRATEGIES) == set(get_args(TrainSpec.model_fields["strategy"].annotation))
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name
        assert all(callable(getattr(strategy, part, None)) for part in ("from_spec", "wrap", "unwrap", "save",
                                                                          "restore")), name
