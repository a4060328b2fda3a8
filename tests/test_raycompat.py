"""Ray's private parts are used in one module only, and each of them is there in the Ray installed."""

from __future__ import annotations

import ast
from pathlib import Path

import ray

from rayline import raycompat

PACKAGE = Path(raycompat.__file__).parent
PROTECTED = {"_get_serializable_fields", "_get_stats", "_set_serializable_fields", "_set_stats",
             "_internal_kv_get", "_stat_computation_plan"}


def test_ray_is_the_version_the_private_uses_were_checked_against() -> None:
    assert ray.__version__ == raycompat.CHECKED_RAY_VERSION


def test_every_private_name_used_exists_in_the_installed_ray() -> None:
    assert raycompat.missing() == []


def _private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and "._private" in f".{node.module}":
            found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if "._private" in f".{a.name}"]
        elif isinstance(node, ast.Attribute) and node.attr in PROTECTED and not (
                isinstance(node.value, ast.Name) and node.value.id == "self"):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
    return found


def test_no_module_but_raycompat_reaches_into_ray_privately() -> None:
    uses = {str(path.relative_to(PACKAGE)): _private_uses(path) for path in PACKAGE.rglob("*.py")
            if path.name != "raycompat.py"}
    assert {path: found for path, found in uses.items() if found} == {}
    assert _private_uses(Path(raycompat.__file__))  # the check finds them where they are
