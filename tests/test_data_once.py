"""A streamed run reads and transforms each source row once per run, never per epoch, counted by Ray Data.

Ray Data registers every execution of a job (its operators and the rows they produced) with its stats actor,
which feeds the dashboard. The training workers' per-epoch executions are registered there too.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from ray.data._internal.stats import get_or_create_stats_actor  # the dashboard's source; pinned to ray 2.60

import rayline
from conftest import PIPELINES

pytestmark = pytest.mark.slow  # two runs that count Ray Data's executions
ROWS = 3000
EPOCHS = 3


def executions_since(started: float) -> list[dict]:
    """This job's Ray Data executions that started after ``started``, oldest first."""
    job = ray.get_runtime_context().get_job_id()
    executions = ray.get(get_or_create_stats_actor().get_datasets.remote(job)).values()
    return sorted((e for e in executions if e["start_time"] >= started), key=lambda e: e["start_time"])


def operators(execution: dict) -> dict[str, int]:
    """Operator name → rows it produced."""
    return {op["name"]: op.get("total_rows") or 0 for op in execution["operators"].values()}


def test_streamed_run_reads_and_transforms_each_row_once(platform: rayline.Platform, unique: str) -> None:
    started = time.time()
    result = rayline.run(PIPELINES / "synthetic.yaml", {
        "name": unique, "data.source": f"synthetic://classification?rows={ROWS}&features=8&classes=3&seed=1",
        "data.cache": False, "train.epochs": EPOCHS, "tracking.experiment": unique, "tracking.model_name": unique,
    }, platform=platform)
    executions = [operators(e) | {"__start__": e["start_time"]} for e in executions_since(started)]

    def touches(execution: dict, marker: str) -> bool:
        return any(marker in name for name in execution if name != "__start__")

    # The fitted steps are applied in exactly one execution, which read every source row once.
    transforming = [e for e in executions if touches(e, "StandardScaler")]
    assert len(transforming) == 1, transforming
    [transform] = transforming
    assert sum(rows for name, rows in transform.items() if name.startswith("ReadParquet")) == ROWS

    # Every epoch streams the prepared training split, nothing upstream of it: no source read, split or transform.
    epochs = [e for e in executions if any(name == "ReadParquet" for name in e) and not touches(e, "_assign")
              and e["ReadParquet"] == result.counts["train"]]
    assert len(epochs) == EPOCHS, executions
    assert not any(touches(e, "StandardScaler") or touches(e, "_assign") for e in epochs)

    # The source is read (and split) only while preparing, before the first epoch.
    source_reads = [e for e in executions if touches(e, "_assign")]
    assert source_reads and max(e["__start__"] for e in source_reads) < min(e["__start__"] for e in epochs)
    assert result.metrics["test_accuracy"] > 0.5

    # The prepared Parquet was the run's own, and it is gone once the run is over.
    assert not list((Path(platform.storage_uri) / "prepared").glob(f"{unique}-*"))


def test_cached_run_pulls_each_workers_shard_once_per_run(platform: rayline.Platform, unique: str) -> None:
    """A cached split is cut into one materialized shard per rank; each worker pulls its shard of each split in
    one Ray Data pass per run and slices it every epoch (a pass costs about 30 ms however few its rows: most of a
    small epoch). The batches are the ones Ray Data's per-epoch iteration gave, so training is the same."""
    workers, splits = 2, 3
    started = time.time()
    result = rayline.run(PIPELINES / "synthetic.yaml", {
        "name": unique, "data.source": f"synthetic://classification?rows={ROWS}&features=8&classes=3&seed=1",
        "data.cache": True, "train.epochs": EPOCHS, "train.scaling.num_workers": workers,
        "tracking.experiment": unique, "tracking.model_name": unique,
    }, platform=platform)
    shard_passes = [e for e in executions_since(started) if set(operators(e)) == {"Input"}]
    assert len(shard_passes) == workers * splits, shard_passes  # not workers * (2 * EPOCHS + 1)
    assert result.metrics["test_accuracy"] > 0.5
