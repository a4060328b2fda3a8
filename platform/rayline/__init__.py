"""rayline: one YAML spec from Ray Data through Ray Train to the MLflow registry.

The small public SDK::

    import rayline
    result = rayline.run("pipelines/digits.yaml", overrides={"train.epochs": 3})
    result.metrics["test_accuracy"], result.model_uri, result.run_id
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import TYPE_CHECKING, Any

# Token auth stays on: Ray reads the mode when it is first imported, and a driver only sends
# ~/.ray/auth_token in token mode. Set RAY_AUTH_MODE=disabled yourself for a cluster without auth.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# rayline prints its own summary with the run's URL.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

if TYPE_CHECKING:
    from rayline.sdk import (
        Endpoint,
        PipelineResult,
        PipelineSpec,
        Platform,
        PromotionDecision,
        RaylineError,
        ServiceSpec,
        SpecError,
        connect,
        down,
        load_service_spec,
        load_spec,
        promote,
        rollback,
        run,
        serve,
        status,
        up,
    )

__version__ = "0.1.0"

# Attributes are imported on first use, so that a Ray worker importing one stage (``rayline.train.loop``)
# loads only what that stage needs, not the whole SDK (Serve, MLflow, the pipeline).
__all__ = [
    "Endpoint",
    "PipelineResult",
    "PipelineSpec",
    "Platform",
    "PromotionDecision",
    "RaylineError",
    "ServiceSpec",
    "SpecError",
    "connect",
    "down",
    "load_service_spec",
    "load_spec",
    "promote",
    "rollback",
    "run",
    "serve",
    "status",
    "up",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'rayline' has no attribute {name!r}")
    sdk = importlib.import_module("rayline.sdk")
    globals().update({public: getattr(sdk, public) for public in __all__})
    return globals()[name]


class _Facade(types.ModuleType):
    """Importing the ``rayline.serve`` subpackage would bind it as ``rayline.serve``: the SDK function keeps the
    name (the subpackage stays importable as ``rayline.serve`` through ``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name in __all__ and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade
