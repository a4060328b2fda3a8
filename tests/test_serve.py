"""The registered model behind real HTTP on Ray Serve: protocols, parity, bad input, API keys."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import mlflow
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

import rayline
from conftest import PIPELINES, delete_applications, run_cli
from conftest import SERVE_MODEL as MODEL
from rayline.cluster.processes import wait_until

API_KEY = "s3cret-test-key"
BODY_TIMEOUT_S = 2.0


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
              "reload_interval_s": 1.0, "body_timeout_s": BODY_TIMEOUT_S}
    open_spec = rayline.ServiceSpec(name="open", route_prefix="/", **common)
    secure_spec = rayline.ServiceSpec(name="secure", route_prefix="/secure",
                                      auth={"api_keys_env": "SERVE_TEST_KEYS"}, **common)
    yield {"open": rayline.serve(open_spec, platform=platform), "secure": rayline.serve(secure_spec, platform=platform)}
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
    [tensor] = client.get(f"/v2/models/{MODEL}").json()["inputs"]
    assert tensor["shape"] == [-1, rows.shape[1]] and tensor["parameters"]["columns"] == list(rows.columns)
    per_column = [{"name": c, "shape": [len(rows), 1], "datatype": "FP64", "data": rows[c].tolist()} for c in rows]
    one_tensor = [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.values.tolist()}]
    for inputs in (per_column, one_tensor):
        answer = client.post(f"/v2/models/{MODEL}/infer", json={"id": "r1", "inputs": inputs})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["id"] == "r1"
        prediction = next(o for o in body["outputs"] if o["name"] == "prediction")
        assert [int(v) for v in prediction["data"]] == offline


def test_tritonclient_with_default_settings(endpoints: dict[str, rayline.Endpoint], rows: pd.DataFrame,
                                            offline: list[int]) -> None:
    """tritonclient sends binary tensors and asks for binary outputs unless told otherwise."""
    import numpy as np
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=endpoints["open"].url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    [advertised] = client.get_model_metadata(MODEL)["inputs"]
    tensor = triton.InferInput(advertised["name"], [len(rows), rows.shape[1]], "FP32")
    tensor.set_data_from_numpy(rows.to_numpy(np.float32))
    result = client.infer(MODEL, [tensor])
    assert [int(v) for v in result.as_numpy("prediction")] == offline
    assert result.as_numpy("probability").dtype == np.float64
    per_column = []
    for column in rows.columns:
        one = triton.InferInput(column, [len(rows)], "FP64")
        one.set_data_from_numpy(rows[column].to_numpy(np.float64))
        per_column.append(one)
    result = client.infer(MODEL, per_column, outputs=[triton.InferRequestedOutput("prediction")])
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
    "deeply nested array": (b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json", 400,
                            None),
    "nested rows": (lambda rows: {"instances": [[[[1.0]] * 64]]}, "application/json", 400, "instances"),
    "body not UTF-8": (b'{"instances": [{"pixel_0_0": "\xff\xfe"}]}', "application/json", 400, None),
    "duplicate columns": (lambda rows: {"dataframe_split": {"columns": ["pixel_0_0", *rows.columns[:-1]],
                                                            "data": rows.head(1).values.tolist()}},
                          "application/json", 422, "duplicate"),
    "non-numeric cell, row lists": (lambda rows: {"instances": [["dark", *rows.iloc[0].tolist()[1:]]]},
                                    "application/json", 422, "pixel_0_0"),
    "non-numeric cell, columns": (lambda rows: {"inputs": {**rows.head(1).to_dict(orient="list"),
                                                           "pixel_0_4": ["x"]}}, "application/json", 422,
                                  "pixel_0_4"),
    "non-numeric cell, dataframe_split": (lambda rows: {"dataframe_split": {
        "columns": list(rows.columns), "data": [[*rows.iloc[0].tolist()[:-1], {"a": 1}]]}}, "application/json",
        422, "pixel_7_7"),
    "huge number": (lambda rows: {"instances": [[1e400, *rows.iloc[0].tolist()[1:]]]}, "application/json", 422,
                    "pixel_0_0"),
    "huge integer": (lambda rows: {"dataframe_split": {"columns": list(rows.columns),
                                                       "data": [[10**400, *rows.iloc[0].tolist()[1:]]]}},
                     "application/json", 422, "pixel_0_0"),
    "control characters in a column name": (lambda rows: {"instances": [{**rows.iloc[0].to_dict(),
                                                                         "pixel\x00\x1b[2J": 1.0}]},
                                            "application/json", 422, "unknown"),
    "control characters in a cell": (lambda rows: {"inputs": {**rows.head(1).to_dict(orient="list"),
                                                              "pixel_0_5": ["\x00\x07\r"]}}, "application/json",
                                     422, "pixel_0_5"),
    "raw control character in the JSON": (b'{"instances": [{"pixel_0_0\x01": 1}]}', "application/json", 400, None),
    "integer too long to read": (b'{"instances": [[' + b"9" * 5000 + b"]]}", "application/json", 400, None),
    "empty records": (b'{"dataframe_records": []}', "application/json", 400, "empty"),
    "empty dataframe_split": (lambda rows: {"dataframe_split": {"columns": list(rows.columns), "data": []}},
                              "application/json", 400, "empty"),
    "empty columns": (b'{"inputs": {}}', "application/json", 400, None),
}


def _tensor(data: object, shape: list[int], datatype: str = "FP64", name: str = "input") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def _one_row(rows: pd.DataFrame, first: object) -> list:
    return [first, *rows.iloc[0].tolist()[1:]]


BAD_V2 = {
    "malformed JSON": (b'{"inputs": [', "application/json", 400, None),
    "no inputs": (b'{"id": "r1"}', "application/json", 400, "inputs"),
    "empty batch": (lambda rows: _tensor([], [0, 64]), "application/json", 400, "empty"),
    "wrong width": (lambda rows: _tensor(rows.iloc[0].tolist()[1:], [1, 63]), "application/json", 422, "64"),
    "shape not the data's": (lambda rows: _tensor(rows.iloc[0].tolist(), [2, 64]), "application/json", 422,
                             "128"),
    "wrong type": (lambda rows: _tensor([str(v) for v in rows.iloc[0]], [1, 64], "BYTES"), "application/json",
                   422, "numeric"),
    "NaN": (lambda rows: _tensor(_one_row(rows, math.nan), [1, 64]), "application/json", 422, "pixel_0_0"),
    "Inf": (lambda rows: _tensor(_one_row(rows, -math.inf), [1, 64]), "application/json", 422, "pixel_0_0"),
    "huge number": (lambda rows: _tensor(_one_row(rows, 1e400), [1, 64]), "application/json", 422, "pixel_0_0"),
    "huge integer": (lambda rows: _tensor([10**400] + [0] * 63, [1, 64], "INT64"), "application/json", 422,
                     "outside the range"),
    "integer too long to read": (b'{"inputs": [{"name": "input", "shape": [1, 1], "datatype": "INT64", "data": ['
                                 + b"9" * 5000 + b"]}]}", "application/json", 400, None),
    "too many rows": (lambda rows: _tensor(rows.sample(101, replace=True, random_state=1).values.tolist(),
                                           [101, 64]), "application/json", 422, "101"),
    "control characters in a tensor name": (lambda rows: _tensor([1.0], [1], name="pixel\x00\x1b"),
                                            "application/json", 422, "unknown"),
    "control characters in the data": (lambda rows: _tensor(["\x00\x07"] * 64, [1, 64], "BYTES"),
                                       "application/json", 422, "numeric"),
    "raw control character in the JSON": (b'{"inputs": [{"name": "in\x02put"}]}', "application/json", 400, None),
    "body over the limit": (b'{"inputs": [' + b" " * 300_000 + b"]}", "application/json", 413, None),
    "unsupported content type": (b"inputs=1", "application/x-www-form-urlencoded", 415, None),
    "deeply nested array": (b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json", 400, None),
}
ROUTES = {"v1": f"/v1/models/{MODEL}/predict", "invocations": "/invocations", "v2": f"/v2/models/{MODEL}/infer"}


@pytest.mark.parametrize(("route", "case"), [(route, case) for route in ("v1", "invocations") for case in BAD]
                         + [("v2", case) for case in BAD_V2])
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(route: str, case: str, client: httpx.Client,
                                                                rows: pd.DataFrame, offline: list[int]) -> None:
    body, content_type, status, mention = (BAD_V2 if route == "v2" else BAD)[case]
    content = body if isinstance(body, bytes) else json.dumps(body(rows)).encode()
    answer = client.post(ROUTES[route], content=content, headers={"content-type": content_type})
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert set(error) == {"error", "detail"}
    if mention:
        assert mention in json.dumps(error)
    assert client.get("/readyz").status_code == 200
    again = client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows.head(2).to_dict(orient="records")})
    assert [p["prediction"] for p in again.json()["predictions"]] == offline[:2]


def test_a_slow_body_gets_408_while_other_requests_are_served(endpoints: dict[str, rayline.Endpoint],
                                                              client: httpx.Client, rows: pd.DataFrame,
                                                              offline: list[int]) -> None:
    """Slowloris: a body announced at 10 kB and trickled a byte a second is cut off with a 408 once the body
    timeout has passed; a normal request meanwhile is answered at once."""
    url = httpx.URL(endpoints["open"].url)
    head = (f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 10000\r\n\r\n{{\"instances\": [").encode()
    with socket.create_connection((url.host, url.port), timeout=1) as slow:
        slow.sendall(head)
        started = time.monotonic()
        normal = client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows.head(2).to_dict(orient="records")})
        assert [p["prediction"] for p in normal.json()["predictions"]] == offline[:2]
        answer, took = _trickle_until_answered(slow, b" ", started, BODY_TIMEOUT_S + 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"body not received" in answer and took < BODY_TIMEOUT_S + 10
    assert client.get("/readyz").status_code == 200


def _trickle_until_answered(slow: socket.socket, byte: bytes, started: float, deadline_s: float) -> tuple[bytes, float]:
    """Send ``byte`` about once a second until the server answers or ``deadline_s`` passes; return the whole answer
    (its body may come in a later segment) and the seconds from ``started`` to its first bytes."""
    answer = b""
    while not answer and time.monotonic() - started < deadline_s:
        with contextlib.suppress(TimeoutError):
            answer = slow.recv(4096)
        with contextlib.suppress(OSError):  # the server may have closed its side already
            slow.sendall(byte)
    took = time.monotonic() - started
    with contextlib.suppress(OSError):
        while chunk := slow.recv(4096):
            answer += chunk
    return answer, took


HEADER_TIMEOUT_S = 10  # `timeout http-request` that cluster/haproxy_loopback.py gives the platform's HAProxy


def test_slow_headers_get_408_from_the_ingress(endpoints: dict[str, rayline.Endpoint], client: httpx.Client) -> None:
    """Slowloris on the headers: a request line and headers trickled a byte a second are cut off by HAProxy with a
    408 once its header deadline has passed, instead of holding the connection for an hour."""
    url = httpx.URL(endpoints["open"].url)
    with socket.create_connection((url.host, url.port), timeout=1) as slow:
        slow.sendall(f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: {url.host}\r\n".encode())
        answer, took = _trickle_until_answered(slow, b"X", time.monotonic(), HEADER_TIMEOUT_S + 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert took < HEADER_TIMEOUT_S + 10
    assert client.get("/readyz").status_code == 200


def test_unknown_model_name_is_404(client: httpx.Client, rows: pd.DataFrame) -> None:
    answer = client.post("/v1/models/other/predict", json={"instances": rows.head(1).to_dict(orient="records")})
    assert answer.status_code == 404 and answer.json()["detail"] == {"served": MODEL}


def test_binary_oip_bad_input_gets_a_4xx(client: httpx.Client, rows: pd.DataFrame, offline: list[int]) -> None:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    cases = {"buffer too short": (header + b"\0" * 10, str(len(header))),
             "header longer than the body": (header, str(len(header) + 5)),
             "header length not a number": (header, "abc")}
    for case, (body, length) in cases.items():
        answer = client.post(f"/v2/models/{MODEL}/infer", content=body,
                             headers={"Inference-Header-Content-Length": length})
        assert 400 <= answer.status_code < 500, (case, answer.text)
        assert set(answer.json()) == {"error", "detail"}, case
    again = client.post("/invocations", json={"instances": rows.head(2).to_dict(orient="records")})
    assert [p["prediction"] for p in again.json()["predictions"]] == offline[:2]


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
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):  # health stays open
            assert http.get(path).status_code == 200, path
        guarded = [("GET", f"/v2/models/{MODEL}"), ("GET", f"/v2/models/{MODEL}/ready"), ("GET", "/docs"),
                   ("GET", "/openapi.json"), ("POST", "/v1/models/other/predict"), ("POST", "/invocations"),
                   ("POST", "/v2/models/other/infer")]
        for method, path in guarded:
            refused = http.request(method, path, json=body)
            assert refused.status_code == 401, (path, refused.status_code)
            allowed = http.request(method, path, json=body, headers={"Authorization": f"Bearer {API_KEY}"})
            assert allowed.status_code != 401, path
        assert http.get("/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}).json()["paths"]
    assert repr(endpoints["secure"]).count(API_KEY) == 0  # the key is not printed with the endpoint
    assert [p["prediction"] for p in endpoints["secure"].predict(rows.head(3))["predictions"]] == offline[:3]


def test_a_second_spec_asking_for_another_port_is_refused(platform: rayline.Platform, endpoints, serve_port: int
                                                          ) -> None:
    from rayline.cluster.processes import free_port

    spec = rayline.ServiceSpec(name="elsewhere", route_prefix="/elsewhere", model=f"models:/{MODEL}@champion",
                               port=free_port())
    with pytest.raises(rayline.SpecError) as refused:
        rayline.serve(spec, platform=platform)
    assert refused.value.field == "port" and str(serve_port) in str(refused.value)
    from ray import serve

    assert "elsewhere" not in serve.status().applications


def test_a_lone_request_does_not_wait_out_the_batch_timeout(platform: rayline.Platform, endpoints,
                                                            serve_port: int, rows: pd.DataFrame) -> None:
    """With a 3 s batch wait, requests still answer at once when no other request is queued."""
    import time

    spec = rayline.ServiceSpec(name="patient", route_prefix="/patient", model=f"models:/{MODEL}@champion",
                               port=serve_port, batching={"max_batch_size": 32, "batch_wait_timeout_s": 3.0},
                               autoscaling={"min_replicas": 1, "max_replicas": 1}, resources={"num_cpus": 0.5})
    endpoint = rayline.serve(spec, platform=platform)
    body = {"instances": rows.head(1).to_dict(orient="records")}
    try:
        with httpx.Client(base_url=endpoint.url, timeout=60) as http:
            assert http.post(f"/v1/models/{MODEL}/predict", json=body).status_code == 200
            started = time.perf_counter()
            for _ in range(3):
                assert http.post(f"/v1/models/{MODEL}/predict", json=body).status_code == 200
            assert time.perf_counter() - started < 3.0  # three waits would take 9 s
    finally:
        from rayline.serving import shutdown

        shutdown(platform, "patient")


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
    }, platform=platform)
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
    endpoint = rayline.serve(spec, platform=platform)
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


# Fuzzing: whatever arrives on the three routes, the answer is a 2xx or a 4xx JSON error, never a 5xx.
COLUMNS = [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
           | st.sampled_from(["1.5", "NaN", "Infinity", "", "\x00"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=6) | st.sampled_from(COLUMNS), inner, max_size=5),
                           max_leaves=40)
cells = st.floats(-1e3, 1e3) | scalars
rows_of = st.lists(st.lists(cells, min_size=60, max_size=66), min_size=0, max_size=4)
column_names = st.lists(st.sampled_from([*COLUMNS, "x", "pixel_0_0"]), min_size=60, max_size=66)
scoring = st.one_of(
    json_values,
    st.fixed_dictionaries({"instances": rows_of | st.lists(st.dictionaries(st.sampled_from(COLUMNS), cells,
                                                                           min_size=60), max_size=3)}),
    st.fixed_dictionaries({"dataframe_split": st.fixed_dictionaries({"columns": column_names, "data": rows_of})}),
    st.fixed_dictionaries({"inputs": st.dictionaries(st.sampled_from(COLUMNS), st.lists(cells, max_size=3),
                                                     min_size=60)}),
    st.dictionaries(st.sampled_from(["instances", "inputs", "dataframe_split", "dataframe_records"]), json_values,
                    min_size=1, max_size=2),
)
tensors = st.fixed_dictionaries({
    "name": st.sampled_from(["input", *COLUMNS[:3], "x"]),
    "shape": st.lists(st.integers(-2, 70), max_size=3),
    "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "UINT8", "FP16", "XYZ"]),
    "data": json_values | st.lists(cells, max_size=70),
}, optional={"parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-5, 600)})})
infer = st.one_of(json_values, st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=3)},
                                                     optional={"id": scalars, "outputs": json_values,
                                                               "parameters": json_values}))


def _never_5xx(http: httpx.Client, path: str, body: bytes, headers: dict[str, str]) -> None:
    answer = http.post(path, content=body, headers=headers)
    assert answer.status_code < 500, (path, body[:300], headers, answer.status_code, answer.text[:300])
    if answer.status_code >= 400:
        assert set(answer.json()) == {"error", "detail"}, answer.text[:300]


@pytest.fixture(scope="module")
def fuzz_client(endpoints: dict[str, rayline.Endpoint]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=endpoints["open"].url, timeout=60) as http:
        yield http


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=scoring, route=st.sampled_from([f"/v1/models/{MODEL}/predict", "/invocations"]))
def test_fuzz_scoring_routes(fuzz_client: httpx.Client, payload: object, route: str) -> None:
    body = json.dumps(payload, allow_nan=True).encode()
    _never_5xx(fuzz_client, route, body, {"content-type": "application/json"})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=infer)
def test_fuzz_oip_json(fuzz_client: httpx.Client, payload: object) -> None:
    body = json.dumps(payload, allow_nan=True).encode()
    _never_5xx(fuzz_client, f"/v2/models/{MODEL}/infer", body, {"content-type": "application/json"})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=infer, tail=st.binary(max_size=600), extra=st.integers(-3, 3),
       route=st.sampled_from([f"/v2/models/{MODEL}/infer", "/invocations", f"/v1/models/{MODEL}/predict"]))
def test_fuzz_raw_bodies(fuzz_client: httpx.Client, header: object, tail: bytes, extra: int, route: str) -> None:
    """Binary tensor bodies (a JSON header, then raw bytes) with right and wrong header lengths, on every route."""
    head = json.dumps(header, allow_nan=True).encode()
    length = str(max(0, len(head) + extra))
    _never_5xx(fuzz_client, route, head + tail, {"Inference-Header-Content-Length": length,
                                                 "content-type": "application/octet-stream"})
    _never_5xx(fuzz_client, route, tail, {"content-type": "application/json"})
