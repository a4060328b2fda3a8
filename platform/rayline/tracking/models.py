"""Logging a models-from-code pyfunc with its artifacts and signature."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature


def log_pyfunc(run_id: str, entry_file: str, artifacts: dict[str, str], input_example: pd.DataFrame,
               output_example: pd.DataFrame, code_paths: Sequence[str | Path],
               pip_requirements: Sequence[str]) -> str:
    """Log the pyfunc defined by ``entry_file`` (models-from-code) into ``run_id``; return its model URI.

    Integer input columns are declared as doubles, so a request with a missing value still passes
    MLflow's schema enforcement (the preprocessor imputes or rejects it, not the signature). A run that had
    already ended (a sweep's best trial) keeps its status and end time.
    """
    integers = input_example.select_dtypes("integer").columns
    input_example = input_example.astype(dict.fromkeys(integers, "float64"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        signature = infer_signature(input_example, output_example)
    client = MlflowClient()
    ended = client.get_run(run_id).info
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
    if ended.end_time is not None:  # start_run reopened it, and ending the block stamped a new end time
        client.set_terminated(run_id, ended.status, end_time=ended.end_time)
    return info.model_uri
