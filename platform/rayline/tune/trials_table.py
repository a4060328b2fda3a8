"""What a sweep leaves on its parent MLflow run: the trials table and a plot of the metric against epochs."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no global state, no display backend
from mlflow import MlflowClient

TABLE = "trials.csv"
PLOT = "trials.png"


def log_trials(tracking_uri: str, parent_run_id: str, children: list, trials: pd.DataFrame, metric: str) -> None:
    """Log ``trials`` as ``trials.csv`` and, from each nested run's history, ``metric`` per epoch as ``trials.png``
    (one line per trial, labelled with its run name)."""
    client = MlflowClient(tracking_uri)
    client.log_text(parent_run_id, trials.to_csv(index=False), TABLE)
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for run in children:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
        if history:
            steps, values = zip(*history, strict=True)
            axes.plot(steps, values, marker="o", label=f"{run.info.run_name} ({run.info.status.lower()})")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.legend(fontsize="small")
    client.log_figure(parent_run_id, figure, PLOT)
