"""The lines that end a command's output: what a user reads. Nothing parses them (``rayline submit`` finds its
job's run by a tag)."""

from __future__ import annotations

import rayline

_WIDTH = 15


def _line(label: str, value: object) -> str:
    return f"  {label:<{_WIDTH - 1}} {value}"


def _promotion(decision: rayline.PromotionDecision) -> str:
    return f"{'PROMOTED' if decision.promoted else 'kept'}: {decision.reason}"


def run_summary(name: str, result: rayline.PipelineResult) -> list[str]:
    """What ``rayline run`` prints at the end: metrics, the MLflow run, the model, promotion, stages and notes."""
    return [
        f"pipeline {name} finished in {result.wall_s:.1f} s",
        *(_line(key, f"{value:.4f}") for key, value in result.metrics.items()),
        _line("run id", result.run_id),
        _line("model", f"{result.model_uri}  (version {result.model_version})"),
        _line("promotion", _promotion(result.promotion)),
        _line("MLflow UI", result.run_url),
        _line("stages (s)", " | ".join(f"{k} {v:.1f}" for k, v in result.stages.items())),
        *(_line("note", note) for note in result.notes),
    ]


def sweep_summary(result: rayline.SweepResult) -> list[str]:
    """What ``rayline tune`` prints after the trials table."""
    best = result.best
    return [
        f"sweep finished in {result.wall_s:.1f} s; best {best.config}",
        _line("model", best.model_uri),
        _line("promotion", _promotion(best.promotion)),
        *(_line("skipped", f"{name} (ranked higher): {why}") for name, why in result.skipped.items()),
    ]


def job_summary(job: rayline.SubmittedRun) -> list[str]:
    """What ``rayline submit`` prints after the job's log: its status, and the MLflow run it made."""
    lines = [f"job {job.job_id} {job.status}" + (f": {job.message}" if not job.succeeded else "")]
    if job.run is not None:
        lines += [_line("run id", job.run.run_id), _line("model", job.run.model_uri or "-"),
                  _line("MLflow UI", job.run.run_url)]
    return lines
