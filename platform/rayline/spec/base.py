"""What every spec section and every spec file share: unknown keys refused, the file a spec came from, and the
fields that hold paths relative to that file."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

# Data sources that are names, not paths: a bundled dataset (``sklearn:digits``) or a generator (``synthetic://``)
BUNDLED_PREFIXES = ("sklearn:", "palmerpenguins:")
SYNTHETIC_PREFIX = "synthetic://"


class Strict(BaseModel):
    """Base for every spec section: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


def is_relative_path(value: str) -> bool:
    """Whether a source or spec reference is a relative filesystem path (not a URI, a bundled name or absolute)."""
    return "://" not in value and not value.startswith(BUNDLED_PREFIXES) and not Path(value).is_absolute()


class SpecFile(Strict):
    """A whole spec, as loaded from a YAML file. ``RELATIVE_PATHS`` names its top-level fields that hold paths,
    which a loaded spec resolves against the file's directory."""

    RELATIVE_PATHS: ClassVar[tuple[str, ...]] = ()
    _file: str | None = PrivateAttr(None)

    def __eq__(self, other: object) -> bool:
        """Specs are equal when their fields are, wherever they were read from."""
        return type(other) is type(self) and self.model_dump() == other.model_dump()

    __hash__ = None  # mutable, as every pydantic model

    @property
    def file(self) -> str | None:
        """The YAML file this spec was loaded from, if any."""
        return self._file

    def located(self, file: str | None) -> SpecFile:
        """This spec as loaded from ``file``: its relative paths resolved against the file's directory."""
        self._file = file
        if file is not None:
            for dotted in self.RELATIVE_PATHS:
                *parents, name = dotted.split(".")
                section = self
                for parent in parents:
                    section = getattr(section, parent)
                value = getattr(section, name)
                if is_relative_path(value):
                    setattr(section, name, str((Path(file).parent / value).resolve()))
        return self
