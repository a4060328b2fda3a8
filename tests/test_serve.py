"""The registered model behind real HTTP on Ray Serve: protocols, parity, bad input, API keys."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator

import httpx
import mlflow
import pandas as pd
import pytest
from sklearn.datasets import load_digits

import rayline
from conftest import PIPELINES, delete_applications, run_cli
from conftest import SERVE_MODEL as MODEL
from rayline.cluster.processes import wait_until

API_KEY = "s3cret-test-key"


@pytest.fixture(scope="module")
def registered(small_model: rayline.PipelineResult) -> rayline.PipelineResult:
    return small_model


@pytest.fixture(scope="module")
def endpoints(platform: rayline.Platform, registered: rayline.PipelineResult, serve_port: int,
              monkeypatch_module: pytest.MonkeyPatch) -> Iterator[dict[str, rayline.Endpoint]]:
    """Two applications on one Serve instance: open at /, API-key protected at /secure."""
    port = serve_port
    monkeypatch_module.setenv("SERVE_TEST_KEYS", f"other-key,{API_KEY}")
    common = {"model": f"models:/{MODEL}@champion", "port": port, "max_rows": 100, "max_body_bytes": 200_000,
              "autoscaling": {"min_replicas": 1, "max_replicas": 1}, "resources": {"num_cpus": 0.5},
              "reload_interval_s": 1.0}
    open_spec = rayline.ServiceSpec(name="open", route_prefix="/", **common)
    secure_spec = rayline.ServiceSpec(name="secure", route_prefix="/secure",
                                      auth={"api_keys_env": "SERVE_TEST_KEYS"}, **common)
    where = {"ray_address": platform.ray_address, "tracking_uri": platform.tracking_uri}
    yield {"open": rayline.serve(open_spec, **where), "secure": rayline.serve(secure_spec, **where)}
    delete_applications(platform)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    frame = load_digits(as_frame=True).frame
    return frame.drop(columns=["target"]).sample(20, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module")
def offline(registered: rayline.PipelineResult, rows: pd.DataFrame) -> list[int]:
    """The logged model's predictions, loaded with MLflow in this process."""
    return [int(p) for p in mlflow.pyfunc.load_model(registered.model_uri).predict(rows)["prediction"]]


@pytest.fixture
def client(endpoints: dict[str, rayline.Endpoint]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=endpoints["open"].url, timeout=60) as http:
        yield http


def test_v1_predict_matches_offline_and_names_the_version(client: httpx.Client, rows: pd.DataFrame,
                                                          offline: list[int], registered) -> None:
    for body in ({"instances": rows.to_dict(orient="records")}, {"inputs": rows.to_dict(orient="list")},
                 {"instances": rows.values.tolist()}):
        answer = client.post(f"/v1/models/{MODEL}/predict", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == registered.model_version
        assert [p["prediction"] for p in answer.json()["predictions"]] == offline


def test_mlflow_scoring_formats(client: httpx.Client, rows: pd.DataFrame, offline: list[int]) -> None:
    bodies = [
        {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}},
        {"dataframe_records": rows.to_dict(orient="records")},
        {"instances": rows.to_dict(orient="records")},
        {"inputs": rows.to_dict(orient="list")},
    ]
    for body in bodies:
        answer = client.post("/invocations", json=body)
        assert answer.status_code == 200, answer.text
        assert [p["prediction"] for p in answer.json()["predictions"]] == offline


def test_open_inference_protocol_v2(client: httpx.Client, rows: pd.DataFrame, offline: list[int]) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    metadata = client.get(f"/v2/models/{MODEL}").json()
    assert [i["name"] for i in metadata["inputs"]] == list(rows.columns)
    inputs = [{"name": c, "shape": [len(rows), 1], "datatype": "FP64", "data": rows[c].tolist()} for c in rows]
    answer = client.post(f"/v2/models/{MODEL}/infer", json={"id": "r1", "inputs": inputs})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "r1"
    prediction = next(o for o in body["outputs"] if o["name"] == "prediction")
    assert [int(v) for v in prediction["data"]] == offline


def test_tritonclient_speaks_v2_to_the_endpoint(endpoints: dict[str, rayline.Endpoint], rows: pd.DataFrame,
                                               offline: list[int]) -> None:
    import numpy as np
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=endpoints["open"].url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert [i["name"] for i in client.get_model_metadata(MODEL)["inputs"]] == list(rows.columns)
    inputs = []
    for column in rows.columns:
        tensor = triton.InferInput(column, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[column].to_numpy(np.float64), binary_data=False)
        inputs.append(tensor)
    result = client.infer(MODEL, inputs, outputs=[triton.InferRequestedOutput("prediction", binary_data=False)])
    assert [int(v) for v in result.as_numpy("prediction")] == offline


def _nan_row(rows: pd.DataFrame) -> dict:
    record = rows.iloc[0].to_dict()
    record["pixel_0_1"] = math.nan
    return {"instances": [record]}


BAD = {
    "malformed JSON": (b'{"instances": [', "application/json", 400, None),
    "no known key": (b'{"rows": []}', "application/json", 400, None),
    "empty batch": (b'{"instances": []}', "application/json", 400, None),
    "wrong column names": (json.dumps({"instances": [{"pixel": 1.0}]}).encode(), "application/json", 422,
                           "missing"),
    "wrong type": (lambda rows: {"instances": [{**rows.iloc[0].to_dict(), "pixel_0_3": "dark"}]},
                   "application/json", 422, "pixel_0_3"),
    "NaN": (_nan_row, "application/json", 422, "pixel_0_1"),
    "Inf": (lambda rows: {"instances": [{**rows.iloc[0].to_dict(), "pixel_0_2": math.inf}]},
            "application/json", 422, "pixel_0_2"),
    "too many rows": (lambda rows: {"instances": rows.sample(101, replace=True, random_state=1)
                                    .to_dict(orient="records")}, "application/json", 422, "101"),
    "body over the limit": (b'{"instances": [' + b" " * 300_000 + b"]}", "application/json", 413, None),
    "unsupported content type": (b"instances=1", "application/x-www-form-urlencoded", 415, None),
    "pickled body": (b"\x80\x04\x95", "application/octet-stream", 415, None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(case: str, client: httpx.Client,
                                                                rows: pd.DataFrame, offline: list[int]) -> None:
    body, content_type, status, mention = BAD[case]
    content = body if isinstance(body, bytes) else json.dumps(body(rows)).encode()
    answer = client.post(f"/v1/models/{MODEL}/predict", content=content, headers={"content-type": content_type})
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert set(error) == {"error", "detail"}
    if mention:
        assert mention in json.dumps(error)
    assert client.get("/readyz").status_code == 200
    again = client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows.head(2).to_dict(orient="records")})
    assert [p["prediction"] for p in again.json()["predictions"]] == offline[:2]


def test_unknown_model_name_is_404(client: httpx.Client, rows: pd.DataFrame) -> None:
    answer = client.post("/v1/models/other/predict", json={"instances": rows.head(1).to_dict(orient="records")})
    assert answer.status_code == 404 and answer.json()["detail"] == {"served": MODEL}


def test_api_keys(endpoints: dict[str, rayline.Endpoint], rows: pd.DataFrame, offline: list[int]) -> None:
    body = {"instances": rows.head(3).to_dict(orient="records")}
    with httpx.Client(base_url=endpoints["secure"].url, timeout=60) as http:
        missing = http.post(f"/v1/models/{MODEL}/predict", json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = http.post(f"/v1/models/{MODEL}/predict", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = http.post(f"/v1/models/{MODEL}/predict", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        assert good.status_code == 200
        assert [p["prediction"] for p in good.json()["predictions"]] == offline[:3]
        assert http.get("/healthz").status_code == 200  # health stays open
    keyed = rayline.Endpoint(endpoints["secure"].name, endpoints["secure"].url, MODEL, api_key=API_KEY)
    assert [p["prediction"] for p in keyed.predict(rows.head(3))["predictions"]] == offline[:3]


def test_batch_inference_matches_offline(platform: rayline.Platform, state_dir, registered, rows: pd.DataFrame,
                                         offline: list[int], tmp_path) -> None:
    rows.to_parquet(tmp_path / "rows.parquet")
    done = run_cli("predict", "--model", f"models:/{MODEL}/{registered.model_version}",
                   "--input", str(tmp_path / "rows.parquet"), "--output", str(tmp_path / "out"), state_dir=state_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(rows)} predictions by {MODEL} version {registered.model_version}" in done.stdout
    written = pd.read_parquet(tmp_path / "out")
    assert len(written) == len(rows)
    # Ray Data may reorder blocks: match rows on their pixels.
    key = list(rows.columns)
    merged = rows.assign(expected=offline).merge(written, on=key, how="inner")
    assert len(merged) == len(rows)
    assert (merged["prediction"].astype(int) == merged["expected"]).all()


def test_metrics_per_version_reach_prometheus(client: httpx.Client, rows: pd.DataFrame, registered) -> None:
    """Earlier tests sent good and bad requests; Ray's metrics endpoint must show both, tagged by version."""
    import ray

    client.post(f"/v1/models/{MODEL}/predict", content=b"{", headers={"content-type": "application/json"})
    client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows.head(1).to_dict(orient="records")})
    port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])
    version = f'version="{registered.model_version}"'
    scraped: list[str] = []

    def exported() -> bool:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        scraped[:] = [line for line in text.splitlines() if line.startswith("ray_rayline_") and version in line]
        names = " ".join(scraped)
        return all(n in names for n in ("rayline_requests", "rayline_rejected_inputs", "rayline_batch_rows",
                                        "rayline_request_latency_ms"))

    wait_until(exported, 90, "rayline metrics at Ray's metrics endpoint")
    assert any("rayline_rejected_inputs" in line and 'status="400"' in line for line in scraped)
    assert any("rayline_requests" in line and 'route="v1"' in line and 'status="200"' in line for line in scraped)


@pytest.fixture(scope="module")
def second(platform: rayline.Platform, registered: rayline.PipelineResult) -> rayline.PipelineResult:
    """A second, weaker version of the served model: registered, not promoted."""
    trained = rayline.run(PIPELINES / "digits.yaml", {
        "model": {"name": "mlp", "params": {"hidden": [16]}}, "train.epochs": 1, "train.lr": 1e-4,
        "train.scaling.num_workers": 1, "tracking.experiment": MODEL, "tracking.model_name": MODEL,
    }, ray_address=platform.ray_address, tracking_uri=platform.tracking_uri, storage_uri=platform.storage_uri)
    assert not trained.promotion.promoted
    return trained


def test_hot_swap_under_load_drops_no_request(endpoints: dict[str, rayline.Endpoint], platform: rayline.Platform,
                                              registered: rayline.PipelineResult, second: rayline.PipelineResult,
                                              rows: pd.DataFrame) -> None:
    """Moves the alias to the second version, then rolls it back."""
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()
    body = {"instances": rows.head(4).to_dict(orient="records")}

    def load() -> None:
        with httpx.Client(base_url=endpoints["open"].url, timeout=60) as http:
            while not stop.is_set():
                answer = http.post(f"/v1/models/{MODEL}/predict", json=body)
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    versions.append(answer.json()["model_version"])

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(versions) >= 20, 60, "answers before the swap")
        assert rayline.promote(MODEL, second.model_version, tracking_uri=platform.tracking_uri) \
            == registered.model_version
        wait_until(lambda: versions[-1] == second.model_version, 90, "the new version to answer")
        wait_until(lambda: versions.count(second.model_version) >= 20, 60, "answers after the swap")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        assert rayline.rollback(MODEL, tracking_uri=platform.tracking_uri) == registered.model_version
    assert set(statuses) == {200}, f"{len([s for s in statuses if s != 200])} of {len(statuses)} failed"
    assert versions[0] == registered.model_version


def test_canary_split_answers_from_both_versions_with_per_version_metrics(
        endpoints: dict[str, rayline.Endpoint], platform: rayline.Platform, registered: rayline.PipelineResult,
        second: rayline.PipelineResult, rows: pd.DataFrame, serve_port: int) -> None:
    """A 70/30 champion/challenger split: both versions answer, in about that share, each metered apart."""
    import ray

    spec = rayline.ServiceSpec(
        name="canary", route_prefix="/canary", model=f"models:/{MODEL}/{registered.model_version}", port=serve_port,
        canary={"model": f"models:/{MODEL}/{second.model_version}", "traffic_percent": 30},
        autoscaling={"min_replicas": 1, "max_replicas": 1}, resources={"num_cpus": 0.5})
    endpoint = rayline.serve(spec, ray_address=platform.ray_address, tracking_uri=platform.tracking_uri)
    with httpx.Client(base_url=endpoint.url, timeout=60) as http:
        wait_until(lambda: http.get("/readyz").status_code == 200, 120, "the canary application")
        assert http.get("/readyz").json()["canary"] == {"version": second.model_version, "traffic_percent": 30}
        body = {"instances": rows.head(2).to_dict(orient="records")}
        answers = [http.post(f"/v1/models/{MODEL}/predict", json=body) for _ in range(200)]
    assert {a.status_code for a in answers} == {200}
    challenger = sum(a.json()["model_version"] == second.model_version for a in answers)
    assert {a.json()["model_version"] for a in answers} == {registered.model_version, second.model_version}
    assert 30 <= challenger <= 95, f"{challenger} of 200 answered by the challenger at a 30% split"
    metrics_port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])

    def metered_apart() -> bool:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        lines = [line for line in text.splitlines()
                 if line.startswith("ray_rayline_requests") and 'application="canary"' in line]
        return all(any(f'version="{v}"' in line for line in lines)
                   for v in (registered.model_version, second.model_version))

    wait_until(metered_apart, 90, "request counts of both canary versions at Ray's metrics endpoint")
