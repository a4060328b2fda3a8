"""One MLflow run per pipeline run: params, dataset input, spec artifact, resources and cost."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Param, Run, RunTag
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

MAX_PARAM_LENGTH = 6000


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` → ``{"train.lr": "0.1"}``; list items are indexed."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for index, item in enumerate(value):
                flat.update(flatten(item, f"{path}.{index}."))
        else:
            flat[path] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def start_run(tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
    """Create the experiment if needed and a new run in it; return the run id."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id


RUN_NAME_TAG = "rayline.run_name"  # the name a user gave a pipeline run: a re-run under it resumes the same training
SUBMISSION_TAG = "rayline.submission_id"  # the Ray job that ran a pipeline run (``rayline submit``)


def tags_filter(tags: Mapping[str, str], extra: str = "") -> str:
    """An MLflow search filter for runs holding every one of ``tags`` (and ``extra``, a further condition)."""
    quoted = [value for value in tags.values() if "'" in value]
    if quoted:
        raise ValueError(f"a tag value to search for holds a quote: {quoted[0]!r}")
    return " and ".join([*(f"tags.`{key}` = '{value}'" for key, value in tags.items()), *([extra] if extra else [])])


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass(frozen=True)
class TrackedRun:
    """An MLflow run found by its tags: its id, status and page, and the model version registered from it."""

    run_id: str
    status: str
    run_url: str
    model_uri: str | None


def find_tagged_run(tracking_uri: str, experiment: str, key: str, value: str) -> TrackedRun | None:
    """The newest run of ``experiment`` tagged ``key = value``, with the model version registered from it."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], tags_filter({key: value}),
                              order_by=["attributes.start_time DESC"], max_results=1) if found else []
    if not runs:
        return None
    run = runs[0].info
    versions = client.search_model_versions(f"run_id = '{run.run_id}'")
    model_uri = f"models:/{versions[0].name}/{versions[0].version}" if versions else None
    return TrackedRun(run.run_id, run.status, run_url(tracking_uri, run.experiment_id, run.run_id), model_uri)


def latest_named_run(tracking_uri: str, experiment: str, run_name: str) -> Run | None:
    """The newest run of ``experiment`` started under the user-given ``run_name`` (its :data:`RUN_NAME_TAG`), if any."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=tags_filter({RUN_NAME_TAG: run_name}),
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, str]) -> None:
    """Log params in batches of 100 (MLflow's limit per request)."""
    client = MlflowClient(tracking_uri)
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def log_dataset(tracking_uri: str, run_id: str, name: str, uri: str, digest: str, schema: Mapping[str, str],
                context: str = "training", digest_kind: str | None = None) -> None:
    """Record the dataset as a run input (source, digest, column schema); ``digest_kind`` (what the digest
    covers, see ``rayline.data.sources.SourceInfo``) becomes the input tag ``rayline.digest_kind``. Through the
    client, not ``mlflow.start_run``: leaving that block would end the run (``FINISHED``) while it trains."""
    try:
        source = resolve_dataset_source(uri)
    except Exception:  # bundled and synthetic sources have no MLflow source type
        source = CodeDatasetSource(tags={"uri": uri})
    columns = Schema([ColSpec(_mlflow_type(dtype), column) for column, dtype in schema.items()])
    dataset = MetaDataset(source=source, name=name, digest=digest, schema=columns)
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), *([InputTag("rayline.digest_kind", digest_kind)]
                                                          if digest_kind else [])]
    MlflowClient(tracking_uri).log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])


def _mlflow_type(dtype: str) -> str:
    if dtype.startswith(("float", "Float")):
        return "double"
    if dtype.startswith(("int", "Int", "uint", "UInt")):
        return "long"
    if dtype in {"bool", "boolean"}:
        return "boolean"
    return "string"


def log_text(tracking_uri: str, run_id: str, text: str, artifact_file: str) -> None:
    """Store ``text`` as an artifact of the run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_text(text)
        parent = str(Path(artifact_file).parent)
        MlflowClient(tracking_uri).log_artifact(run_id, str(path), None if parent == "." else parent)


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on the run in one request."""
    MlflowClient(tracking_uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Close the run (``FINISHED`` or ``FAILED``)."""
    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def cost_metrics(wall_s: float, workers: int, resources_per_worker: Mapping[str, float], use_gpu: bool,
                 cpu_hour: float, gpu_hour: float) -> dict[str, float]:
    """Resources reserved for the training workers and what they cost at the given hourly prices.

    ``reserved_cpu_seconds`` is workers * CPUs per worker * ``wall_s``, the wall time of the whole fit, worker
    start-up included (likewise ``reserved_gpu_seconds``): what the cluster held for the run, not CPU time measured."""
    reserved_cpu_seconds = wall_s * workers * resources_per_worker.get("CPU", 1.0)
    reserved_gpu_seconds = wall_s * workers * resources_per_worker.get("GPU", 1.0 if use_gpu else 0.0)
    return {
        "train_wall_s": wall_s,
        "reserved_cpu_seconds": reserved_cpu_seconds,
        "reserved_gpu_seconds": reserved_gpu_seconds,
        "cost_estimate": reserved_cpu_seconds / 3600 * cpu_hour + reserved_gpu_seconds / 3600 * gpu_hour,
    }
