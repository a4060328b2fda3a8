"""Batch inference: the same packaged model over a dataset with Ray Data (``map_batches`` on actors)."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pandas as pd
import ray.data
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rayline.cluster import Platform
from rayline.data.sources import read_files
from rayline.errors import SpecError
from rayline.inference.loading import load_version, resolve_version
from rayline.spec import ModelUri


class _Predictor:
    """One per actor: loads the model version once, then predicts batch after batch."""

    def __init__(self, tracking_uri: str, uri: ModelUri) -> None:
        self.loaded = load_version(tracking_uri, uri, max_rows=2**62)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        frame = batch.reset_index(drop=True)
        predictions = self.loaded.model.predict(self.loaded.schema.check(frame[list(self.loaded.schema.columns)]))
        return pd.concat([frame, predictions], axis=1)


def _registered(tracking_uri: str, model: ModelUri) -> tuple[ModelUri, list[str]]:
    """The fixed version ``model`` names and its input columns, checked on the driver before any actor starts."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        version = resolve_version(MlflowClient(tracking_uri), model)
        signature = mlflow.models.get_model_info(str(version)).signature
    except MlflowException as err:
        raise SpecError(f"{model}: {err.message}", field="--model") from None
    return version, list(signature.inputs.input_names())


@dataclass(frozen=True)
class BatchPrediction:
    """Where the predictions went and which model version made them."""

    output: str
    model_name: str
    model_version: str
    rows: int


def predict_batch(platform: Platform, model: ModelUri, input_uri: str, output_uri: str, *, actors: int = 1,
                  batch_size: int = 4096, num_cpus: float = 1.0) -> BatchPrediction:
    """Predict every row of ``input_uri`` (CSV/Parquet) with ``model``; write Parquet to ``output_uri``."""
    platform.init_ray()
    version, columns = _registered(platform.tracking_uri, model)
    dataset, _ = read_files(input_uri, field="--input")
    missing = [column for column in columns if column not in dataset.columns()]
    if missing:
        raise SpecError(f"{input_uri} lacks the model's input column(s) {missing}", field="--input")
    predicted = dataset.map_batches(
        _Predictor, fn_constructor_args=(platform.tracking_uri, version), batch_format="pandas",
        batch_size=batch_size, concurrency=actors, num_cpus=num_cpus,
    )
    predicted.write_parquet(output_uri)
    rows = ray.data.read_parquet(output_uri).count()  # from the Parquet footers, not a second pass
    return BatchPrediction(output=output_uri, model_name=version.name, model_version=str(version.version), rows=rows)
