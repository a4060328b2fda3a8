"""Whether the process running an MLflow run is still alive: a named pipeline run tags the run with its driver
(host, pid, process start time) and refreshes a heartbeat tag while it runs. A run left ``RUNNING`` by a driver
that was killed (``ray job stop``, a lost node) is then told apart from one still training."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from mlflow import MlflowClient
from mlflow.entities import Run

from rayline.periodic import every

DRIVER_TAG = "rayline.driver"
HEARTBEAT_TAG = "rayline.heartbeat"
HEARTBEAT_S = 10.0
MISSED_BEATS = 3  # a driver on another host is taken as dead after this many heartbeats were missed


def driver_tags() -> dict[str, str]:
    """Tags naming this process (host, pid, start time), and a first heartbeat."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}
    return {DRIVER_TAG: json.dumps(me), HEARTBEAT_TAG: f"{time.time():.0f}"}


@contextmanager
def heartbeat(tracking_uri: str, run_id: str, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Refresh the run's heartbeat tag every ``every_s`` seconds for the block (a tracking server that does not
    answer misses a beat; nothing fails)."""
    client = MlflowClient(tracking_uri)
    with every(every_s, lambda: client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}"), name="rayline-heartbeat"):
        yield


def driver_alive(run: Run) -> bool:
    """Whether the driver that runs ``run`` is alive: on this host, its process (same pid and start time) exists;
    elsewhere, its heartbeat is recent. A run without these tags has no driver known to be alive."""
    tags = run.data.tags
    try:
        driver = json.loads(tags[DRIVER_TAG])
    except (KeyError, ValueError):
        return False
    if driver.get("host") == socket.gethostname():
        try:
            return abs(psutil.Process(int(driver["pid"])).create_time() - float(driver["started"])) < 1.0
        except (psutil.NoSuchProcess, KeyError, ValueError):
            return False
    return time.time() - float(tags.get(HEARTBEAT_TAG, "0")) < MISSED_BEATS * HEARTBEAT_S


def describe_driver(run: Run) -> str:
    """``pid 123 on host`` for the driver ``run`` is tagged with, or ``an unknown driver``."""
    try:
        driver = json.loads(run.data.tags[DRIVER_TAG])
        return f"pid {driver['pid']} on {driver['host']}"
    except (KeyError, ValueError, TypeError):
        return "an unknown driver"
