"""Loading what others wrote: weights, checkpoints, model specs and model URIs.

A file whose pickle would run code is refused and the code does not run (its canary file is never created); a
damaged file gives a clean one-line error; a packaged model may only name zoo factories or modules the operator
allows; user-given model URIs cannot reach outside the registry. Pure unit tests: no Ray cluster, no MLflow.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ray.data.preprocessors import Concatenator
from ray.train import Checkpoint

import rayline
from rayline.data.state_codec import dump_preprocessor
from rayline.errors import RaylineError, SpecError
from rayline.models import ALLOWED_MODULES_ENV, MLP, check_allowed
from rayline.packaged.layout import MODEL_SPEC, WEIGHTS
from rayline.packaged.model import LoadError, PackagedModel
from rayline.spec import ModelSpec, ModelUri, load_service_spec
from rayline.train.checkpoint import OPTIMIZER, TrainingState, read_full_state, read_weights, save_checkpoint
from rayline.train.sharded_checkpoint import SHARDS, load_sharded, save_sharded

ROOT = Path(__file__).parents[1]
COLUMNS = ["a", "b"]


class Touch:
    """Unpickling this creates ``canary``: what a malicious weights file would do."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Callable[..., object], tuple[Path]]:
        return Path.touch, (self.canary,)


def _preprocessor_json() -> str:
    """A real (regression, two numeric columns) packaged preprocessing state, as the trainer writes it."""
    concat = Concatenator(columns=COLUMNS, output_column_name="features", dtype=np.float32, flatten=True)
    return json.dumps({"input_columns": COLUMNS, "label": "y", "task": "regression", "num_features": len(COLUMNS),
                       "feature_steps": [dump_preprocessor(concat)], "label_encoder": None})


def _package(directory: Path, name: str = "mlp") -> Path:
    spec = ModelSpec(name=name, params={"hidden": [4]})
    weights = MLP(len(COLUMNS), 1, hidden=[4]).state_dict()
    return PackagedModel.write(directory, weights, _preprocessor_json(), spec)


def _write_pickle(path: Path, canary: Path, with_torch: bool) -> None:
    payload = {"weight": Touch(canary)}
    if with_torch:
        buffer = io.BytesIO()  # torch.save refuses some file names (".metadata")
        torch.save(payload, buffer)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(pickle.dumps(payload))


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(ALLOWED_MODULES_ENV, raising=False)
    return _package(tmp_path / "package")


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    model = MLP(len(COLUMNS), 1, hidden=[4])
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(3, len(COLUMNS))).sum().backward()
    optimizer.step()  # an optimizer state with tensors in it
    save_checkpoint(directory, TrainingState(model.state_dict(), optimizer.state_dict(), {"epoch": 2, "history": []}))
    return directory


def _restore(directory: Path) -> dict[str, object]:
    """Read the checkpoint and load it into a fresh model and optimizer; return its metadata."""
    state = read_full_state(directory)
    model = MLP(len(COLUMNS), 1, hidden=[4])
    model.load_state_dict(state.weights)
    torch.optim.Adam(model.parameters()).load_state_dict(state.optimizer)
    return state.meta


def test_the_payload_would_run_code_if_unpickled(tmp_path: Path) -> None:
    """The control: the malicious files used below do create their canary when unpickled."""
    canary = tmp_path / "canary"
    _write_pickle(tmp_path / "evil.pkl", canary, with_torch=False)
    pickle.loads((tmp_path / "evil.pkl").read_bytes())
    assert canary.exists()


def test_a_real_package_and_checkpoint_load(package: Path, checkpoint_dir: Path) -> None:
    predictions = PackagedModel.load(package).predict(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}))
    assert predictions["prediction"].shape == (2,)
    assert _restore(checkpoint_dir) == {"epoch": 2, "history": []}


@pytest.mark.parametrize("with_torch", [False, True])
def test_a_pickled_weights_file_is_refused_without_running_it(package: Path, tmp_path: Path,
                                                              with_torch: bool) -> None:
    canary = tmp_path / "canary"
    _write_pickle(package / WEIGHTS, canary, with_torch)
    with pytest.raises(LoadError, match=f"{WEIGHTS} is not a readable safetensors file") as caught:
        PackagedModel.load(package)
    assert "\n" not in str(caught.value)
    assert not canary.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("with_torch", [False, True])
def test_a_pickled_optimizer_state_is_refused_without_running_it(checkpoint_dir: Path, tmp_path: Path,
                                                                 with_torch: bool) -> None:
    canary = tmp_path / "canary"
    _write_pickle(checkpoint_dir / OPTIMIZER, canary, with_torch)
    with pytest.raises(LoadError, match=f"{OPTIMIZER}: refused to unpickle") as caught:
        _restore(checkpoint_dir)
    assert "\n" not in str(caught.value)
    assert not canary.exists()


def test_pickled_checkpoint_weights_are_refused_without_running_them(checkpoint_dir: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    _write_pickle(checkpoint_dir / WEIGHTS, canary, with_torch=True)
    with pytest.raises(LoadError, match="is not a readable safetensors file"):
        _restore(checkpoint_dir)
    with pytest.raises(LoadError, match="is not a readable safetensors file"):
        read_weights(Checkpoint.from_directory(str(checkpoint_dir)))
    assert not canary.exists()


@pytest.fixture
def sharded_dir(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A sharded (DCP) checkpoint written by one process, and the weights it holds."""
    directory = tmp_path / "sharded-checkpoint"
    model = MLP(len(COLUMNS), 1, hidden=[4])
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(3, len(COLUMNS))).sum().backward()
    optimizer.step()
    with warnings.catch_warnings():  # DCP outside a process group says it assumes one process
        warnings.simplefilter("ignore", UserWarning)
        save_sharded(directory, model, optimizer)
    return directory, model.state_dict()


def test_a_real_sharded_checkpoint_loads(sharded_dir: tuple[Path, dict[str, torch.Tensor]]) -> None:
    directory, weights = sharded_dir
    read = read_weights(Checkpoint.from_directory(str(directory)))
    assert sorted(read) == sorted(weights)
    assert all(torch.equal(read[name], weights[name]) for name in weights)
    model = MLP(len(COLUMNS), 1, hidden=[4])
    optimizer = torch.optim.Adam(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        load_sharded(directory, model, optimizer)
    assert all(torch.equal(model.state_dict()[name], weights[name]) for name in weights)
    assert optimizer.state_dict()["state"][0]["step"].item() == 1


@pytest.mark.parametrize("with_torch", [False, True])
def test_a_pickled_sharded_checkpoint_index_is_refused_without_running_it(
        sharded_dir: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, with_torch: bool) -> None:
    """DCP's own reader unpickles its ``.metadata`` with plain ``pickle``; rayline's allows only DCP's index
    classes."""
    directory, _ = sharded_dir
    canary = tmp_path / "canary"
    _write_pickle(directory / SHARDS / ".metadata", canary, with_torch)
    with pytest.raises(LoadError, match="refused to unpickle") as caught:
        read_weights(Checkpoint.from_directory(str(directory)))
    assert "\n" not in str(caught.value)
    assert not canary.exists()


@pytest.mark.parametrize("keep", [0, 5, 40, 0.5, 0.95])
def test_a_truncated_weights_file_gives_a_clean_error(package: Path, keep: float) -> None:
    data = (package / WEIGHTS).read_bytes()
    (package / WEIGHTS).write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(LoadError, match=f"{package / WEIGHTS} is not a readable safetensors file: ") as caught:
        PackagedModel.load(package)
    assert "\n" not in str(caught.value)


def test_a_truncated_optimizer_state_gives_a_clean_error(checkpoint_dir: Path) -> None:
    data = (checkpoint_dir / OPTIMIZER).read_bytes()
    (checkpoint_dir / OPTIMIZER).write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match=f"{OPTIMIZER} is not a readable optimizer state") as caught:
        _restore(checkpoint_dir)
    assert "\n" not in str(caught.value)


def test_weights_of_another_model_give_a_clean_error(package: Path, tmp_path: Path) -> None:
    other = PackagedModel.write(tmp_path / "other", MLP(len(COLUMNS), 1, hidden=[7]).state_dict(),
                                _preprocessor_json(), ModelSpec(name="mlp", params={"hidden": [7]}))
    shutil.copy(other / WEIGHTS, package / WEIGHTS)
    with pytest.raises(LoadError, match="does not fit model 'mlp'") as caught:
        PackagedModel.load(package)
    assert "\n" not in str(caught.value)


def test_a_damaged_model_spec_gives_a_clean_error(package: Path) -> None:
    (package / MODEL_SPEC).write_text('{"name": "mlp", "par')
    with pytest.raises(LoadError, match=f"{MODEL_SPEC} is not a model spec"):
        PackagedModel.load(package)


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A module on ``sys.path`` that creates a canary when imported (and has a working factory)."""
    name = f"evil_models_{tmp_path.name.replace('-', '_')}"
    canary = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nfrom rayline.models import MLP\nPath({str(canary)!r}).touch()\n"
        "def make(num_features, num_outputs, **params):\n    return MLP(num_features, num_outputs, **params)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, canary
    sys.modules.pop(name, None)


@pytest.mark.parametrize("allowed", [None, "", "fault_models", "evil", "evil_models", "other, fault_models.sub"])
def test_a_factory_outside_the_allowlist_is_refused_before_import(
        evil_module: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: str | None) -> None:
    module, canary = evil_module
    if allowed is None:
        monkeypatch.delenv(ALLOWED_MODULES_ENV, raising=False)
    else:
        monkeypatch.setenv(ALLOWED_MODULES_ENV, allowed)
    package = _package(tmp_path / "package", f"{module}:make")
    with pytest.raises(SpecError, match=f"'{module}:make' is not allowed.*{ALLOWED_MODULES_ENV}") as caught:
        PackagedModel.load(package)
    assert caught.value.file == str(package / MODEL_SPEC) and caught.value.field == "model.name"
    assert not canary.exists()
    assert module not in sys.modules


def test_a_listed_module_loads(evil_module: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: once the operator lists it, the same package loads (and the module is imported)."""
    module, canary = evil_module
    monkeypatch.setenv(ALLOWED_MODULES_ENV, f"something_else, {module}")
    PackagedModel.load(_package(tmp_path / "package", f"{module}:make"))
    assert canary.exists()


def test_the_trainer_loads_its_own_model_whatever_the_allowlist(
        evil_module: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = evil_module
    monkeypatch.delenv(ALLOWED_MODULES_ENV, raising=False)
    assert isinstance(PackagedModel.load(_package(tmp_path / "package", f"{module}:make"), own_code=True).module, MLP)


@pytest.mark.parametrize(("name", "allowed", "ok"), [
    ("mlp", "", True), ("cnn", "", True),
    ("pkg:f", "pkg", True), ("pkg.sub.deep:f", "pkg", True), ("pkg.sub:f", " other , pkg.sub ", True),
    ("pkgx:f", "pkg", False), ("pkg:f", "pkg.sub", False), ("pkg:f", "", False), ("os:system", "pkg", False),
    ("mlp2", "", False), (":f", "pkg", False),
])
def test_check_allowed(name: str, allowed: str, ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_MODULES_ENV, allowed)
    if ok:
        check_allowed(name)
    else:
        with pytest.raises(SpecError, match=ALLOWED_MODULES_ENV):
            check_allowed(name)


EVIL_URIS = [
    "models:/../etc@champion", "models:/..@x", "models:/digits/../../etc/passwd", "models:/digits/1/../..",
    "models:/digits@../x", "models:/digits@champion/../x", "models:/a..b@x", "models:/.hidden@x", "models:/digits.@x",
    "models:/a\\..\\b@x", "models:/a\\b@x", "models:/digits/1\\..",
    "models:/%2e%2e%2fetc%2fpasswd@x", "models:/%2E%2E%2Fetc@x", "models:/%252e%252e%252fetc@x",
    "models:/%25252e%25252e@x", "models:/digits%2F1", "models:/digits@%2e%2e", "models:/digits%40champion",
    "models:/..%2f..%2fetc@x", "models:/..%252f..%252fetc@x", "models:/digits%00@x",
    "models:/a\x00b@x", "models:/digits/1\x00", "models:/a\nb@x", "models:/digits@champion\n", "models:/digits/1\r",
    "models:/digits@cham\tpion", "models:/digits\x7f@x",
    "/etc/passwd", "/models/digits/1", "~/models", "C:\\models\\digits", "c:/models/digits",
    "file:///etc/passwd", "file://localhost/etc/passwd", "file:/etc/passwd", "FILE:///etc/passwd",
    "runs:/0123456789abcdef/model", "s3://bucket/digits", "http://evil/models:/digits/1", "MODELS:/digits@x",
    "models://digits@x", "models:/", "models:", "digits@champion", "", "models:/digits", "models:/a/b/c",
    "models:/digits/-1", "models:/digits/1a", "models:/digits/\u0661", "models:/\uff44igits@x", "models:/dig its@x",
    "models:/digits@", "models:/@champion", "models:/digits@latest", "models:/digits@LATEST", "models:/digits@v2",
    "models:/digits@a@b", "models:/-digits@x", "models:/" + "a" * 10 + "@" + "b" * 256,
]


@pytest.mark.parametrize("text", EVIL_URIS)
def test_evil_model_uris_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="a model URI looks like models:/name@alias or models:/name/3") as caught:
        ModelUri.parse(text)
    assert isinstance(caught.value, ValueError)  # what pydantic fields and older callers expect
    assert "\n" not in str(caught.value).replace(repr(text), "")


@pytest.mark.parametrize(("text", "why"), [
    ("models:/%2e%2e%2fetc@x", "percent-encoding is not allowed"),
    ("models:/%252e%252e@x", "decodes to 'models:/..@x'"),
    ("models:/../x@y", "path traversal"), ("models:/a\\b@x", "path traversal"), ("models:/a\x00@x", "control"),
    ("/etc/passwd", "filesystem path"), ("file:///etc/passwd", "'file' scheme is not allowed"),
    ("runs:/abc/model", "'runs' scheme is not allowed"), ("models:/digits@latest", "reserved"),
    ("models:/dig its@x", "model name 'dig its' is refused"),
    ("models:/digits/1a", "model version '1a' is refused: use digits only"),
    ("models:/digits", "give exactly one of an alias and a version"), ("digits@champion", "not a model URI"),
])
def test_refusals_say_why(text: str, why: str) -> None:
    with pytest.raises(SpecError, match=re.escape(why)):
        ModelUri.parse(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("models:/digits@champion", ModelUri("digits", alias="champion")),
    ("models:/serve-test/3", ModelUri("serve-test", version="3")),
    ("models:/my.model_v2@canary", ModelUri("my.model_v2", alias="canary")),
    ("models:/t1a2b3c4d/12", ModelUri("t1a2b3c4d", version="12")),
    ("models:/A_b-c.d.e@Challenger_2", ModelUri("A_b-c.d.e", alias="Challenger_2")),
    ("models:/_private@v", ModelUri("_private", alias="v")),
])
def test_legitimate_model_uris_parse(text: str, expected: ModelUri) -> None:
    assert ModelUri.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("parts", [
    {"name": "../etc", "alias": "x"}, {"name": "digits", "version": "1/../2"}, {"name": "digits", "alias": "a/b"},
    {"name": "digits"}, {"name": "digits", "alias": "x", "version": "1"}, {"name": "/abs", "version": "1"},
])
def test_a_uri_built_from_parts_is_checked_too(parts: dict[str, str]) -> None:
    with pytest.raises(RaylineError):
        ModelUri(**parts)


def test_a_service_spec_refuses_a_file_uri() -> None:
    with pytest.raises(SpecError, match="'file' scheme is not allowed") as caught:
        load_service_spec(ROOT / "serving" / "digits.yaml", {"model": "file:///etc/passwd"})
    assert caught.value.field == "model"


UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: reaching MLflow would be a connection error, not a refusal


@pytest.mark.parametrize("call", [
    lambda: rayline.promote("../etc", 1, tracking_uri=UNREACHABLE),
    lambda: rayline.promote("digits", "1/../2", tracking_uri=UNREACHABLE),
    lambda: rayline.promote("digits", 1, "latest", tracking_uri=UNREACHABLE),
    lambda: rayline.rollback("digits", "..%2f", tracking_uri=UNREACHABLE),
])
def test_promote_and_rollback_refuse_malformed_parts_before_reaching_mlflow(call) -> None:
    with pytest.raises(SpecError, match=r"refused|reserved"):
        call()
