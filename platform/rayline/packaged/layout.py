"""The packaged model's layout: the one place that names its files, its MLflow artifact and what it needs.

A packaged model is a directory (weights + fitted preprocessing + model spec) logged as the ``model`` artifact of
a models-from-code pyfunc whose code is ``pyfunc_entry.py`` and the ``rayline`` package. Loading it needs torch,
numpy, pandas, safetensors and MLflow (which brings pydantic and PyYAML), never Ray.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

ARTIFACT_KEY = "model"
WEIGHTS = "model.safetensors"
PREPROCESSOR = "preprocessor.json"
MODEL_SPEC = "model.json"
PYFUNC_ENTRY = str(Path(__file__).with_name("pyfunc_entry.py"))
CODE_PATHS = (str(Path(__file__).parents[1]),)  # the rayline package
REQUIREMENTS = ("torch", "numpy", "pandas", "safetensors", "mlflow")


def pip_requirements() -> list[str]:
    """The packaged model's requirements, pinned to the versions installed here."""
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def package_dir(downloaded_model: str | Path) -> Path:
    """The package directory inside a downloaded MLflow model (``mlflow.artifacts.download_artifacts``)."""
    return Path(downloaded_model) / "artifacts" / ARTIFACT_KEY
