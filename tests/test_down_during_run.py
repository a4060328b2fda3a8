"""`rayline down` while a pipeline runs: the pipeline fails cleanly and soon, a plain ``ray.init()`` afterwards starts
a fresh local Ray, and `rayline up` afterwards starts a fresh platform from the same state directory with nothing
stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rayline
from conftest import ROOT, run_cli
from rayline.cluster.processes import wait_until

FAIL_WITHIN_S = 120
pytestmark = pytest.mark.slow


def test_down_while_a_pipeline_runs(tmp_path: Path, platform: rayline.Platform) -> None:
    assert run_cli("up", "--num-cpus", "3", state_dir=tmp_path).returncode == 0
    command = [str(Path(sys.executable).with_name("rayline")), "run", "pipelines/digits.yaml", "--state-dir",
               str(tmp_path), "--set", "model.name=fault_models:SlowMLP", "--set", "model.params={step_s: 0.2}",
               "--set", "preprocess=[]", "--set", "train.epochs=50", "--set", "train.scaling.num_workers=1"]
    pipeline = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(pipeline.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(line.startswith("[epoch]") for line in lines) or pipeline.poll() is not None, 240,
                   "the pipeline's first epoch", lambda: "".join(lines))
        assert pipeline.poll() is None, "".join(lines) + pipeline.stderr.read()
        assert run_cli("down", state_dir=tmp_path).returncode == 0
        stopped = time.monotonic()
        returncode = pipeline.wait(timeout=FAIL_WITHIN_S + 60)
        failed_after_s = time.monotonic() - stopped
        stderr = pipeline.stderr.read()
    finally:
        pipeline.kill()
    assert returncode == 1, stderr
    assert failed_after_s < FAIL_WITHIN_S
    assert "Traceback" not in stderr, stderr[-3000:]
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "platform" in error, stderr[-3000:]

    assert not (tmp_path / "platform.json").exists()
    _plain_ray_init_starts_a_fresh_local_ray(platform)
    try:
        assert run_cli("up", "--num-cpus", "2", state_dir=tmp_path).returncode == 0
        status = run_cli("status", state_dir=tmp_path)
        assert status.returncode == 0 and json.loads(status.stdout)["running"]
    finally:
        assert run_cli("down", state_dir=tmp_path).returncode == 0


def _plain_ray_init_starts_a_fresh_local_ray(platform: rayline.Platform) -> None:
    """`rayline down` forgets Ray's pointer to the cluster it stopped, so a notebook's ``ray.init()`` starts a new
    local Ray instead of timing out on the dead GCS."""
    probe = ("import ray, json; context = ray.init(num_cpus=1, include_dashboard=False); "
             "print(json.dumps({'gcs': context.address_info['gcs_address'], "
             "'cpus': ray.cluster_resources().get('CPU')})); ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    started = done.stdout.strip().splitlines()[-1]
    assert '"cpus": 1.0' in started
    assert platform.ray_address.rsplit(":", 1)[1] not in started  # not the session's cluster either
