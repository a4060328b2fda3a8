"""Building nn.Modules from a model spec: the zoo (``mlp``, ``cnn``, ``moe``) or a user factory ``module:function``.

Training from a user's own spec may import that user's code; a model loaded from the registry may not:
:func:`check_allowed` admits only the zoo and the modules the operator lists in ``RAYLINE_MODEL_MODULES``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from torch import nn

from rayline.errors import SpecError
from rayline.models.moe import MoEMLP
from rayline.models.zoo import CNN, MLP
from rayline.spec import ModelSpec

ModelFactory = Callable[..., nn.Module]

ZOO: dict[str, ModelFactory] = {"mlp": MLP, "cnn": CNN, "moe": MoEMLP}
ALLOWED_MODULES_ENV = "RAYLINE_MODEL_MODULES"
"""Comma-separated modules (or parent packages) whose factories a loaded model may name."""


def _allowed_modules() -> list[str]:
    """The module prefixes the operator allows, from ``RAYLINE_MODEL_MODULES``."""
    return [part.strip() for part in os.environ.get(ALLOWED_MODULES_ENV, "").split(",") if part.strip()]


def check_allowed(name: str) -> None:
    """Refuse, without importing anything, a factory that is neither a zoo model nor in an allowed module."""
    if name in ZOO:
        return
    module = name.partition(":")[0]
    if not any(module == prefix or module.startswith(f"{prefix}.") for prefix in _allowed_modules()):
        raise SpecError(f"model factory {name!r} is not allowed: only the zoo {sorted(ZOO)} and modules listed in "
                        f"{ALLOWED_MODULES_ENV} (comma-separated) may be loaded", field="model.name")


def resolve_factory(name: str) -> ModelFactory:
    """Return the factory for a zoo name or an import path ``package.module:function``."""
    if name in ZOO:
        return ZOO[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"{name!r} is neither a zoo model {sorted(ZOO)} nor an import path module:factory",
                        field="model.name")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import path is user code: any failure is the user's to see
        raise SpecError(f"cannot import {module_name!r}: {type(err).__name__}: {err}", field="model.name") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SpecError(f"{module_name!r} has no callable {attr!r}", field="model.name")
    return factory


def build_model(spec: ModelSpec, num_features: int, num_outputs: int) -> nn.Module:
    """Build the model: ``factory(num_features=..., num_outputs=..., **spec.params)``."""
    factory = resolve_factory(spec.name)
    try:
        model = factory(num_features=num_features, num_outputs=num_outputs, **spec.params)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{spec.name}: {err}", field="model.params") from None
    if not isinstance(model, nn.Module):
        raise SpecError(f"{spec.name} returned {type(model).__name__}, not a torch.nn.Module", field="model.name")
    return model


__all__ = ["ALLOWED_MODULES_ENV", "CNN", "MLP", "ZOO", "MoEMLP", "build_model", "check_allowed", "resolve_factory"]
