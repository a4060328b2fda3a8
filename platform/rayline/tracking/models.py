"""Logging a models-from-code pyfunc with its artifacts and signature."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature


def log_pyfunc(run_id: str, entry_file: str, artifacts: dict[str, str], input_example: pd.DataFrame,
               output_example: pd.DataFrame, code_paths: Sequence[str | Path],
               pip_requirements: Sequence[str]) -> str:
    """Log the pyfunc defined by ``entry_file`` (models-from-code) into ``run_id``; return its model URI."""
    signature = infer_signature(input_example, output_example)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=entry_file,
            artifacts=artifacts,
            signature=signature,
            input_example=input_example,
            code_paths=[str(p) for p in code_paths],
            pip_requirements=list(pip_requirements),
        )
    return info.model_uri
