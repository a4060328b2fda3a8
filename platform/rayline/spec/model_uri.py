"""Registry model URIs (``models:/name@alias``, ``models:/name/3``) as one parsed value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_PATTERN = re.compile(r"^models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelUri:
    """A registered model and either an alias (which the registry resolves) or a fixed version."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str | ModelUri) -> ModelUri:
        """``models:/name@alias`` or ``models:/name/3``; raises ValueError on anything else."""
        if isinstance(text, ModelUri):
            return text
        parts = _PATTERN.match(text) if isinstance(text, str) else None
        if parts is None:
            raise ValueError(f"{text!r} must look like models:/name@alias or models:/name/3")
        return cls(parts["name"], parts["alias"], parts["version"])

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
