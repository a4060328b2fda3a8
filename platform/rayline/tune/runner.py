"""A sweep: Ray Tune over the one training path. Data is prepared once and shared by every trial; each trial is a
multi-worker Train job with a nested MLflow run; the best trial's model is published as a pipeline's is."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from ray import tune
from ray.train import Checkpoint
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from rayline import tracking
from rayline.cluster import Platform, check_placeable
from rayline.cluster.resources import capacity, how_many_fit, worker_bundle
from rayline.data import PreparedData, prepare
from rayline.errors import RaylineError, SpecError
from rayline.pipeline import Progress
from rayline.pipeline.publish import package, register
from rayline.spec import PipelineSpec, SweepSpec, resolve_sweep, trial_spec
from rayline.spec.sweep import AshaScheduler, PbtScheduler
from rayline.train import fit
from rayline.tune.report import log_trials
from rayline.tune.reporting import CHECKPOINT_PATH, report_to_tune

DATA_CPU = 1.0  # kept free for Ray Data's read tasks when the trials stream their splits
TRIAL_CPU = 0.1  # the trial's own actor, which drives its Train job (Tune refuses an empty bundle)
# Tune keeps a trial's latest checkpoints (what a resume restores), and saves the sweep's state each time a trial
# has written that many: more often than Tune's "excessive" threshold, which is no concern here. Under PBT it keeps
# them all: a weaker trial copies the checkpoint PBT chose at a perturbation, which later ones would have deleted.
TUNE_CHECKPOINTS = 2
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
TRIAL_TAG = "rayline.trial"
SWEEP_TAG = "rayline.sweep"
STOPPED_TAG = "rayline.stopped"
SKIPPED_TAG = "rayline.skipped_trials"  # on the parent run: better-ranked trials that could not be published
CONFIG_TAG = "rayline.config"  # the config a restarted trial runs (PBT mutates it; params keep the first)
STARTED_FROM_TAG = "rayline.started_from"  # the Tune checkpoint a restarted trial started from
PATH_TAG = "rayline.tune_path"  # where Ray Tune keeps the sweep's state, for --resume
SHARED_PREFIXES = ("data.", "preprocess")  # prepared once per sweep: not tunable


@dataclass
class SweepResult:
    """What a sweep produced: one row per trial, the best trial that finished its test evaluation, the model
    published from it, and the trials ranked above it that could not be published."""

    trials: pd.DataFrame
    best: dict[str, Any]  # config, metrics, run_id, model_uri, promotion
    parent_run_id: str
    wall_s: float
    skipped: dict[str, str] = field(default_factory=dict)  # better-ranked trials not published: run name → why


def trial(config: dict[str, Any], document: dict[str, Any], prepared: PreparedData, storage_uri: str,
          tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
    """One trial, in its Tune actor: the pipeline spec with ``config`` applied, trained on the shared data, with a
    nested MLflow run holding its params, per-epoch metrics, test metrics and status.

    It starts from Tune's checkpoint when there is one: a better trial's, copied by PBT, or its own latest when
    a resumed sweep restores it. Each starting checkpoint gets a fresh Train run (Train would otherwise resume
    that run's own latest checkpoint); within a run, a crashed worker restores from the run's checkpoints."""
    spec = trial_spec(document, config)
    context = tune.get_context()
    name = context.get_trial_name()
    start = tune.get_checkpoint()
    run_id = _nested_run(tracking_uri, experiment_id, parent_run_id, context.get_trial_id(), name, config, start)
    run_name = f"{spec.name}-{name}" + (f"-from-{hashlib.sha256(start.path.encode()).hexdigest()[:8]}"
                                          if start else "")
    client = MlflowClient(tracking_uri)
    try:
        outcome = report_to_tune(lambda callback: fit(
            spec, prepared, storage_uri, run_name=run_name, tracking_uri=tracking_uri, run_id=run_id,
            callbacks=[callback], start_from=start))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    tracking.log_metrics(tracking_uri, run_id, {**outcome.test_metrics, **outcome.resume_metrics})
    client.set_terminated(run_id, "FINISHED")


def _nested_run(tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str, name: str,
                config: dict[str, Any], start: Checkpoint | None) -> str:
    """The trial's nested run: created with its sampled params, or, when the trial starts again (PBT, a resumed
    sweep), the same run, with the config it now runs and the checkpoint it starts from as tags."""
    client = MlflowClient(tracking_uri)
    tags = {"mlflow.parentRunId": parent_run_id, TRIAL_TAG: trial_id}
    earlier = client.search_runs([experiment_id], " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items()))
    if not earlier:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        tracking.log_params(tracking_uri, run_id, {path: str(value) for path, value in config.items()})
        return run_id
    run_id = earlier[0].info.run_id
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, CONFIG_TAG, json.dumps(config, sort_keys=True, default=str))  # any other value as text
    if start is not None:
        client.set_tag(run_id, STARTED_FROM_TAG, start.path)
    return run_id


class NonFiniteLoss(tune.Stopper):
    """Stop a trial whose training loss is NaN or infinite: it cannot recover, and must not hold workers."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return not math.isfinite(result.get("train_loss", 0.0))

    def stop_all(self) -> bool:
        return False


def _scheduler(sweep: SweepSpec, epochs: int, concurrency: int) -> Any:
    match sweep.scheduler:
        case AshaScheduler(grace_period=grace, reduction_factor=factor):
            # max_t one past the last epoch: a trial that reaches it runs its test evaluation instead of being
            # stopped at the budget (ASHA stops trials at max_t), and its rungs still end at the last epoch.
            return ASHAScheduler(time_attr="training_iteration", max_t=epochs + 1, grace_period=grace,
                                 reduction_factor=factor)
        case PbtScheduler(perturbation_interval=interval, hyperparam_mutations=paths):
            return PbtOverTrainJobs(
                epochs, concurrency, sweep.num_trials, time_attr="training_iteration", perturbation_interval=interval,
                hyperparam_mutations={path: sweep.search_space[path].to_tune() for path in paths or []})
    return FIFOScheduler()


class PbtOverTrainJobs(PopulationBasedTraining):
    """Ray's PBT, for trials whose every restart starts a Train job (about 20 s on 2 cores).

    A trial's last epoch is left alone: it goes on to its test evaluation, instead of being replaced by another
    trial's checkpoint with no epoch left to train. And when every trial of the sweep has a slot, a trial at a
    perturbation is not paused to let a pending one catch up (Ray's PBT pauses whenever another trial is pending
    or paused, as one being restarted by an exploit is): the pending one starts anyway."""

    def __init__(self, epochs: int, concurrency: int, num_trials: int, **options: Any) -> None:
        super().__init__(**options)
        self._epochs = epochs
        self._multiplexed = num_trials > concurrency

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get(self._time_attr, 0) >= self._epochs:
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE and not self._multiplexed else decision


def _largest_trial(sweep: SweepSpec, base: PipelineSpec, document: dict[str, Any]) -> PipelineSpec:
    """The trial with the most workers the search space can draw; refused if the cluster can never place it."""
    largest = max((trial_spec(document, {path: value}) for path, domain in sweep.search_space.items()
                   for value in domain.samples() if path.startswith("train.scaling")),
                  key=lambda spec: spec.train.scaling.max_workers, default=base)
    check_placeable(largest.train.scaling)
    return largest


def _concurrency(sweep: SweepSpec, largest: PipelineSpec, prepared: PreparedData) -> int:
    """How many trials the cluster holds at once (the autoscaler's maximum where there is one): its resources over
    the largest trial's footprint (the trial's actor plus its workers), less a CPU for Ray Data's tasks when the
    splits are streamed. Bounding by the largest trial keeps every running trial's workers placeable, and the data
    tasks always have a CPU: trials never wait on each other."""
    scaling = largest.train.scaling
    footprint = {"CPU": TRIAL_CPU}
    for name, amount in worker_bundle(scaling).items():
        footprint[name] = footprint.get(name, 0.0) + scaling.max_workers * amount
    available = capacity()
    if not prepared.cached:
        available["CPU"] = available.get("CPU", 0.0) - DATA_CPU
    fits = max(1, how_many_fit(footprint, available))
    return min(fits, sweep.max_concurrent_trials or fits)


def run_sweep(sweep: SweepSpec, platform: Platform, progress: Progress | None = None,
              resume: bool = False) -> SweepResult:
    """Run ``sweep`` on ``platform``; publish the best trial's model through the promotion gate.

    ``resume`` continues the latest interrupted run of this sweep (its driver was killed, or it failed): finished
    trials are kept, unfinished and errored ones go on from their Tune state, in the same parent MLflow run."""
    started = time.perf_counter()
    progress = progress or (lambda stage, message: None)
    document, base = resolve_sweep(sweep)
    shared = [path for path in sweep.search_space if path.startswith(SHARED_PREFIXES)]
    if shared:
        raise SpecError("data and preprocessing are prepared once and shared by every trial: they cannot be "
                        "tuned", field=f"search_space.{shared[0]}", file=sweep.file)
    platform.init_ray()
    largest = _largest_trial(sweep, base, document)
    prepared = prepare(base, platform.storage_uri)
    concurrency = _concurrency(sweep, largest, prepared)
    progress("tune", f"{sweep.num_trials} trial(s), at most {concurrency} at once")
    uri = platform.tracking_uri
    mlflow.set_tracking_uri(uri)
    if resume:
        parent, path = _interrupted(uri, base.tracking.experiment, sweep)
    else:
        # the run is created with its Tune path: a driver killed at any point leaves a run that --resume finds
        path = f"{platform.storage_uri.rstrip('/')}/tune/{sweep.name}-{uuid.uuid4().hex[:12]}"
        parent = tracking.start_run(uri, base.tracking.experiment, f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                    {SWEEP_TAG: sweep.name, PATH_TAG: path})
    experiment_id = mlflow.get_run(parent).info.experiment_id
    metric, mode = sweep.objective
    keep = None if isinstance(sweep.scheduler, PbtScheduler) else TUNE_CHECKPOINTS
    try:
        trainable = tune.with_resources(tune.with_parameters(
            trial, document=document, prepared=prepared, storage_uri=platform.storage_uri, tracking_uri=uri,
            experiment_id=experiment_id, parent_run_id=parent), {"cpu": TRIAL_CPU})
        if resume:
            progress("tune", f"resuming {path}: finished trials are kept")
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tracking.log_params(uri, parent, tracking.flatten(sweep.model_dump(mode="json")))
            tuner = tune.Tuner(
                trainable,
                param_space={path: domain.to_tune() for path, domain in sweep.search_space.items()},
                # the concurrency bound goes to the generator: Tune ignores max_concurrent_trials when given one
                tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=sweep.num_samples,
                                            search_alg=BasicVariantGenerator(random_state=sweep.seed,
                                                                             max_concurrent=concurrency),
                                            scheduler=_scheduler(sweep, base.train.epochs, concurrency),
                                            time_budget_s=sweep.time_budget_s),
                run_config=tune.RunConfig(name=path.rsplit("/", 1)[1], storage_path=path.rsplit("/", 1)[0],
                                          stop=NonFiniteLoss(), verbose=0,
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)),
            )
        grid = tuner.fit()
        trials = grid.get_dataframe()
        nonfinite = {result.metrics["trial_id"] for result in grid
                     if result.metrics and not math.isfinite(result.metrics.get("train_loss", 0.0))}
        errored = {result.metrics["trial_id"] for result in grid if result.error and result.metrics}
        children = _close_stopped_trials(uri, experiment_id, parent, nonfinite, errored)
        best, skipped = _publish_best(grid, sweep, document, prepared, uri, children, progress)
        if skipped:
            tracking.set_tags(uri, parent, {SKIPPED_TAG: "; ".join(f"{n}: {why}" for n, why in skipped.items())})
        log_trials(uri, parent, children, trials, metric)
        tracking.end_run(uri, parent)
    except BaseException:
        tracking.end_run(uri, parent, "FAILED")
        raise
    finally:
        prepared.release()
    return SweepResult(trials=trials, best=best, parent_run_id=parent, wall_s=time.perf_counter() - started,
                       skipped=skipped)


def _interrupted(tracking_uri: str, experiment: str, sweep: SweepSpec) -> tuple[str, str]:
    """The parent run and Tune state of this sweep's latest run that did not finish."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], f"tags.`{SWEEP_TAG}` = '{sweep.name}' and "
                              "attributes.status != 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=1) if found else []
    if not runs or not tune.Tuner.can_restore(runs[0].data.tags.get(PATH_TAG, "")):
        raise SpecError(f"no interrupted run of sweep {sweep.name!r} to resume in experiment {experiment!r}",
                        field="--resume", file=sweep.file)
    return runs[0].info.run_id, runs[0].data.tags[PATH_TAG]


def _close_stopped_trials(tracking_uri: str, experiment_id: str, parent_run_id: str, nonfinite: set[str],
                          errored: set[str]) -> list:
    """Trials that were stopped end without closing their nested run: mark those ``KILLED`` and say why in the
    tag ``rayline.stopped`` (the scheduler, or a loss that went NaN/infinite). Returns every nested run."""
    client = MlflowClient(tracking_uri)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    for run in client.search_runs([experiment_id], query):
        nan = run.data.tags[TRIAL_TAG] in nonfinite
        # a stopped trial's Train job may have ended FAILED while being stopped: Tune says whether it erred
        if run.info.status != "FINISHED" and run.data.tags[TRIAL_TAG] not in errored:
            client.set_tag(run.info.run_id, STOPPED_TAG, "train_loss is not finite" if nan else "by the scheduler")
            client.set_terminated(run.info.run_id, "KILLED")
    return client.search_runs([experiment_id], query)


def _rank(grid: tune.ResultGrid, metric: str, mode: str) -> list[tune.Result]:
    """The trials that reported a finite ``metric``, best first by their last report."""
    scored = [r for r in grid if r.metrics and math.isfinite(r.metrics.get(metric, math.nan))]
    return sorted(scored, key=lambda r: r.metrics[metric], reverse=mode == "max")


def _unpublishable(result: tune.Result, run: Run, test_metric: str) -> str | None:
    """Why a trial's model cannot be published (it has no test metric to take to the promotion gate), or None."""
    if test_metric in run.data.metrics and CHECKPOINT_PATH in result.metrics:
        return None
    if STOPPED_TAG in run.data.tags:
        stopped = run.data.tags[STOPPED_TAG]
        return f"stopped {stopped} before its test evaluation" if stopped.startswith("by ") else f"stopped: {stopped}"
    return "errored before its test evaluation" if result.error else "ended before its test evaluation"


def _publish_best(grid: tune.ResultGrid, sweep: SweepSpec, document: dict[str, Any], prepared: PreparedData,
                  tracking_uri: str, children: list[Run], progress: Progress) -> tuple[dict[str, Any], dict[str, str]]:
    """Package and register the last checkpoint of the best trial that finished its test evaluation, from its
    nested run. Returns it, and the better-ranked trials that were skipped, with why (run name → reason)."""
    metric, mode = sweep.objective
    runs = {run.data.tags[TRIAL_TAG]: run for run in children}
    test_metric = trial_spec(document, {}).promotion[0]  # the task, and so the test metric, is every trial's
    skipped: dict[str, str] = {}
    for best in _rank(grid, metric, mode):
        run = runs[best.metrics["trial_id"]]
        reason = _unpublishable(best, run, test_metric)
        if reason is None:
            break
        skipped[run.info.run_name] = reason
    else:
        listed = "".join(f"; {name}: {why}" for name, why in skipped.items())
        raise RaylineError(f"no trial finished its test evaluation with a finite {metric!r}: nothing to publish"
                           f"{listed}")
    for name, why in skipped.items():
        progress("tune", f"trial {name} ranks higher on {metric} but is not published: {why}")
    config = {path: best.config[path] for path in sweep.search_space}
    spec = trial_spec(document, config)
    model_uri = package(spec, prepared, Checkpoint(best.metrics[CHECKPOINT_PATH]), run.info.run_id)
    version, decision = register(spec, tracking_uri, model_uri, run.data.metrics)
    progress("register", f"{spec.tracking.model_name} version {version} from trial {run.info.run_name}; "
             f"{decision.reason}")
    return {"config": config, "metrics": run.data.metrics, "run_id": run.info.run_id,
            "model_uri": f"models:/{spec.tracking.model_name}/{version}", "promotion": decision}, skipped
