"""Serve's autoscaling, backpressure and scale-to-zero, driven through rayline service specs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
from sklearn.datasets import load_digits

import rayline
from conftest import SERVE_MODEL, delete_applications
from rayline.cluster.processes import wait_until

pytestmark = pytest.mark.slow  # autoscaling up and down, and from zero, under load


@pytest.fixture(scope="module")
def port(platform: rayline.Platform, small_model: rayline.PipelineResult, serve_port: int) -> Iterator[int]:
    yield serve_port
    delete_applications(platform)


@pytest.fixture(scope="module")
def body() -> dict:
    rows = load_digits(as_frame=True).frame.drop(columns=["target"]).head(2)
    return {"instances": rows.to_dict(orient="records")}


def _deploy(platform: rayline.Platform, port: int, name: str, **fields) -> rayline.Endpoint:
    spec = rayline.ServiceSpec(name=name, route_prefix=f"/{name}", model=f"models:/{SERVE_MODEL}@champion",
                               port=port, resources={"num_cpus": 0.25}, **fields)
    return rayline.serve(spec, platform=platform)


def _replicas(name: str) -> int:
    from ray import serve

    states = serve.status().applications[name].deployments[name].replica_states
    return states.get("RUNNING", 0)


def test_autoscaling_up_under_load_and_back_down(platform: rayline.Platform, port: int, body: dict) -> None:
    endpoint = _deploy(platform, port, "scaling", max_ongoing_requests=8,
                       autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                    "upscale_delay_s": 0.5, "downscale_delay_s": 3},
                       batching={"max_batch_size": 8, "batch_wait_timeout_s": 0.2})
    assert _replicas("scaling") == 1
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                statuses.append(http.post(f"{endpoint.url}/v1/models/{SERVE_MODEL}/predict", json=body).status_code)

    workers = [threading.Thread(target=load) for _ in range(6)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: _replicas("scaling") == 2, 90, "a second replica under load")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert set(statuses) == {200}
    wait_until(lambda: _replicas("scaling") == 1, 90, "scaling back to one replica when idle")


def test_overload_gets_503_not_an_unbounded_queue(platform: rayline.Platform, port: int, body: dict) -> None:
    """One request in the replica and one queued: the rest of a simultaneous burst is refused at once. Each request
    carries 600 rows, so that it occupies the replica while the burst arrives."""
    endpoint = _deploy(platform, port, "bounded", max_ongoing_requests=1, max_queued_requests=1,
                       autoscaling={"min_replicas": 1, "max_replicas": 1}, max_rows=600)
    heavy = {"instances": body["instances"] * 300}
    statuses: list[int] = []
    start = threading.Barrier(16)

    def one() -> None:
        with httpx.Client(timeout=60) as http:
            content = json.dumps(heavy).encode()
            start.wait()
            statuses.append(http.post(f"{endpoint.url}/v1/models/{SERVE_MODEL}/predict", content=content,
                                      headers={"content-type": "application/json"}).status_code)

    burst = [threading.Thread(target=one) for _ in range(16)]
    for request in burst:
        request.start()
    for request in burst:
        request.join()
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 5 and 200 in statuses, statuses
    assert httpx.post(f"{endpoint.url}/v1/models/{SERVE_MODEL}/predict", json=body, timeout=60).status_code == 200


def test_scale_to_zero_cold_start_waits_for_a_replica(platform: rayline.Platform, port: int, body: dict) -> None:
    endpoint = _deploy(platform, port, "coldstart", request_timeout_s=60,
                       autoscaling={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1,
                                    "upscale_delay_s": 0, "downscale_delay_s": 2})
    wait_until(lambda: _replicas("coldstart") == 0, 60, "zero replicas")
    answer = httpx.post(f"{endpoint.url}/v1/models/{SERVE_MODEL}/predict", json=body, timeout=90)
    assert answer.status_code == 200, answer.text
    assert _replicas("coldstart") == 1
    assert pd.DataFrame(answer.json()["predictions"]).shape[0] == 2
