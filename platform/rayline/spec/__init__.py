"""The YAML contract: pydantic models of every spec and how they are loaded."""

from __future__ import annotations

from pathlib import Path

from rayline.spec.base import BUNDLED_PREFIXES, SYNTHETIC_PREFIX
from rayline.spec.loading import Overrides, load, validate, with_overrides
from rayline.spec.model_uri import ModelUri
from rayline.spec.pipeline import DataSpec, ModelSpec, PipelineSpec, TrackingSpec
from rayline.spec.preprocess import PreprocessStep
from rayline.spec.service import ServiceSpec
from rayline.spec.sweep import Domain, SweepSpec, check_metric, load_sweep_spec, resolve_sweep, trial_spec
from rayline.spec.train import MeshSpec, ScalingSpec, TrainSpec


def load_spec(path: str | Path, overrides: Overrides = None) -> PipelineSpec:
    """Load a pipeline spec from YAML, apply overrides (``{"train.epochs": 3}`` or ``["train.epochs=3"]``).

    A relative ``data.source`` path is resolved against the spec file's directory.
    Raises :class:`rayline.errors.SpecError` naming the file and the field.
    """
    return load(PipelineSpec, path, overrides)


def load_service_spec(path: str | Path, overrides: Overrides = None) -> ServiceSpec:
    """Load a service spec from YAML with overrides; errors name the file and the field."""
    return load(ServiceSpec, path, overrides)


__all__ = [
    "BUNDLED_PREFIXES",
    "SYNTHETIC_PREFIX",
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
