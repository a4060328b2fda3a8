"""notebooks/quickstart.ipynb, executed top to bottom in a real Jupyter kernel against the session platform: it
trains, plots, sweeps, serves, predicts over HTTP and through a Serve handle, and removes its service."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

import rayline
from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
# Appended to the executed copy only: the kernel's own view of what the notebook produced.
PROBE = """\
import json as _json
import sys as _sys
print(_json.dumps({
    "executable": _sys.executable,
    "platform": [platform.ray_address, platform.tracking_uri],
    "test_accuracy": result.metrics["test_accuracy"],
    "run_id": result.run_id,
    "epochs_plotted": len(curves),
    "trials": len(sweep.trials),
    "trial_epochs": sweep.trials["training_iteration"].tolist(),
    "sweep_parent": sweep.parent_run_id,
    "model_version": answer["model_version"],
    "labels": labels,
    "http": http_predictions,
    "handle": handle_predictions,
}))"""


def _outputs(notebook: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """Every output of the notebook's code cells, in order."""
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def test_the_committed_notebook_has_no_outputs() -> None:
    """The notebook is committed valid and cleared: no outputs, no execution counts."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom_in_a_kernel(platform: rayline.Platform, state_dir: Path, serve_port: int,
                                                   unique: str, monkeypatch: pytest.MonkeyPatch,
                                                   mlflow_client, tmp_path: Path) -> None:
    """Every cell runs without error, and what it made is real: the runs in MLflow, the figures and tables, the
    same predictions over HTTP and through the handle, from the champion, and no service left behind."""
    # The kernel inherits this environment: the session's platform (never a second one), its Serve port, and names
    # no other test uses.
    monkeypatch.setenv("RAYLINE_STATE_DIR", str(state_dir))
    monkeypatch.setenv("QUICKSTART_NAME", unique)
    monkeypatch.setenv("QUICKSTART_SERVE_PORT", str(serve_port))
    # Serve runs for the whole session (as later modules expect) and is started here, by the session's driver: a
    # Serve first started by the kernel left a 1-CPU placement group reserved after the kernel exited (Ray 2.60,
    # HAProxy ingress), which later starved a sweep of the CPU its data tasks needed.
    from ray import serve
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port, "request_timeout_s": 60})
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    started = time.perf_counter()
    try:  # a failing cell raises CellExecutionError (with the cell and its traceback), failing the test
        NotebookClient(notebook, kernel_name="python3", timeout=600, startup_timeout=120,
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:  # what ran, with its outputs, for a look afterwards
        nbformat.write(notebook, tmp_path / NOTEBOOK.name)
        print(f"notebook executed in {time.perf_counter() - started:.1f} s: {tmp_path / NOTEBOOK.name}")

    [probe] = [json.loads(o["text"]) for o in notebook.cells.pop().outputs if o.get("name") == "stdout"]
    assert probe["executable"] == sys.executable  # the kernel is this virtual environment's Python
    assert probe["platform"] == [platform.ray_address, platform.tracking_uri]  # the session's platform, not another
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o["output_type"] == "error"]
    # Three figures: training curves, the sweep's trials, the digits with their predictions.
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("config/train.lr" in table and "val_accuracy" in table for table in tables)  # the trials table
    assert any("through the handle" in table for table in tables)

    # The pipeline's run, with the per-epoch history the curves were drawn from.
    assert probe["test_accuracy"] > 0.9
    assert probe["epochs_plotted"] == 5
    run = mlflow_client.get_run(probe["run_id"])
    assert mlflow_client.get_experiment(run.info.experiment_id).name == unique
    assert len(mlflow_client.get_metric_history(probe["run_id"], "val_loss")) == 5
    # The sweep: 3 trials of at most 3 epochs, each a nested run in the notebook's sweep experiment.
    assert probe["trials"] == 3 and max(probe["trial_epochs"]) == 3
    parent = mlflow_client.get_run(probe["sweep_parent"])
    assert mlflow_client.get_experiment(parent.info.experiment_id).name == f"{unique}-sweeps"
    # The champion answered, over HTTP and through the handle alike, and mostly right.
    assert probe["model_version"] == mlflow_client.get_model_version_by_alias(unique, "champion").version
    assert probe["http"] == probe["handle"]
    assert sum(p == label for p, label in zip(probe["http"], probe["labels"], strict=True)) >= len(probe["labels"]) - 1
    # ... and its service is gone.
    assert unique not in rayline.serve_status(platform=platform)
