"""Registry model URIs (``models:/name@alias``, ``models:/name/3``) as one parsed value.

Names, aliases and versions come from users and end up in registry lookups and download paths, so anything
that could reach outside the registry (``..``, separators, percent-encoding, control characters, absolute
paths, other schemes) is refused here, before anything touches the filesystem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from rayline.errors import SpecError

SCHEME = "models:/"
NAME = r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*"  # dots only between other characters: never ``..``
ALIAS = r"[A-Za-z0-9_-]{1,255}"  # MLflow's alias characters
VERSION = r"[0-9]{1,18}"
_PATTERN = re.compile(rf"^models:/(?P<name>{NAME})(?:@(?P<alias>{ALIAS})|/(?P<version>{VERSION}))$")
_RULES = {
    "name": (re.compile(NAME), "letters, digits, '_', '-' and single dots inside"),
    "alias": (re.compile(ALIAS), "letters, digits, '_' and '-'"),
    "version": (re.compile(VERSION), "digits only"),
}
_FORM = "a model URI looks like models:/name@alias or models:/name/3"


class ModelUriError(SpecError, ValueError):
    """A model URI, name, alias or version that is malformed or could reach outside the registry.

    A ``ValueError`` too, so a pydantic field holding a URI reports it as a validation error of that field.
    """


def check_part(kind: str, value: object) -> None:
    """Raise ModelUriError unless ``value`` is a valid model ``name``, ``alias`` or ``version``."""
    pattern, allowed = _RULES[kind]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ModelUriError(f"model {kind} {value!r} is refused: use {allowed}")
    if kind == "alias" and (value.lower() == "latest" or re.fullmatch(r"[vV][0-9]+", value)):
        raise ModelUriError(f"model alias {value!r} is reserved by MLflow")


def _refusal(text: str) -> str | None:
    """Why ``text`` is refused before it is even split into parts (None if it is not)."""
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        return "control characters are not allowed"
    decoded = text
    while (step := unquote(decoded)) != decoded:  # %252e → %2e → . : decode until stable
        decoded = step
    if decoded != text:
        return f"percent-encoding is not allowed (it decodes to {decoded!r})"
    if ".." in text or "\\" in text:
        return "path traversal ('..' or '\\') is not allowed"
    if text.startswith(("/", "~")) or re.match(r"[A-Za-z]:[\\/]", text):
        return "a filesystem path is not a model URI"
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    if scheme is not None and scheme[1] != "models":
        return f"the {scheme[1]!r} scheme is not allowed"
    return None


@dataclass(frozen=True)
class ModelUri:
    """A registered model and either an alias (which the registry resolves) or a fixed version.

    Every part is checked on construction (:func:`check_part`), however the value is made.
    """

    name: str
    alias: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        check_part("name", self.name)
        if (self.alias is None) == (self.version is None):
            raise ModelUriError(f"model {self.name!r}: give exactly one of an alias and a version")
        if self.alias is not None:
            check_part("alias", self.alias)
        if self.version is not None:
            check_part("version", self.version)

    @classmethod
    def parse(cls, text: str | ModelUri) -> ModelUri:
        """``models:/name@alias`` or ``models:/name/3``; raises :class:`ModelUriError` on anything else."""
        if isinstance(text, ModelUri):
            return text
        if not isinstance(text, str):
            raise ModelUriError(f"{text!r} is not a string: {_FORM}")
        problem = _refusal(text)
        if problem is not None:
            raise ModelUriError(f"{text!r} is refused: {problem}; {_FORM}")
        if not text.startswith(SCHEME):
            raise ModelUriError(f"{text!r} is not a model URI: {_FORM}")
        name, at, alias = text.removeprefix(SCHEME).partition("@")
        name, slash, version = (name, "", "") if at else name.partition("/")
        try:
            return cls(name, alias if at else None, version if slash else None)
        except ModelUriError as err:
            raise ModelUriError(f"{text!r}: {err.message}; {_FORM}") from None

    @classmethod
    def of_version(cls, name: str, version: str | int) -> ModelUri:
        """The URI of one fixed version."""
        return cls(name, version=str(version))

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def _parse(value: Any) -> ModelUri:
    return ModelUri.parse(value)


RegistryUri = Annotated[
    ModelUri,
    BeforeValidator(_parse),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _PATTERN.pattern}),
]
"""A spec field holding a :class:`ModelUri`: YAML and JSON carry the string form."""
