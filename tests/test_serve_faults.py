"""Serving under faults: a model that cannot be loaded, a hot swap to a broken version, a replica killed under load."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import mlflow
import pandas as pd
import pytest
from sklearn.datasets import load_digits

import rayline
from conftest import delete_applications
from rayline.cluster.processes import wait_until
from rayline.packaged.layout import WEIGHTS, package_dir
from rayline.serving import model_watch
from rayline.serving.model_watch import RETRY_FAILED_AFTER_S, AliasWatcher, ModelLoadError
from rayline.spec import ModelUri

REPLACEMENT_BOUND_S = 60.0  # a killed lone replica is replaced, and requests succeed again, within this


# --- the alias watcher on its own: no Ray, no MLflow ---------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A stand-in registry: ``alias`` is the version the alias names, ``broken`` the versions that fail to load,
    ``loads`` every load attempt."""
    state = SimpleNamespace(alias="1", broken={"2"}, loads=[])

    def load(tracking_uri: str, uri: ModelUri, max_rows: int) -> SimpleNamespace:
        state.loads.append(uri.version)
        if uri.version in state.broken:
            raise FileNotFoundError(f"/artifacts/model/{WEIGHTS} does not exist")
        return SimpleNamespace(uri=uri)

    monkeypatch.setattr(model_watch, "resolve_version", lambda client, uri: ModelUri.of_version(uri.name, state.alias))
    monkeypatch.setattr(model_watch, "load_version", load)
    return state


def _watcher(heard: list, clock: Callable[[], float] = time.time) -> AliasWatcher:
    return AliasWatcher(ModelUri.parse("models:/m@live"), "http://127.0.0.1:9", 10, 0,
                        lambda uri, failure: heard.append(failure), clock=clock)


def test_a_failed_swap_is_recorded_and_not_retried_in_a_loop(registry: SimpleNamespace) -> None:
    now = [1000.0]
    heard: list = []
    watcher = _watcher(heard, lambda: now[0])
    assert watcher.current.uri.version == "1" and watcher.failure is None
    registry.alias = "2"
    watcher.check()
    failure = watcher.failure
    assert watcher.current.uri.version == "1"  # the old version keeps answering
    assert failure is not None and failure.version == "2" and failure.at == now[0]
    assert "models:/m/2 cannot be loaded" in failure.error and WEIGHTS in failure.error
    assert heard == [failure]
    for _ in range(5):
        watcher.check()
    assert registry.loads == ["1", "2"], "a failed version is not tried again before the backoff"
    now[0] += RETRY_FAILED_AFTER_S
    watcher.check()
    assert registry.loads == ["1", "2", "2"] and watcher.failure.at == now[0]
    registry.alias = "3"
    watcher.check()
    assert watcher.current.uri.version == "3" and watcher.failure is None and heard[-1] is None


def test_moving_the_alias_back_clears_a_failed_swap(registry: SimpleNamespace) -> None:
    heard: list = []
    watcher = _watcher(heard)
    registry.alias = "2"
    watcher.check()
    assert watcher.failure is not None
    registry.alias = "1"
    watcher.check()
    assert watcher.failure is None and heard == [heard[0], None] and registry.loads == ["1", "2"]


def test_a_first_load_that_fails_names_the_version(registry: SimpleNamespace) -> None:
    registry.alias = "2"
    with pytest.raises(ModelLoadError, match=f"models:/m/2 cannot be loaded: .*{WEIGHTS}"):
        _watcher([])


# --- on the platform ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults(platform: rayline.Platform, small_model: rayline.PipelineResult, mlflow_client,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A registered model of its own with three copies of the small model: ``good`` and ``fixed`` load,
    ``broken`` lacks its weights file. Serve applications are removed afterwards."""
    name = f"faults-{uuid.uuid4().hex[:6]}"
    mlflow_client.create_registered_model(name)
    source = tmp_path_factory.mktemp("source")
    downloaded = Path(mlflow.artifacts.download_artifacts(small_model.model_uri, dst_path=str(source)))

    def register(drop: str | None = None) -> str:
        if drop:
            (package_dir(downloaded) / drop).unlink()
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(downloaded), "model")
        return mlflow_client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version

    good, fixed = register(), register()
    yield SimpleNamespace(name=name, good=good, fixed=fixed, broken=register(drop=WEIGHTS))
    delete_applications(platform)


@pytest.fixture(scope="module")
def body() -> dict:
    rows = load_digits(as_frame=True).frame.drop(columns=["target"]).head(2)
    return {"instances": rows.to_dict(orient="records")}


def _serve(platform: rayline.Platform, port: int, name: str, model: str, **fields) -> rayline.Endpoint:
    spec = rayline.ServiceSpec(name=name, route_prefix=f"/{name}", model=model, port=port,
                               resources={"num_cpus": 0.25}, **fields)
    return rayline.serve(spec, platform=platform)


@pytest.mark.slow
def test_a_model_that_cannot_be_loaded_fails_the_deploy_with_its_reason(
        platform: rayline.Platform, faults: SimpleNamespace, serve_port: int, body: dict) -> None:
    """Serve gives up after a few constructor failures: `rayline.serve` raises in bounded time, naming the version
    and the missing file; the application is reported as failed, and its route answers at once."""
    started = time.monotonic()
    with pytest.raises(rayline.RaylineError) as failed:
        _serve(platform, serve_port, "unloadable", f"models:/{faults.name}/{faults.broken}", deploy_timeout_s=300,
               autoscaling={"min_replicas": 1, "max_replicas": 1})
    took = time.monotonic() - started
    print(f"deploy of a version without weights failed after {took:.0f} s: {failed.value}")
    message = str(failed.value)
    assert f"models:/{faults.name}/{faults.broken} cannot be loaded" in message and WEIGHTS in message, message
    assert "failed to deploy" in message
    status = rayline.serve_status(platform=platform)
    assert status["unloadable"]["status"] == "DEPLOY_FAILED" and WEIGHTS in status["unloadable"]["reason"]
    started = time.monotonic()
    answer = httpx.post(f"http://127.0.0.1:{serve_port}/unloadable/v1/models/{faults.name}/predict", json=body,
                        timeout=30)
    print(f"a request to it: {answer.status_code} after {time.monotonic() - started:.2f} s: {answer.text[:200]}")
    assert answer.status_code == 503 and "failed to deploy" in answer.text and time.monotonic() - started < 5


@pytest.mark.slow
def test_a_hot_swap_to_a_version_that_fails_to_load(platform: rayline.Platform, faults: SimpleNamespace,
                                                     serve_port: int, body: dict, mlflow_client) -> None:
    """The old version keeps answering; /readyz and the metrics say the swap failed, until a good version
    replaces it."""
    import ray

    mlflow_client.set_registered_model_alias(faults.name, "live", faults.good)
    endpoint = _serve(platform, serve_port, "swapping", f"models:/{faults.name}@live", reload_interval_s=0.5,
                      autoscaling={"min_replicas": 1, "max_replicas": 1})
    predict = f"/v1/models/{faults.name}/predict"
    with httpx.Client(base_url=endpoint.url, timeout=60) as http:
        assert http.get("/readyz").json()["version"] == faults.good
        mlflow_client.set_registered_model_alias(faults.name, "live", faults.broken)
        wait_until(lambda: "swap_failed" in http.get("/readyz").json(), 60, "/readyz to report the failed swap")
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["version"] == faults.good, ready.text
        failed = ready.json()["swap_failed"]
        assert failed["version"] == faults.broken and WEIGHTS in failed["error"], failed
        answer = http.post(predict, json=body)
        assert answer.status_code == 200 and answer.json()["model_version"] == faults.good
        port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])

        def metric(name: str, *needles: str) -> list[str]:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            return [line for line in text.splitlines() if line.startswith(f"ray_{name}")
                    and 'application="swapping"' in line and all(n in line for n in needles)]

        wait_until(lambda: metric("rayline_model_swap_failures", f'version="{faults.broken}"')
                   and any(line.endswith(" 1.0") for line in metric("rayline_model_swap_failing", 'alias="live"')),
                   90, "the failed swap at Ray's metrics endpoint")
        mlflow_client.set_registered_model_alias(faults.name, "live", faults.fixed)
        wait_until(lambda: http.get("/readyz").json()["version"] == faults.fixed, 60, "the swap to a good version")
        assert "swap_failed" not in http.get("/readyz").json()
        assert http.post(predict, json=body).json()["model_version"] == faults.fixed
        wait_until(lambda: any(line.endswith(" 0.0") for line in metric("rayline_model_swap_failing",
                                                                           'alias="live"')),
                   90, "the cleared failure at Ray's metrics endpoint")


def _replica_pids(platform: rayline.Platform, name: str) -> list[int]:
    from ray.util.state import list_actors

    return [actor.pid for actor in list_actors(address=platform.dashboard_url,
                                               filters=[("class_name", "=", f"ServeReplica:{name}:{name}"),
                                                        ("state", "=", "ALIVE")])]


def _kill_a_replica_under_load(platform: rayline.Platform, port: int, faults: SimpleNamespace, rows: pd.DataFrame,
                               replicas: int) -> tuple[pd.DataFrame, float]:
    """Serve ``replicas`` replicas, load them from 4 SDK clients, SIGKILL one replica, and keep the load on until
    Serve has replaced it and 40 more requests have succeeded. Returns every request (``started``, ``ended``,
    ``ok``, ``error``; monotonic seconds) and when the kill happened."""
    name = f"killed{replicas}"
    endpoint = _serve(platform, port, name, f"models:/{faults.name}/{faults.good}",
                      autoscaling={"min_replicas": replicas, "max_replicas": replicas})
    wait_until(lambda: len(_replica_pids(platform, name)) == replicas, 60, f"{replicas} live replicas")
    log: list[tuple[float, float, bool, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                endpoint.predict(rows)
                log.append((started, time.monotonic(), True, ""))
            except Exception as err:  # every failure is counted, whatever it is
                log.append((started, time.monotonic(), False, f"{type(err).__name__}: {err}"[:200]))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: sum(entry[2] for entry in log) >= 20, 60, "answers before the kill")
        victim = _replica_pids(platform, name)[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(set(_replica_pids(platform, name)) - {victim}) == replicas, REPLACEMENT_BOUND_S,
                   "a replacement replica")
        after = len(log)
        wait_until(lambda: sum(entry[2] for entry in log[after:]) >= 40, 60, "answers after the replacement")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        rayline.shutdown(name, platform=platform)
    return pd.DataFrame(log, columns=["started", "ended", "ok", "error"]), killed_at


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return load_digits(as_frame=True).frame.drop(columns=["target"]).head(2)


@pytest.mark.slow
def test_a_killed_replica_of_two_fails_no_request(platform: rayline.Platform, faults: SimpleNamespace,
                                                  serve_port: int, rows: pd.DataFrame, record_property) -> None:
    """The SDK's client retries idempotent predictions that found a dead replica; the other replica answers."""
    log, _ = _kill_a_replica_under_load(platform, serve_port, faults, rows, replicas=2)
    failed = log[~log.ok]
    record_property("failed_requests", len(failed))
    print(f"2 replicas, one killed: {len(failed)} of {len(log)} requests failed")
    assert failed.empty, failed.error.value_counts().to_dict()


@pytest.mark.slow
def test_a_killed_lone_replica_fails_requests_only_until_its_replacement(
        platform: rayline.Platform, faults: SimpleNamespace, serve_port: int, rows: pd.DataFrame,
        record_property) -> None:
    """The SDK's retries (15 s) may bridge the outage; whatever they do not bridge fails, but only until the
    replacement answers, within REPLACEMENT_BOUND_S of the kill."""
    log, killed_at = _kill_a_replica_under_load(platform, serve_port, faults, rows, replicas=1)
    failed = log[~log.ok]
    record_property("failed_requests", len(failed))
    last = failed.ended.max() - killed_at if len(failed) else 0.0
    longest = (log.ended - log.started).max()
    record_property("longest_request_s", round(longest, 1))
    print(f"1 replica, killed: {len(failed)} of {len(log)} requests failed, the last {last:.1f} s after the kill; "
          f"the longest request took {longest:.1f} s (bound {REPLACEMENT_BOUND_S:.0f} s): "
          f"{failed.error.value_counts().to_dict()}")
    assert last < REPLACEMENT_BOUND_S and longest < REPLACEMENT_BOUND_S
    assert log[log.started > killed_at].ok.iloc[-40:].all()
