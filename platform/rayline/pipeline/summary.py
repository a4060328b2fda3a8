"""The lines that end a pipeline run's output, and reading them back out of a job's log: a run submitted as a
Ray job reports its MLflow run through the same lines a user reads."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rayline.pipeline.runner import PipelineResult

_LABELS = {"run_id": "run id", "model_uri": "model", "run_url": "MLflow UI"}
_WIDTH = 15


@dataclass(frozen=True)
class RunSummary:
    """The MLflow run a finished pipeline printed: its id, its registered model's URI and its page in the UI."""

    run_id: str
    model_uri: str
    run_url: str


def summary_lines(name: str, result: PipelineResult) -> list[str]:
    """What ``rayline run`` prints at the end: metrics, the MLflow run, the model, promotion and the stages."""
    promotion = f"{'PROMOTED' if result.promotion.promoted else 'kept'}: {result.promotion.reason}"
    return [
        f"pipeline {name} finished in {result.wall_s:.1f} s",
        *(f"  {key:<{_WIDTH - 1}} {value:.4f}" for key, value in result.metrics.items()),
        _line("run_id", result.run_id),
        _line("model_uri", f"{result.model_uri}  (version {result.model_version})"),
        f"  {'promotion':<{_WIDTH - 1}} {promotion}",
        _line("run_url", result.run_url),
        f"  {'stages (s)':<{_WIDTH - 1}} " + " | ".join(f"{k} {v:.1f}" for k, v in result.stages.items()),
        *(f"  {'note':<{_WIDTH - 1}} {note}" for note in result.notes),
    ]


def run_lines(run: RunSummary) -> list[str]:
    """The summary's lines naming the MLflow run, as ``rayline submit`` repeats them after the job's log."""
    return [_line("run_id", run.run_id), _line("run_url", run.run_url)]


def _line(field: str, value: str) -> str:
    return f"  {_LABELS[field]:<{_WIDTH - 1}} {value}"


def read_summary(log: str) -> RunSummary | None:
    """The summary printed in ``log`` (the last one, if the log holds several), or None if there is none."""
    found = {}
    for field, label in _LABELS.items():
        matches = re.findall(rf"^  {re.escape(label)} +(\S+)", log, flags=re.MULTILINE)
        if not matches:
            return None
        found[field] = matches[-1]
    return RunSummary(**found)
