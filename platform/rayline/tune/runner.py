"""A sweep: Ray Tune over the one training path. Data is prepared once and shared by every trial; each trial is a
multi-worker Train job with a nested MLflow run (``tracking/sweeps.py``); the best trial's model is published as a
pipeline's is."""

from __future__ import annotations

import hashlib
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from mlflow.entities import Run
from ray import tune
from ray.train import Checkpoint
from ray.tune.search.basic_variant import BasicVariantGenerator

from rayline import tracking
from rayline.cluster import Platform, check_placeable
from rayline.cluster.resources import capacity, how_many_fit, worker_bundle
from rayline.data import PreparedData, prepare
from rayline.errors import RaylineError, SpecError
from rayline.pipeline import Progress
from rayline.pipeline.publish import package, register
from rayline.spec import PipelineSpec, SweepSpec, resolve_sweep, trial_spec
from rayline.spec.sweep import PbtScheduler
from rayline.tracking.sweeps import STOPPED_TAG, TRIAL_TAG, SweepRuns
from rayline.train import fit
from rayline.tune.schedulers import NonFiniteLoss, scheduler_for
from rayline.tune.train_reports import CHECKPOINT_PATH, report_to_tune
from rayline.tune.trials_table import log_trials

DATA_CPU = 1.0  # kept free for Ray Data's read tasks when the trials stream their splits
TRIAL_CPU = 0.1  # the trial's own actor, which drives its Train job (Tune refuses an empty bundle)
# Tune keeps a trial's latest checkpoints (what a resume restores), and saves the sweep's state each time a trial
# has written that many: more often than Tune's "excessive" threshold, which is no concern here. Under PBT it keeps
# them all: a weaker trial copies the checkpoint PBT chose at a perturbation, which later ones would have deleted.
TUNE_CHECKPOINTS = 2
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
SHARED_PREFIXES = ("data.", "preprocess")  # prepared once per sweep: not tunable


@dataclass(frozen=True)
class BestTrial:
    """The trial a sweep published: its sampled config, its nested run's metrics and id, the registered model and
    the promotion gate's decision."""

    config: dict[str, Any]
    metrics: dict[str, float]
    run_id: str
    model_uri: str
    promotion: tracking.PromotionDecision


@dataclass
class SweepResult:
    """What a sweep produced: one row per trial, the best trial that finished its test evaluation, the model
    published from it, and the trials ranked above it that could not be published."""

    trials: pd.DataFrame
    best: BestTrial
    parent_run_id: str
    wall_s: float
    skipped: dict[str, str] = field(default_factory=dict)  # better-ranked trials not published: run name → why


def trial(config: dict[str, Any], document: dict[str, Any], prepared: PreparedData, storage_uri: str,
          runs: SweepRuns) -> None:
    """One trial, in its Tune actor: the pipeline spec with ``config`` applied, trained on the shared data, with a
    nested MLflow run holding its params, per-epoch metrics, test metrics and status.

    It starts from Tune's checkpoint when there is one: a better trial's, copied by PBT, or its own latest when
    a resumed sweep restores it. Each starting checkpoint gets a fresh Train run (Train would otherwise resume
    that run's own latest checkpoint); within a run, a crashed worker restores from the run's checkpoints."""
    spec = trial_spec(document, config)
    context = tune.get_context()
    name = context.get_trial_name()
    start = tune.get_checkpoint()
    run_id = runs.trial_run(context.get_trial_id(), name, config, start.path if start else None)
    run_name = f"{spec.name}-{name}" + (f"-from-{hashlib.sha256(start.path.encode()).hexdigest()[:8]}"
                                          if start else "")
    try:
        outcome = report_to_tune(lambda callback: fit(
            spec, prepared, storage_uri, run_name=run_name, tracking_uri=runs.tracking_uri, run_id=run_id,
            callbacks=[callback], start_from=start))
    except BaseException:
        runs.end_trial(run_id, "FAILED")
        raise
    tracking.log_metrics(runs.tracking_uri, run_id, {**outcome.test_metrics, **outcome.resume_metrics})
    runs.end_trial(run_id, "FINISHED")


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
    if resume:
        runs, path = _interrupted(uri, base.tracking.experiment, sweep)
    else:
        path = f"{platform.storage_uri.rstrip('/')}/tune/{sweep.name}-{uuid.uuid4().hex[:12]}"
        runs = SweepRuns.start(uri, base.tracking.experiment, sweep.name,
                               f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}", path)
    metric, mode = sweep.objective
    keep = None if isinstance(sweep.scheduler, PbtScheduler) else TUNE_CHECKPOINTS
    try:
        trainable = tune.with_resources(tune.with_parameters(
            trial, document=document, prepared=prepared, storage_uri=platform.storage_uri, runs=runs),
            {"cpu": TRIAL_CPU})
        if resume:
            progress("tune", f"resuming {path}: finished trials are kept")
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tracking.log_params(uri, runs.parent_run_id, tracking.flatten(sweep.model_dump(mode="json")))
            tuner = tune.Tuner(
                trainable,
                param_space={path: domain.to_tune() for path, domain in sweep.search_space.items()},
                # the concurrency bound goes to the generator: Tune ignores max_concurrent_trials when given one
                tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=sweep.num_samples,
                                            search_alg=BasicVariantGenerator(random_state=sweep.seed,
                                                                             max_concurrent=concurrency),
                                            scheduler=scheduler_for(sweep, base.train.epochs, concurrency),
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
        children = runs.close_stopped(nonfinite, errored)
        best, skipped = _publish_best(grid, sweep, document, prepared, uri, children, progress)
        runs.note_skipped(skipped)
        log_trials(uri, runs.parent_run_id, children, trials, metric)
        runs.end()
    except BaseException:
        runs.end("FAILED")
        raise
    finally:
        prepared.release()
    return SweepResult(trials=trials, best=best, parent_run_id=runs.parent_run_id,
                       wall_s=time.perf_counter() - started, skipped=skipped)


def _interrupted(tracking_uri: str, experiment: str, sweep: SweepSpec) -> tuple[SweepRuns, str]:
    """The runs and Tune state of this sweep's latest run that did not finish."""
    found = SweepRuns.interrupted(tracking_uri, experiment, sweep.name)
    if found is None or not tune.Tuner.can_restore(found[1]):
        raise SpecError(f"no interrupted run of sweep {sweep.name!r} to resume in experiment {experiment!r}",
                        field="--resume", file=sweep.file)
    return found


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
                  tracking_uri: str, children: list[Run], progress: Progress) -> tuple[BestTrial, dict[str, str]]:
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
    return BestTrial(config, run.data.metrics, run.info.run_id, f"models:/{spec.tracking.model_name}/{version}",
                     decision), skipped
