"""The YAML contract: pydantic models of every spec and how they are loaded."""

from __future__ import annotations

from pathlib import Path

from rayline.errors import SpecError
from rayline.spec.loading import Overrides, apply_overrides, parse_overrides, read_yaml, validate
from rayline.spec.model_uri import ModelUri
from rayline.spec.pipeline import (
    DataSpec,
    MeshSpec,
    ModelSpec,
    PipelineSpec,
    PreprocessStep,
    ScalingSpec,
    TrackingSpec,
    TrainSpec,
)
from rayline.spec.service import ServiceSpec
from rayline.spec.sweep import Domain, SweepSpec, check_metric, load_sweep_spec, resolve_sweep, trial_spec

BUNDLED_PREFIXES = ("sklearn:", "palmerpenguins:", "synthetic://")


def _overridden(document: dict, overrides: Overrides, file: str | None) -> dict:
    try:
        return apply_overrides(document, parse_overrides(overrides))
    except SpecError as err:
        err.file = err.file or file
        raise


def load_spec(path: str | Path, overrides: Overrides = None) -> PipelineSpec:
    """Load a pipeline spec from YAML, apply overrides (``{"train.epochs": 3}`` or ``["train.epochs=3"]``).

    A relative ``data.source`` path is resolved against the spec file's directory.
    Raises :class:`rayline.errors.SpecError` naming the file and the field.
    """
    file = str(path)
    document = _overridden(read_yaml(path), overrides, file)
    spec = validate(PipelineSpec, document, file=file)
    source = spec.data.source
    if "://" not in source and not source.startswith(BUNDLED_PREFIXES) and not Path(source).is_absolute():
        spec.data.source = str((Path(path).parent / source).resolve())
    spec._file = file
    return spec


def with_overrides(spec: PipelineSpec, overrides: Overrides) -> PipelineSpec:
    """A copy of a loaded spec with ``overrides`` applied and validated again (same file for errors)."""
    if not overrides:
        return spec
    document = _overridden(spec.model_dump(mode="json"), overrides, spec.file)
    updated = validate(PipelineSpec, document, file=spec.file)
    updated._file = spec.file
    return updated


def load_service_spec(path: str | Path, overrides: Overrides = None) -> ServiceSpec:
    """Load a service spec from YAML with overrides; errors name the file and the field."""
    document = _overridden(read_yaml(path), overrides, str(path))
    return validate(ServiceSpec, document, file=str(path))


__all__ = [
    "BUNDLED_PREFIXES",
    "DataSpec",
    "Domain",
    "MeshSpec",
    "ModelSpec",
    "ModelUri",
    "Overrides",
    "PipelineSpec",
    "PreprocessStep",
    "ScalingSpec",
    "ServiceSpec",
    "SweepSpec",
    "TrackingSpec",
    "TrainSpec",
    "check_metric",
    "load_service_spec",
    "load_spec",
    "load_sweep_spec",
    "resolve_sweep",
    "trial_spec",
    "validate",
    "with_overrides",
]
