"""Load a spec from YAML, apply ``--set a.b=c`` overrides, and name the file and field on errors."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rayline.errors import SpecError

SpecT = TypeVar("SpecT", bound=BaseModel)

Overrides = Mapping[str, Any] | Iterable[str] | None


def parse_overrides(overrides: Overrides) -> dict[str, Any]:
    """Turn ``["train.epochs=3"]`` or ``{"train.epochs": 3}`` into ``{"train.epochs": 3}``.

    String values are read as YAML scalars, so ``3`` is an int and ``true`` a bool.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"override {item!r} is not of the form a.b=value", field="--set")
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise SpecError(f"override {item!r}: the value is not valid YAML ({problem})", field="--set") from None
    return parsed


def apply_overrides(document: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``document`` with each dotted path set; list items are addressed by index."""
    result = copy.deepcopy(document)
    for dotted, value in overrides.items():
        node: Any = result
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            key: Any = int(part) if isinstance(node, list) and part.lstrip("-").isdigit() else part
            if isinstance(node, list) and not isinstance(key, int):
                raise SpecError(f"{'.'.join(parts[:depth])} is a list: use an index", field=dotted)
            if isinstance(node, list) and not -len(node) <= key < len(node):
                raise SpecError(f"index {key} is out of range", field=dotted)
            if not isinstance(node, dict | list):
                raise SpecError(f"{'.'.join(parts[:depth])} is a value, not a section or list", field=dotted)
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and not isinstance(node.get(key), dict | list):
                    node[key] = {}
                node = node[key]
    return result


class _DuplicateKey(Exception):
    """A mapping names one key twice (plain YAML would keep the last value silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"duplicate key {key!r} on lines {seen[key]} and {line}")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    file = Path(path)
    if not file.is_file():
        raise SpecError("spec file not found", file=str(path))
    try:
        document = yaml.load(file.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no objects built
    except _DuplicateKey as err:
        raise SpecError(str(err), file=str(path)) from None
    except yaml.YAMLError as err:
        raise SpecError(f"not valid YAML: {err}", file=str(path)) from None
    if not isinstance(document, dict):
        raise SpecError("the top level must be a mapping of sections", file=str(path))
    return document


def validate(model: type[SpecT], document: Mapping[str, Any], file: str | None = None) -> SpecT:
    """Validate ``document`` against ``model``; the first error names its field path."""
    try:
        return model.model_validate(document)
    except SpecError as err:  # raised by a validator that names its own field
        err.file = err.file or file
        raise
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in _document_path(document, first["loc"])) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] != "missing" and not isinstance(first.get("input"), dict | list):
            message = f"{message} (got {first['input']!r})"
        extra = len(err.errors()) - 1
        if extra:
            message += f" (and {extra} more problem{'s' if extra > 1 else ''})"
        raise SpecError(message, field=field, file=file) from None


def _document_path(document: Any, location: tuple[Any, ...]) -> list[Any]:
    """Pydantic's error location without the tags it adds for tagged unions (``preprocess.0.impute``)."""
    path: list[Any] = []
    node = document
    for part in location:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # the discriminator tag: not a key of the document
        path.append(part)
        node = node[part] if isinstance(node, dict) and part in node else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
    return path
