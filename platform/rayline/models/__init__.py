"""Building nn.Modules from a model spec: the zoo (``mlp``, ``cnn``) or a user factory ``module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from rayline.errors import SpecError
from rayline.models.zoo import CNN, MLP
from rayline.spec import ModelSpec

ModelFactory = Callable[..., nn.Module]

ZOO: dict[str, ModelFactory] = {"mlp": MLP, "cnn": CNN}


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


__all__ = ["CNN", "MLP", "ZOO", "build_model", "resolve_factory"]
