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

    Input columns are declared with the example's types, as the training data had them: MLflow's pyfunc refuses
    int64 values for a column declared double, so a frame like the training data must find integer columns
    declared long (rayline's own endpoints take any number for either). The run keeps its status: a run that had
    already ended (a sweep's best trial) its end time too.
    """
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
    else:  # ending the block marked it FINISHED: it is still running (registration is next)
        client.update_run(run_id, status=ended.status)
    return info.model_uri
