"""``rayline submit``: a pipeline run as a Ray job on the platform's ``ray start --head`` cluster through Ray's
JobSubmissionClient, with token authentication on. Its log is streamed, it ends with the job's status and the MLflow
run, only what the job needs is uploaded, and a re-submission under the same run name resumes from the last
checkpoint. Bad input (an unreachable address, a wrong token, an oversized working directory, an invalid spec) is
refused before any job exists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

import rayline
from conftest import PIPELINES
from rayline.cluster import jobs
from rayline.cluster.processes import free_port
from rayline.tracking import SUBMISSION_TAG, find_tagged_run

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TESTS = Path(__file__).parent
CHECKPOINT_DEADLINE_S = 240


def _job_dir(tmp_path: Path) -> Path:
    """A working directory as a user's repository holds it: the spec, a user model module, and the things a job
    never needs (a virtual environment, the embedded platform's state, caches)."""
    root = tmp_path / "repo"
    (root / "pipelines").mkdir(parents=True)
    shutil.copy(PIPELINES / "digits.yaml", root / "pipelines" / "digits.yaml")
    shutil.copy(TESTS / "fault_models.py", root / "fault_models.py")
    for junk in (".venv/lib/big.bin", ".rayline/storage/x.bin", ".git/objects/pack.bin", "mlruns/0/meta.yaml",
                 "__pycache__/fault_models.cpython-311.pyc"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"x" * 1000)
    return root


def _cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``rayline submit ARGS`` from ``root``, the job's working directory, as a user runs it from a repository."""
    return subprocess.run([str(BIN / "rayline"), "submit", *args, "--working-dir", "."], cwd=root,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _job_ids(platform: rayline.Platform) -> set[str]:
    return {job.submission_id for job in JobSubmissionClient(platform.dashboard_url).list_jobs()}


def test_the_upload_leaves_out_state_environments_and_caches(tmp_path: Path) -> None:
    root = _job_dir(tmp_path)
    (root / "notes.md").write_text("kept")
    (root / "scratch").mkdir()
    (root / "scratch" / "tmp.bin").write_bytes(b"x")
    package = jobs.pack(root, tmp_path, excludes=["scratch"])
    names = set(zipfile.ZipFile(package).namelist())
    assert {"pipelines/digits.yaml", "fault_models.py", "notes.md"} <= names
    assert not [n for n in names if n.split("/")[0] in (".venv", ".rayline", ".git", "mlruns", "__pycache__",
                                                        "scratch")], sorted(names)


def test_a_submitted_pipeline_streams_its_log_and_ends_with_its_mlflow_run(platform: rayline.Platform,
                                                                           tmp_path: Path, mlflow_client) -> None:
    name = f"s{tmp_path.name[-8:]}"
    root = _job_dir(tmp_path)
    submitted = _cli(root, "pipelines/digits.yaml", "--address", platform.dashboard_url,
                     "--command", str(BIN / "rayline"), "--set", "train.epochs=2", "--set",
                     f"tracking.experiment={name}", "--set", f"tracking.model_name={name}")
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-3000:]
    # the job's own log, streamed: progress lines of the run on the cluster, then the submitter's verdict
    assert "[job] submitted rayline-digits-run-" in output and "[register]" in output, output[-3000:]
    assert "SUCCEEDED" in output
    job_id = re.search(r"\[job\] submitted (\S+)", output).group(1)
    found = find_tagged_run(platform.tracking_uri, name, SUBMISSION_TAG, job_id)  # the run knows its job
    assert found is not None and found.model_uri == f"models:/{name}/1", output[-3000:]
    run = mlflow_client.get_run(found.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] > 0.8
    assert re.search(rf"run id\s+{found.run_id}", submitted.stdout)  # and the submitter says which it is


def _checkpointed(storage: Path, train_run: str) -> bool:
    """Whether Ray Train has registered a checkpoint of run ``train_run`` in storage."""
    try:
        snapshot = json.loads((storage / "train" / train_run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False  # not written yet, or being written
    return bool(snapshot.get("checkpoint_results"))


def _stop_once_checkpointed(platform: rayline.Platform, train_run: str, stopped: list[str]):
    """An ``on_submitted`` callback: from a thread, once the run has a checkpoint, stop the job (as a user would
    with ``ray job stop``, or as a lost driver node would end it)."""

    def stop(job_id: str) -> None:
        until = time.monotonic() + CHECKPOINT_DEADLINE_S
        while not _checkpointed(Path(platform.storage_uri), train_run) and time.monotonic() < until:
            time.sleep(0.2)
        JobSubmissionClient(platform.dashboard_url).stop_job(job_id)
        stopped.append(job_id)

    return lambda job_id: threading.Thread(target=stop, args=(job_id,), daemon=True).start()


def test_resubmitting_under_the_same_run_name_resumes_from_the_last_checkpoint(
        platform: rayline.Platform, state_dir: Path, tmp_path: Path, mlflow_client) -> None:
    name = f"r{tmp_path.name[-8:]}"
    root = _job_dir(tmp_path)
    overrides = ["train.epochs=4", "train.checkpoint_every=1", "train.scaling.num_workers=1",
                 "model.name=fault_models:SlowMLP", "model.params={step_s: 0.15, hidden: [32]}",
                 f"tracking.experiment={name}", f"tracking.model_name={name}"]
    stopped: list[str] = []
    first = rayline.submit(root / "pipelines" / "digits.yaml", overrides, address=platform.dashboard_url,
                           working_dir=root, run_name="nightly", command=str(BIN / "rayline"), state_dir=state_dir,
                           on_submitted=_stop_once_checkpointed(platform, "digits-nightly", stopped))
    assert stopped == [first.job_id] and first.status == "STOPPED", first.logs[-3000:]
    assert first.run is not None and first.run.status != "FINISHED" and first.run.model_uri is None

    second = rayline.submit(root / "pipelines" / "digits.yaml", overrides, address=platform.dashboard_url,
                            working_dir=root, run_name="nightly", command=str(BIN / "rayline"), state_dir=state_dir)
    assert second.succeeded, second.logs[-3000:]
    assert "resumes the training of its earlier attempt" in second.logs
    run = mlflow_client.get_run(second.run.run_id)
    experiment = run.info.experiment_id
    [earlier] = [r for r in mlflow_client.search_runs([experiment]) if r.info.run_id != run.info.run_id]
    assert run.info.run_name == earlier.info.run_name == "nightly"
    assert run.data.tags["rayline.resumes_run"] == earlier.info.run_id
    assert run.data.metrics["resumed_from_epoch"] >= 0  # it started from a checkpoint, not from scratch
    # every epoch is in the new run's curve: those of the earlier attempt come from the checkpoint's history
    history = mlflow_client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]

    third = _cli(root, "pipelines/digits.yaml", "--address", platform.dashboard_url, "--command",
                 str(BIN / "rayline"), "--run-name", "nightly", *(a for o in overrides for a in ("--set", o)))
    assert third.returncode == 1 and "'nightly' finished already" in third.stdout, third.stdout[-2000:]


def test_a_submitted_run_whose_loss_is_not_finite_fails_and_registers_nothing(platform: rayline.Platform,
                                                                              tmp_path: Path, mlflow_client) -> None:
    name = f"n{tmp_path.name[-8:]}"
    root = _job_dir(tmp_path)
    done = _cli(root, "pipelines/digits.yaml", "--address", platform.dashboard_url, "--command", str(BIN / "rayline"),
                *(a for s in ("train.epochs=2", "train.scaling.num_workers=1", "preprocess=[]",
                              "model={name: 'fault_models:NanFromEpochMLP', params: {nan_from_epoch: 0}}",
                              f"tracking.experiment={name}", f"tracking.model_name={name}") for a in ("--set", s)))
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "FAILED" in output, output[-3000:]
    assert "error: training diverged: train_loss is nan from epoch 0" in output, output[-3000:]
    [run] = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(name).experiment_id])
    assert run.info.status == "FAILED"
    assert mlflow_client.search_registered_models(f"name = '{name}'") == []


@pytest.mark.parametrize("case", ["unreachable", "wrong token", "oversized", "invalid spec", "outside"])
def test_bad_submissions_are_refused_before_any_job_exists(case: str, platform: rayline.Platform,
                                                           tmp_path: Path) -> None:
    root = _job_dir(tmp_path)
    spec, address, env = "pipelines/digits.yaml", platform.dashboard_url, {}
    args: list[str] = []
    expected = {
        "unreachable": "no Ray cluster answers there",
        "wrong token": "refused this client's token",
        "oversized": "over Ray's upload limit of 1 MiB",
        "invalid spec": "train.epochs",
        "outside": "lies outside it",
    }[case]
    if case == "unreachable":
        address = f"http://127.0.0.1:{free_port()}"
    elif case == "wrong token":
        env = {"RAY_AUTH_TOKEN": "0" * 32, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    elif case == "oversized":
        (root / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        env = {"RAY_max_grpc_message_size": str(1024 * 1024)}
    elif case == "invalid spec":
        args = ["--set", "train.epochs=-1"]
    else:
        spec = str(PIPELINES / "digits.yaml")
    before = _job_ids(platform)
    refused = _cli(root, spec, "--address", address, *args, env=env)
    assert refused.returncode in (1, 2) and expected in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert _job_ids(platform) == before
