"""data → train → evaluate → package → register, as one function."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
import yaml

from rayline import tracking
from rayline.cluster import Platform, placement_problems
from rayline.data import PreparedData, prepare
from rayline.errors import SpecError, SpecProblem
from rayline.models import build_model, resolve_factory
from rayline.pipeline.progress import epoch_progress
from rayline.pipeline.publish import package, register
from rayline.spec import PipelineSpec
from rayline.stages import StageClock
from rayline.train import TrainingDiverged, fit

Progress = Callable[[str, str], None]
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
CLASSES_MISSING_TAG = "rayline.classes_missing"  # classes of the training split that an evaluation split lacks
HASH_KEY_TAG = "rayline.hash_key_fingerprint"  # which secret key the hash steps used (never the key itself)
RESUMES_TAG = "rayline.resumes_run"  # on a named run's later attempt: the id of the attempt whose training it resumed


@dataclass
class PipelineResult:
    """What a finished pipeline run produced."""

    run_id: str
    experiment_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float]
    promotion: tracking.PromotionDecision
    tracking_uri: str
    resumed_from_epoch: int | None
    counts: dict[str, int]
    wall_s: float
    stages: dict[str, float]
    dropped_null_labels: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def model_uri(self) -> str:
        """``models:/<name>/<version>``: loadable with ``mlflow.pyfunc.load_model``."""
        return f"models:/{self.model_name}/{self.model_version}"

    @property
    def run_url(self) -> str:
        """The run's page in the MLflow UI."""
        return tracking.run_url(self.tracking_uri, self.experiment_id, self.run_id)


def _quiet(stage: str, message: str) -> None:
    pass


def _model_problems(spec: PipelineSpec) -> list[SpecProblem]:
    """Why ``model.name`` cannot be built (a factory that does not import), if it cannot."""
    try:
        resolve_factory(spec.model.name)
    except SpecError as err:
        return list(err.problems)
    return []


def check_run_name(run_name: str) -> None:
    """Refuse a malformed run name, naming it."""
    if not RUN_NAME.fullmatch(run_name):
        raise SpecError(f"{run_name!r}: a run name has 1 to 64 letters, digits, '_', '.' and '-'", field="run_name")


def _earlier_attempt(spec: PipelineSpec, tracking_uri: str, run_name: str) -> str | None:
    """Refuse a malformed ``run_name`` or one whose run already finished; return the id of an earlier, unfinished
    attempt under it (whose training this run resumes), if any."""
    check_run_name(run_name)
    earlier = tracking.latest_named_run(tracking_uri, spec.tracking.experiment, run_name)
    if earlier is not None and earlier.info.status == "FINISHED":
        raise SpecError(f"{run_name!r} finished already (run {earlier.info.run_id}): nothing is left to resume; "
                        "give the new run another name", field="run_name")
    if earlier is not None and earlier.info.status == "RUNNING" and tracking.driver_alive(earlier):
        raise SpecError(f"{run_name!r} is still running (run {earlier.info.run_id}, "
                        f"{tracking.describe_driver(earlier)}): two attempts would share its checkpoints; wait for it "
                        "to end, or stop it and run again to resume it", field="run_name")
    return earlier.info.run_id if earlier is not None else None


def run(
    spec: PipelineSpec, platform: Platform, progress: Progress | None = None, verbose: bool = False,
    run_name: str | None = None, tags: Mapping[str, str] | None = None,
) -> PipelineResult:
    """Run the pipeline on ``platform``. Invalid specs, data or resource requests raise :class:`SpecError`
    before any worker starts or anything is written to MLflow. ``verbose`` streams Ray's worker logs.

    ``run_name`` names the run: its checkpoints are kept under that name, so running the pipeline again under the
    same name after a failure (a killed job, a lost cluster) resumes training from the last checkpoint instead of
    starting over. The new attempt is a new MLflow run with the same name, tagged with the attempt it resumes;
    a name whose run finished is refused. Without it, every run trains from scratch. ``tags`` go on the MLflow run
    (``rayline submit`` finds its job's run by one).

    The result's ``stages`` says where the wall time went; the same numbers are logged to the MLflow run as
    ``stage_<name>_s`` metrics."""
    started = time.perf_counter()
    clock = StageClock()
    progress = progress or _quiet
    try:
        with clock.stage("connect"):
            problems = _model_problems(spec)
            platform.init_ray(verbose)
            problems += placement_problems(spec.train.scaling)
            resumes = _earlier_attempt(spec, platform.tracking_uri, run_name) if run_name else None
        progress("data", f"reading {spec.data.source}")
        prepared = prepare(spec, platform.storage_uri, clock, earlier=problems)
        try:
            with torch.device("meta"):  # checks the model's parameters without allocating its weights
                build_model(spec.model, prepared.preprocessor.num_features, prepared.preprocessor.num_outputs)
        except SpecError:
            prepared.release()
            raise
    except SpecError as err:
        err.file = err.file or spec.file
        raise
    counts = prepared.counts
    progress("data", f"{sum(counts.values())} rows: train {counts['train']} / validation {counts['validation']} "
             f"/ test {counts['test']}; {prepared.preprocessor.num_features} features, "
             f"{'cached in the object store' if prepared.cached else 'streamed from prepared Parquet'}")
    for note in prepared.notes:
        progress("data", note)

    uri = platform.tracking_uri
    mlflow.set_tracking_uri(uri)
    try:  # the prepared Parquet, if any, is deleted whatever happens from here
        with clock.stage("tracking"):
            run_tags = {**(tags or {}), "rayline.pipeline": spec.name, "rayline.spec_file": spec.file or ""}
            if run_name:
                run_tags |= {tracking.RUN_NAME_TAG: run_name, **tracking.driver_tags()}
            if resumes:
                run_tags[RESUMES_TAG] = resumes
            run_id = tracking.start_run(uri, spec.tracking.experiment,
                                        run_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", run_tags)
        if resumes:
            progress("train", f"run {run_name!r} resumes the training of its earlier attempt (run {resumes})")
        train_run = f"{spec.name}-{run_name}" if run_name else f"{spec.name}-{run_id[:12]}"
        try:
            with tracking.heartbeat(uri, run_id) if run_name else nullcontext():
                result = _tracked_run(spec, platform, prepared, run_id, train_run, progress, clock)
        except BaseException:
            tracking.end_run(uri, run_id, "FAILED")
            raise
    finally:
        prepared.release()
    result.wall_s = time.perf_counter() - started
    result.stages = {**clock.seconds, "other": max(0.0, result.wall_s - sum(clock.seconds.values()))}
    tracking.log_metrics(uri, run_id, {f"stage_{name}_s": seconds for name, seconds in result.stages.items()})
    tracking.end_run(uri, run_id)
    return result


def _tracked_run(spec: PipelineSpec, platform: Platform, prepared: PreparedData, run_id: str, train_run: str,
                 progress: Progress, clock: StageClock) -> PipelineResult:
    uri = platform.tracking_uri
    with clock.stage("tracking"):
        tracking.log_params(uri, run_id, tracking.flatten(spec.model_dump(mode="json")))
        tracking.log_text(uri, run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
        if spec.file:
            tracking.log_text(uri, run_id, Path(spec.file).read_text(), f"spec/{Path(spec.file).name}")
        source = prepared.source
        tracking.log_dataset(uri, run_id, source.name, source.uri, source.digest, prepared.input_schema,
                             digest_kind=source.digest_kind)
        dropped = {"rows_dropped_null_label": prepared.dropped_null_labels} if spec.data.drop_null_labels else {}
        tracking.log_metrics(uri, run_id, {**{f"rows_{name}": n for name, n in prepared.counts.items()}, **dropped})
        tags = {CLASSES_MISSING_TAG: "; ".join(prepared.missing_classes),
                HASH_KEY_TAG: prepared.preprocessor.hash_key_fingerprint or ""}
        tracking.set_tags(uri, run_id, {key: value for key, value in tags.items() if value})

    scaling = spec.train.scaling
    progress("train", f"{scaling.workers_text} worker(s), {'GPU' if scaling.use_gpu else 'CPU'}, "
             f"{spec.train.epochs} epochs")
    with epoch_progress(uri, run_id, spec.train.epochs, progress):
        outcome = fit(spec, prepared, platform.storage_uri, run_name=train_run, tracking_uri=uri, run_id=run_id)
    clock.add(outcome.stages)
    with clock.stage("tracking"):
        late = tracking.backfill_epochs(uri, run_id, outcome.history)
    if late:
        progress("train", f"the tracking server was unreachable during training: epochs {', '.join(map(str, late))}"
                 f" were logged afterwards, from the train loop's history")
    if (diverged := outcome.non_finite()) is not None:
        raise TrainingDiverged(f"training diverged: {diverged}; nothing was registered and no alias moved (lower "
                               "train.lr, or check the data)")
    if outcome.resumed_from_epoch is not None:
        progress("train", f"restored from the checkpoint of epoch {outcome.resumed_from_epoch} (a restarted worker "
                 "group, or an earlier attempt of this named run)")
    cost = spec.tracking.cost
    metrics = {**outcome.test_metrics, **tracking.cost_metrics(
        outcome.wall_s, scaling.max_workers, scaling.resources_per_worker, scaling.use_gpu,
        cost.cpu_hour, cost.gpu_hour)}
    progress("train", ", ".join(f"{k}={v:.4f}" for k, v in outcome.test_metrics.items())
             + f" in {outcome.wall_s:.1f} s")

    progress("package", "logging the model (weights + preprocessor + signature)")
    with clock.stage("packaging"):
        tracking.log_metrics(uri, run_id, {**metrics, **outcome.resume_metrics})
        model_uri = package(spec, prepared, outcome.checkpoint, run_id)
    name = spec.tracking.model_name
    with clock.stage("registration"):
        version, decision = register(spec, uri, model_uri, metrics)
        experiment_id = mlflow.get_run(run_id).info.experiment_id
    progress("register", f"{name} version {version}; {decision.reason}")
    return PipelineResult(
        run_id=run_id, experiment_id=experiment_id, model_name=name, model_version=version, metrics=metrics,
        promotion=decision, tracking_uri=uri, resumed_from_epoch=outcome.resumed_from_epoch,
        counts=prepared.counts, wall_s=0.0, stages={}, dropped_null_labels=prepared.dropped_null_labels,
        notes=prepared.notes,
    )
