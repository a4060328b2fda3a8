"""Hashed columns: one canonical form per value, so that training, HTTP serving, the MLflow pyfunc and batch
inference put every value in the same bucket; a keyed hash whose key is recorded by fingerprint only; and no raw
value of a hashed or dropped column written anywhere (artifacts, params, tags, logs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
import torch
from safetensors.torch import load_file

import rayline
from conftest import PIPELINES, delete_applications, run_cli
from rayline.data import prepare
from rayline.models import build_model
from rayline.packaged.layout import WEIGHTS, package_dir

CANARY = "zq-canary-city-7f3e91"  # a value of the hashed column
DROPPED_CANARY = "zq-canary-dropped-4b2d07"  # a value of the dropped column
KEYS = [0, 1, 2, 3, 4, 5, 6, 7]
PREPROCESS = "[{type: drop, columns: [secret]}, {type: hash, columns: [k, f, flag, city], num_buckets: 1024}]"
KEY_ENV, KEY_FILE_ENV = "RAYLINE_HASH_KEY", "RAYLINE_HASH_KEY_FILE"


@pytest.mark.parametrize(("left", "right"), [
    (3, 3.0), (np.int64(3), 3.0), (np.int32(3), np.float32(3.0)), (True, 1), (np.bool_(False), 0.0),
    (np.float32(0.1), 0.1), (None, float("nan")), (pd.NA, None), (np.float64("nan"), pd.NaT), ("a", np.str_("a")),
])
def test_values_equal_in_python_share_one_canonical_form(left: object, right: object) -> None:
    from rayline.packaged.hashing import canonical, hash_bucket

    assert canonical(left) == canonical(right)
    assert hash_bucket(left, 4096, b"k" * 32) == hash_bucket(right, 4096, b"k" * 32)


@pytest.mark.parametrize(("left", "right"), [(3, "3"), (3, 3.5), (None, "None"), (None, "nan"), (True, "True")])
def test_different_values_keep_different_forms(left: object, right: object) -> None:
    from rayline.packaged.hashing import canonical

    assert canonical(left) != canonical(right)


def test_the_key_changes_every_bucket_assignment() -> None:
    from rayline.packaged.hashing import hash_bucket

    values = [f"name-{i}" for i in range(64)]
    first = [hash_bucket(v, 1 << 20, b"a" * 32) for v in values]
    second = [hash_bucket(v, 1 << 20, b"b" * 32) for v in values]
    assert sum(a == b for a, b in zip(first, second, strict=True)) <= 1


def _frame(rows: int, seed: int) -> pd.DataFrame:
    """``k`` (int) alone decides the label; ``f`` (float, some null), ``flag`` (bool) and ``city`` (string, some
    null, some the canary) are hashed too; ``secret`` is dropped."""
    rng = np.random.default_rng(seed)
    k = rng.choice(KEYS, size=rows)
    f = rng.choice([0.5, 1.5, 2.0, np.nan], size=rows)
    city = rng.choice(np.array(["oslo", "lima", CANARY, None], dtype=object), size=rows)
    return pd.DataFrame({
        "k": k.astype(np.int64), "f": f, "flag": rng.random(rows) < 0.5, "city": city,
        "secret": np.where(rng.random(rows) < 0.5, DROPPED_CANARY, "plain").astype(object),
        "y": np.where(k < 4, "low", "high").astype(object),
    })


@pytest.fixture(scope="module")
def hashed_run(platform: rayline.Platform, state_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """``rayline run`` over a Parquet table of typed columns; returns the model name, the source and the CLI's
    output."""
    tmp = tmp_path_factory.mktemp("hashed")
    source = tmp / "rows.parquet"
    _frame(800, seed=0).to_parquet(source)
    name = f"h{tmp.name[-8:]}"
    sets = [f"data.source={source}", "data.label=y", f"preprocess={PREPROCESS}", "model.name=mlp",
            "model.params={hidden: [32]}", "train.epochs=6", "train.lr=0.01", "train.scaling.num_workers=1",
            f"tracking.experiment={name}", f"tracking.model_name={name}"]
    done = run_cli("run", "pipelines/digits.yaml", *(a for s in sets for a in ("--set", s)), state_dir=state_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return name, source, done.stdout + done.stderr


@pytest.fixture(scope="module")
def requests() -> pd.DataFrame:
    """Rows of every kind of value: each key, float and null floats, both booleans, strings and null strings."""
    return _frame(64, seed=1).drop(columns=["y", "secret"])


@pytest.fixture(scope="module")
def in_training(hashed_run: tuple[str, Path, str], platform: rayline.Platform,
                requests: pd.DataFrame) -> list[str]:
    """What the trained weights predict for ``requests`` through the training path: Ray Data and the preprocessor
    fitted in training."""
    name, source, _ = hashed_run
    spec = rayline.load_spec(PIPELINES / "digits.yaml", [
        f"data.source={source}", "data.label=y", f"preprocess={PREPROCESS}", "model.name=mlp",
        "model.params={hidden: [32]}"])
    prepared = prepare(spec, platform.storage_uri)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        batch = prepared.preprocessor.transform_dataset(
            ray.data.from_pandas(requests.assign(y="low"))).take_batch(len(requests))
        module = build_model(spec.model, prepared.preprocessor.num_features, prepared.preprocessor.num_outputs)
        module.load_state_dict(load_file(str(package_dir(
            mlflow.artifacts.download_artifacts(f"models:/{name}/1")) / WEIGHTS)))
        with torch.inference_mode():
            indices = module.eval()(torch.from_numpy(np.stack(batch["features"]))).argmax(1).numpy()
        return list(prepared.preprocessor.decode(indices))
    finally:
        prepared.release()


@pytest.mark.slow
def test_the_model_learned_the_key(in_training: list[str], requests: pd.DataFrame) -> None:
    assert in_training == list(np.where(requests["k"] < 4, "low", "high"))


@pytest.mark.slow
def test_the_pyfunc_predicts_as_training_did(hashed_run, requests: pd.DataFrame, in_training: list[str]) -> None:
    name, _, _ = hashed_run
    served = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(requests)
    assert list(served["prediction"]) == in_training


@pytest.mark.slow
def test_batch_inference_predicts_as_training_did(hashed_run, platform: rayline.Platform, tmp_path: Path,
                                                  requests: pd.DataFrame, in_training: list[str]) -> None:
    name, _, _ = hashed_run
    requests.to_parquet(tmp_path / "in.parquet")
    rayline.predict(f"models:/{name}/1", str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                    platform=platform)
    out = pd.read_parquet(tmp_path / "out")
    def rows(frame: pd.DataFrame) -> list[tuple]:
        return list(frame[["k", "f", "flag", "city"]].fillna({"f": -1.0, "city": "~"}).itertuples(index=False))

    by_row = dict(zip(rows(out), out["prediction"], strict=True))
    expected = rows(requests)
    assert [by_row[row] for row in expected] == in_training


@pytest.fixture(scope="module")
def endpoint(hashed_run, platform: rayline.Platform, serve_port: int) -> Iterator[rayline.Endpoint]:
    name, _, _ = hashed_run
    spec = rayline.ServiceSpec(name="hashed", model=f"models:/{name}/1", port=serve_port,
                               autoscaling={"min_replicas": 1, "max_replicas": 1}, resources={"num_cpus": 0.5})
    yield rayline.serve(spec, platform=platform)
    delete_applications(platform)


@pytest.mark.slow
def test_http_predicts_as_training_did(hashed_run, endpoint: rayline.Endpoint, requests: pd.DataFrame,
                                       in_training: list[str]) -> None:
    name, _, _ = hashed_run
    records = [{key: (None if isinstance(value, float) and np.isnan(value) else value) for key, value in row.items()}
               for row in requests.astype(object).to_dict(orient="records")]
    records = [{key: (value.item() if isinstance(value, np.generic) else value) for key, value in row.items()}
               for row in records]
    answer = httpx.post(f"{endpoint.url}/v1/models/{name}/predict", json={"instances": records}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert [p["prediction"] for p in answer.json()["predictions"]] == in_training


def _everything_written(client, run_id: str, tmp: Path) -> dict[str, bytes]:
    """Every artifact of the run (the logged model included), and its params, tags and metric names."""
    run = client.get_run(run_id)
    found = {"params": repr(run.data.params).encode(), "tags": repr(run.data.tags).encode(),
             "metrics": repr(sorted(run.data.metrics)).encode()}
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp / "artifacts")))
    for model in client.search_logged_models(experiment_ids=[run.info.experiment_id]):
        found[f"logged model {model.model_id} params/tags"] = repr((model.params, model.tags)).encode()
        mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=str(tmp / model.model_id))
    for file in [*artifacts.rglob("*"), *tmp.rglob("*")]:
        if file.is_file():
            found[str(file)] = file.read_bytes()
    return found


def _ray_logs() -> dict[str, bytes]:
    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    return {str(f): f.read_bytes() for f in logs.rglob("*") if f.is_file()}


@pytest.mark.slow
def test_no_raw_value_of_a_hashed_or_dropped_column_is_written_anywhere(
        hashed_run, mlflow_client, state_dir: Path, tmp_path: Path) -> None:
    name, _, output = hashed_run
    [version] = mlflow_client.search_model_versions(f"name = '{name}'")
    written = _everything_written(mlflow_client, version.run_id, tmp_path)
    written["the command's output"] = output.encode()
    written["the tracking server's log"] = (state_dir / "mlflow.log").read_bytes()
    written.update(_ray_logs())
    assert any(b"input_example" in where.encode() for where in written)  # the artifacts were searched
    secret = os.environ[KEY_ENV].encode()
    for where, content in written.items():
        for value in (CANARY.encode(), DROPPED_CANARY.encode(), secret):
            assert value not in content, f"{value!r} is written in {where}"


@pytest.mark.slow
def test_the_key_is_recorded_by_its_fingerprint(hashed_run, mlflow_client) -> None:
    from rayline.packaged.hashing import fingerprint, secret_key

    name, _, _ = hashed_run
    [version] = mlflow_client.search_model_versions(f"name = '{name}'")
    tags = mlflow_client.get_run(version.run_id).data.tags
    assert tags["rayline.hash_key_fingerprint"] == fingerprint(secret_key())


def test_a_keyed_hash_without_a_key_is_refused_unless_the_spec_says_keyed_false(
        platform: rayline.Platform, monkeypatch: pytest.MonkeyPatch, unique: str, mlflow_client) -> None:
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    spec = rayline.load_spec(PIPELINES / "tabular.yaml", [f"tracking.experiment={unique}"])
    with pytest.raises(rayline.SpecError) as caught:
        rayline.run(spec, platform=platform)
    assert caught.value.field == "preprocess.4.keyed"
    assert KEY_ENV in caught.value.message and "keyed: false" in caught.value.message
    assert mlflow_client.get_experiment_by_name(unique) is None
    unkeyed = rayline.load_spec(PIPELINES / "tabular.yaml", ["preprocess.4.keyed=false"])
    prepared = prepare(unkeyed, platform.storage_uri)  # passes the gate
    prepared.release()


def test_a_key_file_is_read_like_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rayline.packaged.hashing import secret_key

    from_variable = secret_key()
    (tmp_path / "key").write_text(os.environ[KEY_ENV] + "\n")
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "key"))
    assert secret_key() == from_variable
