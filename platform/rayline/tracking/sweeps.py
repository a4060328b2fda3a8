"""A sweep's MLflow runs: its parent run, one nested run per trial, and what each trial's run ended as (finished,
stopped, errored). Runs are found by tags, never by name."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from rayline.tracking.runs import log_params, start_run, tags_filter

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "rayline.trial"
SWEEP_TAG = "rayline.sweep"
PATH_TAG = "rayline.tune_path"  # where Ray Tune keeps the sweep's state, for --resume
STOPPED_TAG = "rayline.stopped"  # why a trial's run ended before its test evaluation
CONFIG_TAG = "rayline.config"  # the config a restarted trial runs (PBT mutates it; params keep the first)
STARTED_FROM_TAG = "rayline.started_from"  # the Tune checkpoint a restarted trial started from
SKIPPED_TAG = "rayline.skipped_trials"  # on the parent run: better-ranked trials that could not be published


@dataclass(frozen=True)
class SweepRuns:
    """The MLflow runs of one sweep: the parent ``parent_run_id`` in ``experiment_id`` and its nested runs."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    client: MlflowClient = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "client", MlflowClient(self.tracking_uri))

    def __reduce__(self) -> tuple[Any, ...]:  # a trial's actor gets the addresses and makes its own client
        return SweepRuns, (self.tracking_uri, self.experiment_id, self.parent_run_id)

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, sweep: str, run_name: str, tune_path: str) -> SweepRuns:
        """A new parent run, tagged with the sweep's name and the path of Tune's state (a driver killed at any
        point leaves a run that :meth:`interrupted` finds)."""
        parent = start_run(tracking_uri, experiment, run_name, {SWEEP_TAG: sweep, PATH_TAG: tune_path})
        return cls(tracking_uri, MlflowClient(tracking_uri).get_run(parent).info.experiment_id, parent)

    @classmethod
    def interrupted(cls, tracking_uri: str, experiment: str, sweep: str) -> tuple[SweepRuns, str] | None:
        """The latest run of ``sweep`` that did not finish, and the path of its Tune state; None if there is none."""
        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = client.search_runs([found.experiment_id], tags_filter({SWEEP_TAG: sweep}, "attributes.status != "
                                                                     "'FINISHED'"),
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs or PATH_TAG not in runs[0].data.tags:
            return None
        return cls(tracking_uri, found.experiment_id, runs[0].info.run_id), runs[0].data.tags[PATH_TAG]

    def trial_run(self, trial_id: str, name: str, config: Mapping[str, Any], started_from: str | None) -> str:
        """The trial's nested run: created with its sampled params, or, when the trial starts again (PBT, a resumed
        sweep), the same run, reopened, with the config it now runs and the checkpoint it starts from as tags."""
        tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id}
        earlier = self.client.search_runs([self.experiment_id], tags_filter(tags))
        if not earlier:
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            log_params(self.tracking_uri, run_id, {path: str(value) for path, value in config.items()})
            return run_id
        run_id = earlier[0].info.run_id
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, CONFIG_TAG, json.dumps(config, sort_keys=True, default=str))
        if started_from is not None:
            self.client.set_tag(run_id, STARTED_FROM_TAG, started_from)
        return run_id

    def end_trial(self, run_id: str, status: str) -> None:
        """Close a trial's run (``FINISHED``, ``FAILED``)."""
        self.client.set_terminated(run_id, status)

    def trials(self) -> list[Run]:
        """Every trial's nested run."""
        return self.client.search_runs([self.experiment_id], tags_filter({PARENT_TAG: self.parent_run_id}))

    def close_stopped(self, nonfinite: set[str], errored: set[str]) -> list[Run]:
        """Trials that were stopped end without closing their nested run: mark those ``KILLED`` with why in
        :data:`STOPPED_TAG` (the scheduler, or a loss that went NaN or infinite; a stopped trial's Train job may
        have ended ``FAILED`` while being stopped, so Tune's ``errored`` set says which really erred). Returns every
        trial's run afterwards."""
        for run in self.trials():
            trial = run.data.tags[TRIAL_TAG]
            if run.info.status != "FINISHED" and trial not in errored:
                why = "train_loss is not finite" if trial in nonfinite else "by the scheduler"
                self.client.set_tag(run.info.run_id, STOPPED_TAG, why)
                self.client.set_terminated(run.info.run_id, "KILLED")
        return self.trials()

    def note_skipped(self, skipped: Mapping[str, str]) -> None:
        """Record on the parent run which better-ranked trials were not published, and why."""
        if skipped:
            self.client.set_tag(self.parent_run_id, SKIPPED_TAG,
                                "; ".join(f"{name}: {why}" for name, why in skipped.items()))

    def end(self, status: str = "FINISHED") -> None:
        """Close the parent run."""
        self.client.set_terminated(self.parent_run_id, status)
