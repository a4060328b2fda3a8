"""A small ASHA sweep on digits against the session platform: trials are real Train jobs, the cluster's CPUs bound
how many run at once, ASHA stops the weak ones early, every trial has a nested MLflow run, and the best trial's model
is registered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rayline
from conftest import PIPELINES, ROOT, run_cli
from rayline.cluster.processes import wait_until

pytestmark = pytest.mark.slow
LEARNING_RATES = [0.01, 0.003, 1e-5, 3e-5]  # two that learn, two that barely move: ASHA has something to stop
EPOCHS = 4


@pytest.fixture(scope="module")
def sweep(platform: rayline.Platform, tmp_path_factory: pytest.TempPathFactory) -> tuple[rayline.SweepResult, str]:
    name = f"t{tmp_path_factory.mktemp('sweep').name[-8:]}"
    spec = tmp_path_factory.mktemp("tuning") / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "digits-sweep-test",
        "pipeline": str(PIPELINES / "digits.yaml"),
        "overrides": {"train.epochs": EPOCHS, "model.params.hidden": 32, "tracking.experiment": name,
                      "tracking.model_name": name, "train.scaling.num_workers": 1},
        "search_space": {"train.lr": f"grid({LEARNING_RATES})"},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "metric": "val_accuracy", "mode": "max", "num_samples": 1,
    }))
    result = rayline.tune(spec, platform=platform)
    return result, name


def test_every_trial_ran_and_asha_stopped_one_early(sweep: tuple[rayline.SweepResult, str]) -> None:
    result, _ = sweep
    trials = result.trials
    assert sorted(trials["config/train.lr"]) == sorted(LEARNING_RATES)
    assert trials["training_iteration"].max() == EPOCHS
    assert (trials["training_iteration"] < EPOCHS).any(), trials[["config/train.lr", "training_iteration"]]


def test_concurrency_never_exceeded_what_the_cluster_holds(sweep: tuple[rayline.SweepResult, str],
                                                           mlflow_client) -> None:
    """From the trials' timelines (a nested run starts with its trial; a finished trial ends with its run, a stopped
    one with its last epoch): a 1-worker trial takes 1.1 CPUs (its actor and its worker), so the 4-CPU test cluster
    runs 3 at once, and the fourth starts when one has ended."""
    result, name = sweep
    spans = []
    for run in mlflow_client.search_runs([mlflow_client.get_experiment_by_name(name).experiment_id],
                                         f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"):
        epochs = mlflow_client.get_metric_history(run.info.run_id, "epoch_s")
        end = run.info.end_time if run.info.status == "FINISHED" else max(m.timestamp for m in epochs)
        spans.append((run.info.start_time, end))
    overlap = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert overlap == 3, spans


def test_nested_runs_and_the_best_model(sweep: tuple[rayline.SweepResult, str], mlflow_client) -> None:
    result, name = sweep
    experiment = mlflow_client.get_experiment_by_name(name)
    children = mlflow_client.search_runs([experiment.experiment_id],
                                         f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert sorted(float(run.data.params["train.lr"]) for run in children) == sorted(LEARNING_RATES)
    assert all(run.data.metrics.get("train_loss") is not None for run in children)
    best = result.best
    assert best.config["train.lr"] in (0.01, 0.003)
    version = best.model_uri.rsplit("/", 1)[1]
    assert mlflow_client.get_model_version(name, version).run_id == best.run_id
    assert best.promotion.promoted  # the first version of a new model takes the alias
    parent = mlflow_client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {"trials.csv", "trials.png"} <= {a.path for a in mlflow_client.list_artifacts(result.parent_run_id)}
    assert not any(run.info.run_name.startswith("_") for run in children)  # the plot's legend hides such labels
    statuses = {run.data.params["train.lr"]: run.info.status for run in children}
    assert set(statuses.values()) <= {"FINISHED", "KILLED"} and "KILLED" in statuses.values()


def test_a_tuned_data_field_is_refused(platform: rayline.Platform, tmp_path: Path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "bad", "pipeline": str(PIPELINES / "digits.yaml"),
        "search_space": {"data.split.seed": "choice([1, 2])"}, "num_samples": 1}))
    with pytest.raises(rayline.SpecError, match="prepared once"):
        rayline.tune(spec, platform=platform)


def _sweep_file(tmp_path: Path, name: str, model: dict, search_space: dict, workers: int = 1, epochs: int = 3,
                overrides: dict | None = None, **fields) -> Path:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": f"faults-{name}", "pipeline": str(PIPELINES / "digits.yaml"),
        "overrides": {"train.epochs": epochs, "model": model, "preprocess": [], "tracking.experiment": name,
                      "tracking.model_name": name, "train.scaling.num_workers": workers, **(overrides or {})},
        "search_space": search_space, "num_samples": 1, **fields}))
    return spec


def test_a_trial_whose_loss_goes_nan_is_stopped_and_marked(platform: rayline.Platform, tmp_path: Path,
                                                           mlflow_client) -> None:
    name = f"t{tmp_path.name[-8:]}"
    spec = _sweep_file(tmp_path, name, {"name": "fault_models:NanFromEpochMLP", "params": {"hidden": [32]}},
                       {"model.params.nan_from_epoch": "grid([1, 99])"})
    result = rayline.tune(spec, platform=platform)
    runs = {int(run.data.params["model.params.nan_from_epoch"]): run for run in mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(name).experiment_id], "tags.`rayline.trial` != ''")}
    assert runs[1].info.status == "KILLED" and runs[1].data.tags["rayline.stopped"] == "train_loss is not finite"
    assert "test_accuracy" not in runs[1].data.metrics  # stopped before its test evaluation
    assert runs[99].info.status == "FINISHED"  # the other trial went on unharmed, and is the one published
    assert result.best.config == {"model.params.nan_from_epoch": 99}


def test_the_best_trial_that_finished_is_published_and_the_skipped_ones_are_listed(
        platform: rayline.Platform, tmp_path: Path, mlflow_client) -> None:
    """The trial with the best validation accuracy fails in its test evaluation; the other one, which learns
    nothing, finishes: it is the one published, and the sweep says why the better one was skipped."""
    name = f"t{tmp_path.name[-8:]}"
    spec = _sweep_file(tmp_path, name, {"name": "fault_models:FailsAtTestMLP", "params": {"hidden": [32]}},
                       {"model.params.fail_at_test": "grid([1, 0])"}, epochs=2,
                       overrides={"train.max_failures": 0}, metric="val_accuracy", mode="max")
    result = rayline.tune(spec, platform=platform)
    assert result.best.config == {"model.params.fail_at_test": 0}
    runs = {run.data.params["model.params.fail_at_test"]: run for run in mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(name).experiment_id], "tags.`rayline.trial` != ''")}
    failing, finishing = runs["1"], runs["0"]
    assert failing.data.metrics["val_accuracy"] > finishing.data.metrics["val_accuracy"]
    assert result.best.run_id == finishing.info.run_id
    assert result.skipped == {failing.info.run_name: "errored before its test evaluation"}, result.skipped
    assert mlflow_client.get_model_version(name, "1").run_id == finishing.info.run_id
    parent = mlflow_client.get_run(result.parent_run_id)
    assert parent.data.tags["rayline.skipped_trials"] == f"{failing.info.run_name}: errored before its test evaluation"


def test_a_trial_whose_worker_crashes_restores_from_its_checkpoint(platform: rayline.Platform, tmp_path: Path,
                                                                   mlflow_client) -> None:
    name = f"t{tmp_path.name[-8:]}"
    model = {"name": "fault_models:FaultOnceMLP", "params": {
        "marker": str(tmp_path / "fault"), "at_epoch": 2, "fault": "kill", "storage": platform.storage_uri,
        "hidden": [32]}}
    spec = _sweep_file(tmp_path, name, model, {"train.lr": "grid([0.01, 0.003])"}, workers=2,
                       max_concurrent_trials=1)
    rayline.tune(spec, platform=platform)
    assert (tmp_path / "fault").read_text().startswith("kill ")  # one trial's rank 1 really died
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(name).experiment_id],
                                     "tags.`rayline.trial` != ''")
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    untouched, restored = sorted(run.data.metrics.get("resumed_from_epoch", -1) for run in runs)
    assert untouched == -1 and restored >= 0  # from a checkpoint, not scratch (exact epoch: test_faults_training)


def test_pbt_copies_the_better_trials_checkpoint_into_the_weaker_one(platform: rayline.Platform, tmp_path: Path,
                                                                     mlflow_client) -> None:
    """Two trials, one learning and one barely moving: at a perturbation the weaker trial goes on from the better
    one's checkpoint with its config (lr from the grid, weight decay resampled), in its own nested run. The trials
    train side by side (Ray's PBT compares running trials), with epochs of about a second; Ray's PBT records a
    trial's score only at its perturbations, so a trial that gets there first may find no one to copy: it gets
    four chances."""
    name = f"t{tmp_path.name[-8:]}"
    model = {"name": "fault_models:TogetherMLP",
             "params": {"hidden": [32], "barrier": str(tmp_path / "barrier"), "parties": 2, "step_s": 0.03}}
    spec = _sweep_file(tmp_path, name, model,
                       {"train.lr": "grid([0.01, 1e-5])", "train.weight_decay": "uniform(0, 1e-6)"},
                       scheduler={"type": "pbt", "perturbation_interval": 2}, seed=0, epochs=10)
    result = rayline.tune(spec, platform=platform)
    runs = {float(run.data.params["train.lr"]): run for run in mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(name).experiment_id], "tags.`rayline.trial` != ''")}
    assert sorted(runs) == [1e-5, 0.01] and all(run.info.status == "FINISHED" for run in runs.values())
    weak, strong = runs[1e-5], runs[0.01]
    assert "rayline.started_from" in weak.data.tags, weak.data.tags  # it went on from a Tune checkpoint...
    assert strong.data.tags["rayline.trial"] in weak.data.tags["rayline.started_from"]  # ...the strong trial's
    assert json.loads(weak.data.tags["rayline.config"])["train.lr"] == 0.01  # with the strong trial's lr
    assert weak.data.metrics["test_accuracy"] > 0.5  # far beyond what lr 1e-5 reaches in 10 epochs
    assert (result.trials["training_iteration"] == 10).all()


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(platform: rayline.Platform, state_dir: Path,
                                                                   tmp_path: Path, mlflow_client) -> None:
    """The driver is killed once Ray Tune's saved state records a trial as finished; ``--resume`` runs the rest,
    and the finished trial's nested run is untouched (same run, same end time: it did not run again)."""
    name = f"t{tmp_path.name[-8:]}"
    rates = LEARNING_RATES[:2]  # one trial finishes before the kill, the other runs after the resume
    spec = _sweep_file(tmp_path, name, {"name": "mlp", "params": {"hidden": [32]}},
                       {"train.lr": f"grid({rates})"}, max_concurrent_trials=1)
    command = [str(Path(sys.executable).with_name("rayline")), "tune", str(spec), "--state-dir", str(state_dir)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)

    def children(status: str | None = None) -> list:
        experiment = mlflow_client.get_experiment_by_name(name)
        runs = mlflow_client.search_runs([experiment.experiment_id], "tags.`rayline.trial` != ''") if experiment else []
        return [run for run in runs if status is None or run.info.status == status]

    def terminated_in_tune_state() -> set[str]:
        """Trials Ray Tune's saved experiment state records as finished: what a resume keeps."""
        experiment = mlflow_client.get_experiment_by_name(name)
        parents = mlflow_client.search_runs([experiment.experiment_id], "tags.`rayline.sweep` != ''") \
            if experiment else []
        states = sorted(Path(parents[0].data.tags["rayline.tune_path"]).glob("experiment_state-*.json")) \
            if parents else []
        try:
            trials = [json.loads(state) for state, _ in json.loads(states[-1].read_text())["trial_data"]]
        except (IndexError, OSError, ValueError):  # not written yet, or being written
            return set()
        return {trial["trial_id"] for trial in trials if trial["status"] == "TERMINATED"}

    finished_ids: set[str] = set()
    try:
        wait_until(lambda: bool(finished_ids.update(terminated_in_tune_state()) or finished_ids)
                   or driver.poll() is not None, 300, "a finished trial in Tune's state")
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
    finally:
        driver.kill()
        driver.wait()
    finished = {run.info.run_id: run.info.end_time for run in children("FINISHED")
                if run.data.tags["rayline.trial"] in finished_ids}
    assert len(finished) == 1

    done = run_cli("tune", str(spec), "--resume", state_dir=state_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = children()
    assert sorted(float(run.data.params["train.lr"]) for run in runs) == sorted(rates)  # one run each
    assert all(run.info.status == "FINISHED" for run in runs)
    assert {run.info.run_id: run.info.end_time for run in runs if run.info.run_id in finished} == finished
    for run_id in finished:  # one epoch each: trained once, not again after the resume
        assert len(mlflow_client.get_metric_history(run_id, "epoch_s")) == 3


def test_a_sweep_submitted_as_a_ray_job_uses_the_platform(platform: rayline.Platform, tmp_path: Path,
                                                          mlflow_client) -> None:
    """``ray job submit --working-dir DIR -- rayline tune sweep.yaml``: the job's driver finds the platform's Ray,
    MLflow and storage in the cluster's environment, and its sweep (of streamed splits) is tracked like any other."""
    name = f"t{tmp_path.name[-8:]}"
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    shutil.copy(PIPELINES / "digits.yaml", job_dir / "digits.yaml")
    (job_dir / "sweep.yaml").write_text(yaml.safe_dump({
        "name": f"job-{name}", "pipeline": "digits.yaml",  # relative: resolved inside the job's working dir
        "overrides": {"train.epochs": 2, "model.params.hidden": 32, "tracking.experiment": name,
                      "tracking.model_name": name, "train.scaling.num_workers": 1, "data.cache": False},
        "search_space": {"train.lr": "grid([0.01, 0.003])"}, "num_samples": 1}))
    bin_dir = Path(sys.executable).parent
    submitted = subprocess.run(
        [str(bin_dir / "ray"), "job", "submit", "--address", platform.dashboard_url, "--working-dir", str(job_dir),
         "--", str(bin_dir / "rayline"), "tune", "sweep.yaml"],
        env={**os.environ, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-2000:]
    assert "succeeded" in submitted.stdout, submitted.stdout[-3000:]
    # streamed splits: a CPU stays free for Ray Data's tasks, so 2 trials of 1.1 CPUs fit in the 4-CPU cluster
    assert "2 trial(s), at most 2 at once" in submitted.stdout, submitted.stdout[-3000:]
    experiment = mlflow_client.get_experiment_by_name(name).experiment_id
    [parent] = mlflow_client.search_runs([experiment], f"tags.`rayline.sweep` = 'job-{name}'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rayline.tune_path"].startswith(platform.storage_uri)  # not the job's working dir
    children = mlflow_client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(run.info.status for run in children) == ["FINISHED", "FINISHED"]
    assert mlflow_client.get_registered_model(name).latest_versions  # the best trial was registered


def test_a_trial_that_can_never_be_placed_is_refused_before_the_sweep(platform: rayline.Platform,
                                                                      tmp_path: Path, mlflow_client) -> None:
    name = f"t{tmp_path.name[-8:]}"
    spec = _sweep_file(tmp_path, name, {"name": "mlp"}, {"train.scaling.num_workers": "choice([1, 64])"})
    with pytest.raises(rayline.SpecError, match="never fit") as caught:
        rayline.tune(spec, platform=platform)
    assert caught.value.field == "train.scaling.num_workers"
    assert mlflow_client.get_experiment_by_name(name) is None  # nothing started, nothing logged
