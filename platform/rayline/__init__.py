"""rayline: one YAML spec from Ray Data through Ray Train to the MLflow registry.

The small public SDK::

    import rayline
    result = rayline.run("pipelines/digits.yaml", overrides={"train.epochs": 3})
    result.metrics["test_accuracy"], result.model_uri, result.run_id
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Token auth stays on: Ray reads the mode when it is first imported, and a driver only sends
# ~/.ray/auth_token in token mode. Set RAY_AUTH_MODE=disabled yourself for a cluster without auth.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# rayline prints its own summary with the run's URL.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow's usage telemetry stays off: the platform does not phone home, and where it cannot (no network), the
# telemetry thread gives up by deleting an environment variable while requests iterates os.environ, which fails a
# concurrent MLflow call with KeyError('_MLFLOW_TELEMETRY_SESSION_ID').
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

if TYPE_CHECKING:
    from rayline.sdk import (
        DEFAULT_STATE_DIR,
        BatchPrediction,
        Endpoint,
        ModelUri,
        PipelineResult,
        PipelineSpec,
        Platform,
        PromotionDecision,
        RaylineError,
        ServiceSpec,
        SpecError,
        SubmittedRun,
        SweepResult,
        SweepSpec,
        connect,
        down,
        export_service,
        load_service_spec,
        load_spec,
        load_sweep_spec,
        predict,
        promote,
        rollback,
        run,
        serve,
        serve_status,
        shutdown,
        status,
        submit,
        tune,
        up,
    )

__version__ = "0.1.0"

# Attributes are imported on first use, so that a Ray worker importing one stage (``rayline.train.loop``)
# loads only what that stage needs, not the whole SDK (Serve, MLflow, the pipeline).
__all__ = [
    "DEFAULT_STATE_DIR",
    "BatchPrediction",
    "Endpoint",
    "ModelUri",
    "PipelineResult",
    "PipelineSpec",
    "Platform",
    "PromotionDecision",
    "RaylineError",
    "ServiceSpec",
    "SpecError",
    "SubmittedRun",
    "SweepResult",
    "SweepSpec",
    "connect",
    "down",
    "export_service",
    "load_service_spec",
    "load_spec",
    "load_sweep_spec",
    "predict",
    "promote",
    "rollback",
    "run",
    "serve",
    "serve_status",
    "shutdown",
    "status",
    "submit",
    "tune",
    "up",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'rayline' has no attribute {name!r}")
    sdk = importlib.import_module("rayline.sdk")
    globals().update({public: getattr(sdk, public) for public in __all__})
    return globals()[name]
