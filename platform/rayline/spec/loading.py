"""Load a spec from YAML, apply ``--set a.b=c`` overrides, and name the file and field of every error."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeGuard, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from rayline.errors import SpecError, SpecProblem
from rayline.spec.base import SpecFile

SpecT = TypeVar("SpecT", bound=BaseModel)
FileT = TypeVar("FileT", bound=SpecFile)

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


def load(model: type[FileT], path: str | Path, overrides: Overrides = None) -> FileT:
    """Load a spec of ``model`` from a YAML file with overrides (``{"train.epochs": 3}`` or ``["train.epochs=3"]``);
    its relative paths are resolved against the file's directory. Raises :class:`SpecError` naming the file and the
    field of every problem."""
    file = str(path)
    document = _overridden(read_yaml(path), overrides, file)
    return validate(model, document, file=file).located(file)


def with_overrides(spec: FileT, overrides: Overrides) -> FileT:
    """A copy of a loaded spec with ``overrides`` applied and validated again (errors name the same file)."""
    if not overrides:
        return spec
    document = _overridden(spec.model_dump(mode="json"), overrides, spec.file)
    updated = validate(type(spec), document, file=spec.file)
    updated._file = spec.file
    return updated


def _overridden(document: dict[str, Any], overrides: Overrides, file: str | None) -> dict[str, Any]:
    try:
        return apply_overrides(document, parse_overrides(overrides))
    except SpecError as err:
        err.file = err.file or file
        raise


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
    """Validate ``document`` against ``model``; the error lists every problem, each naming its field path.

    An unknown key is reported with the nearest known key of its section, when one is close.
    """
    try:
        return model.model_validate(document)
    except SpecError as err:  # raised by a validator that names its own field
        err.file = err.file or file
        raise
    except ValidationError as err:
        first, *more = dict.fromkeys(_problem(model, document, error) for error in err.errors())
        raise SpecError(first.message, field=first.field, file=file, more=more) from None


def _problem(model: type[BaseModel], document: Mapping[str, Any], error: ErrorDetails) -> SpecProblem:
    """One pydantic error as a problem naming its path in the document."""
    location = tuple(error["loc"])
    field = ".".join(str(part) for part in _document_path(document, location)) or None
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(location[-1]), _known_keys(model, location[:-1]), n=1)
        message = f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
    elif error["type"] != "missing" and not isinstance(error.get("input"), dict | list):
        message = f"{message} (got {error['input']!r})"
    return SpecProblem(field, message)


def _known_keys(model: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    """The field names of the section at pydantic's error ``location``, found by walking the model classes."""
    types: list[Any] = [model]
    for part in location:
        types = [child for parent in types for child in _children(parent, part)]
    return [name for tp in types if _is_model(tp) for name in tp.model_fields]


def _children(parent: Any, part: Any) -> list[Any]:
    """The types that ``part`` of pydantic's error location leads to from ``parent``."""
    if _is_model(parent):
        if part in parent.model_fields:
            return _members(parent.model_fields[part].annotation)
        tags = [tag for info in parent.model_fields.values() if get_origin(info.annotation) is Literal
                for tag in get_args(info.annotation)]
        return [parent] if part in tags or part == parent.__name__ else []  # the union member pydantic tried
    origin, args = get_origin(parent), get_args(parent)
    if origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
        return _members(args[0])
    return _members(args[-1]) if origin is dict and args else []


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a type: ``Annotated`` unwrapped, unions flattened."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def _is_model(tp: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


_ABSENT = object()


def _document_path(document: Any, location: tuple[Any, ...]) -> list[Any]:
    """Pydantic's error location as a path in the document.

    Leaves out the tags pydantic adds for unions: ``preprocess.0.impute`` (a step's type), ``fill_value.float``.
    """
    path: list[Any] = []
    node = document
    for part in location:
        if _is_union_tag(node, part):
            continue
        path.append(part)
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            in_list = isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node)
            node = node[part] if in_list else _ABSENT
    return path


def _is_union_tag(node: Any, part: Any) -> bool:
    """Whether ``part`` names a union member rather than a key or index of ``node``."""
    if isinstance(node, dict):
        return part not in node and node.get("type") == part  # the discriminator of a tagged union
    if isinstance(node, list):
        return not isinstance(part, int)
    return node is not _ABSENT  # nothing lies below a plain value
