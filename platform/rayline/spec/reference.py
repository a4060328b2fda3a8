"""The spec reference (``docs/spec.md``), generated from the spec models: each section's docstring and a table of
its fields, their types, defaults and descriptions. The models are the one source: ``make docs`` (``python -m
rayline.spec.reference docs/spec.md``) writes the file, and a test fails when the committed one is stale."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rayline.spec.model_uri import ModelUri
from rayline.spec.pipeline import PipelineSpec
from rayline.spec.service import ServiceSpec
from rayline.spec.sweep import SweepSpec

SPECS: list[tuple[str, type[BaseModel]]] = [
    ("Pipeline spec (`pipelines/*.yaml`, `rayline run`)", PipelineSpec),
    ("Sweep spec (`tuning/*.yaml`, `rayline tune`)", SweepSpec),
    ("Service spec (`serving/*.yaml`, `rayline serve`)", ServiceSpec),
]
HEADER = """# Spec reference

Generated from the spec models in `platform/rayline/spec/` by `make docs`: edit their docstrings and `description=`s,
not this file (a test fails when it is stale). Every section refuses unknown keys, and every `--set a.b=value`
override is checked against the same models.
"""
_BOUNDS = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("<=", "le"),
           annotated_types.Lt: ("<", "lt")}


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [HEADER]
    for title, model in SPECS:
        lines += [f"## {title}", ""]
        lines += _sections(model, "")
    return "\n".join(lines).rstrip() + "\n"


def _sections(model: type[BaseModel], path: str, heading: str | None = None) -> list[str]:
    """``model``'s section (docstring and field table) at ``path``, then the sections of its fields' models."""
    nested: list[tuple[str, type[BaseModel], str]] = []
    rows = []
    for name, info in model.model_fields.items():
        field_path = f"{path}.{name}" if path else name
        members = _models(info.annotation)
        container = {list: "list of: ", dict: "mapping of str to: "}.get(get_origin(_unwrap(info.annotation)), "")
        if len(members) > 1:  # a tagged union: one section per member, named by its tag
            nested += [(field_path, member, f"`{field_path}` of type `{_tag(member)}`") for member in members]
            kind = f"{container}one of the types below"
        elif members:
            where = f"{field_path}.<key>" if container.startswith("mapping") else field_path
            nested.append((where, members[0], f"`{where}`"))
            optional = type(None) in get_args(_unwrap(info.annotation))
            kind = f"{container}section below{', or null' if optional else ''}"
        else:
            kind = _type(info.annotation) + _bounds(info)
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(info))} | {_cell(info.description or '')} |")
    lines = [f"### {heading or (f'`{path}`' if path else 'top level')}", ""]
    if model.__doc__:
        lines += [inspect.cleandoc(model.__doc__), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|", *rows, ""]
    for field_path, member, member_heading in nested:
        lines += _sections(member, field_path, member_heading)
    return lines


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The spec models a field holds (its own type, a list's items, or a union's members), if any."""
    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin in (list, dict):
        return _models(get_args(annotation)[-1])
    if origin in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _models(arg)]
    return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def _tag(model: type[BaseModel]) -> str:
    """A tagged-union member's ``type`` value."""
    return str(get_args(model.model_fields["type"].annotation)[0])


def _type(annotation: Any) -> str:
    annotation = _unwrap(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " / ".join(f"`{value}`" for value in args)
    if origin in (Union, UnionType):
        kinds = [_type(arg) for arg in args if arg is not type(None)]
        return " or ".join(kinds) + (", or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is tuple:
        return f"[{', '.join(_type(arg) for arg in args)}]"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if annotation is ModelUri:
        return "model URI (`models:/name@alias` or `models:/name/3`)"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(info: FieldInfo) -> str:
    found = []
    for meta in info.metadata:
        for kind, (sign, attribute) in _BOUNDS.items():
            if isinstance(meta, kind):
                found.append(f"{sign} {getattr(meta, attribute)}")
        if isinstance(meta, annotated_types.MinLen) and meta.min_length:
            found.append("not empty")
        if getattr(meta, "pattern", None):
            found.append(f"matching `{meta.pattern}`")
    return f" ({', '.join(found)})" if found else ""


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def main(argv: list[str]) -> None:
    """Write the reference to the file named by ``argv[0]``, or print it."""
    text = render()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
