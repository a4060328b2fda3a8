"""Unit tests of the spec layer (YAML contract, overrides, model factories, placement, schema, codec).

Pure Python: no Ray cluster, no MLflow server, no fixtures from conftest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray
from ray.data.preprocessors import MinMaxScaler, Normalizer, OneHotEncoder, StandardScaler
from torch import nn

from rayline.cluster.resources import check_placeable, how_many_fit, worker_bundle
from rayline.data.state_codec import dump_preprocessor, load_preprocessor
from rayline.data.validate import check_schema
from rayline.errors import SpecError
from rayline.models import CNN, MLP, build_model, resolve_factory
from rayline.packaged.state_json import decode, encode
from rayline.spec import ModelSpec, PipelineSpec, ScalingSpec, load_spec, with_overrides
from rayline.spec.loading import apply_overrides, parse_overrides

ROOT = Path(__file__).parents[1]
DIGITS = ROOT / "pipelines" / "digits.yaml"


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_pipeline_specs_load(path: Path) -> None:
    assert load_spec(path).name


def write_spec(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


TABULAR_YAML = """\
name: tabular
data:
  source: rows.csv
  label: y
  task: classification
model:
  name: mlp
train:
  epochs: 2
tracking:
  experiment: tabular
  model_name: tabular
"""


def tabular(**sections: Any) -> PipelineSpec:
    """A minimal valid pipeline spec, with sections replaced by ``sections``."""
    document: dict[str, Any] = {
        "name": "tabular",
        "data": {"source": "/data/rows.csv", "label": "y", "task": "classification"},
        "model": {"name": "mlp"},
        "train": {"epochs": 1},
        "tracking": {"experiment": "tabular", "model_name": "tabular"},
    }
    document.update(sections)
    return PipelineSpec.model_validate(document)


# --------------------------------------------------------------------------- loading


def test_load_digits_spec() -> None:
    spec = load_spec(DIGITS)
    assert spec.name == "digits"
    assert spec.file == str(DIGITS)
    assert spec.data.source == "sklearn:digits"  # bundled: not resolved as a path
    assert spec.data.label == "target"
    assert spec.data.task == "classification"
    assert (spec.data.split.validation, spec.data.split.test, spec.data.split.seed) == (0.1, 0.2, 42)
    assert len(spec.preprocess) == 1
    assert spec.preprocess[0].type == "min_max_scale"
    assert spec.preprocess[0].columns == ["pixel_*"]
    assert spec.model.name == "cnn"
    assert spec.model.params["input_shape"] == [1, 8, 8]
    assert spec.train.epochs == 10
    assert spec.train.scaling.num_workers == 2
    assert spec.train.scaling.use_gpu is False
    assert spec.train.scaling.resources_per_worker == {"CPU": 1.0}
    assert spec.tracking.alias == "champion"
    assert spec.promotion == ("test_accuracy", "max")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    assert info.value.file == str(missing)
    assert str(missing) in str(info.value)


def test_non_mapping_yaml_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "- just\n- a list\n")
    with pytest.raises(SpecError, match="mapping") as info:
        load_spec(path)
    assert info.value.file == str(path)


def test_invalid_yaml_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        load_spec(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("bogus: 1\n", "bogus"),
        (None, "train.epochz"),
    ],
)
def test_unknown_key_names_file_and_field(tmp_path: Path, extra: str | None, field: str) -> None:
    text = TABULAR_YAML + extra if extra else TABULAR_YAML.replace("  epochs: 2\n", "  epochs: 2\n  epochz: 3\n")
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert info.value.field == field
    assert info.value.file == str(path)
    assert str(path) in message
    assert field in message
    assert "unknown key" in message


def test_unknown_nested_key_in_digits_via_override() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, ["train.epochz=3"])
    assert info.value.field == "train.epochz"
    assert str(DIGITS) in str(info.value)
    assert "train.epochz" in str(info.value)
    assert "unknown key" in str(info.value)


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    path = write_spec(tmp_path, TABULAR_YAML.replace("epochs: 2", 'epochs: "ten"'))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "train.epochs"
    assert "train.epochs" in str(info.value)
    assert "'ten'" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_required_field_named(tmp_path: Path) -> None:
    path = write_spec(tmp_path, TABULAR_YAML.replace("  label: y\n", ""))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "data.label"


def test_every_problem_is_listed_one_per_line_with_its_path(tmp_path: Path) -> None:
    text = TABULAR_YAML.removeprefix("name: tabular\n").replace("epochs: 2", 'epochs: "ten"') + "bogus: 1\n"
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.field, info.value.message) == ("name", "Field required")  # the first problem
    assert [problem.field for problem in info.value.problems] == ["name", "train.epochs", "bogus"]
    assert str(info.value).splitlines() == [
        f"{path}: name: Field required",
        f"{path}: train.epochs: Input should be a valid integer, unable to parse string as an integer (got 'ten')",
        f"{path}: bogus: unknown key",  # nothing close to suggest
    ]


def test_unknown_key_suggests_the_nearest_known_one(tmp_path: Path) -> None:
    path = write_spec(tmp_path, TABULAR_YAML.replace("  epochs: 2\n", "  epochs: 2\n  epocs: 3\n"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "train.epocs"
    assert str(info.value) == f"{path}: train.epocs: unknown key (did you mean 'epochs'?)"


def test_unknown_key_in_a_preprocess_step_suggests_a_key_of_that_step() -> None:
    step = {"type": "impute", "columns": ["pixel_*"], "strateg": "mean", "fill_value": [0]}
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, {"preprocess": [{"type": "hash", "columns": ["pixel_*"], "num_bucket": 8}, step],
                           "train.scaling.num_worker": 1})
    assert info.value.problems == (
        ("preprocess.0.num_bucket", "unknown key (did you mean 'num_buckets'?)"),
        ("preprocess.1.fill_value", "Input should be a valid number"),  # the union's member names are left out
        ("preprocess.1.fill_value", "Input should be a valid string"),
        ("preprocess.1.strateg", "unknown key (did you mean 'strategy'?)"),
        ("train.scaling.num_worker", "unknown key (did you mean 'num_workers'?)"),
    )


def test_a_single_problem_prints_as_one_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path, TABULAR_YAML.replace("  label: y\n", ""))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: data.label: Field required"
    assert info.value.problems == (("data.label", "Field required"),)
    assert str(SpecError("bad", field="x")) == "x: bad" and SpecError("bad").problems == ((None, "bad"),)


def test_unknown_key_of_a_service_spec_suggests_too() -> None:
    from rayline.spec import load_service_spec

    with pytest.raises(SpecError) as info:
        load_service_spec(ROOT / "serving" / "digits.yaml",
                          {"canary": {"model": "models:/digits/2", "trafic_percent": 5}})
    assert info.value.field == "canary.trafic_percent"
    assert "did you mean 'traffic_percent'?" in str(info.value)


# --------------------------------------------------------------------------- overrides


def test_overrides_list_form() -> None:
    spec = load_spec(DIGITS, ["train.epochs=3", "train.scaling.num_workers=1"])
    assert spec.train.epochs == 3
    assert spec.train.scaling.num_workers == 1
    assert spec.train.batch_size == 32  # untouched siblings survive


def test_overrides_dict_form() -> None:
    spec = load_spec(DIGITS, {"train.epochs": 3})
    assert spec.train.epochs == 3
    assert spec.train.scaling.num_workers == 2


def test_overrides_dict_replaces_a_whole_section() -> None:
    spec = load_spec(DIGITS, {"model": {"name": "mlp", "params": {"hidden": [8]}}})
    assert spec.model.name == "mlp"
    assert spec.model.params == {"hidden": [8]}


def test_override_values_are_yaml_scalars() -> None:
    parsed = parse_overrides(["a=3", "b=true", "c=0.5", "d=hello", "e=", "f=[1, 2]", "g=a=b"])
    assert parsed == {"a": 3, "b": True, "c": 0.5, "d": "hello", "e": "", "f": [1, 2], "g": "a=b"}
    assert isinstance(parsed["b"], bool)
    spec = load_spec(DIGITS, ["train.scaling.use_gpu=true"])
    assert spec.train.scaling.use_gpu is True


def test_parse_overrides_none_and_mapping() -> None:
    assert parse_overrides(None) == {}
    assert parse_overrides({"x.y": "3"}) == {"x.y": "3"}  # mapping values are taken as given


def test_list_index_override() -> None:
    spec = load_spec(DIGITS, ["preprocess.0.type=standard_scale"])
    assert spec.preprocess[0].type == "standard_scale"
    assert spec.preprocess[0].columns == ["pixel_*"]
    negative = load_spec(DIGITS, {"preprocess.-1.columns": ["pixel_1"]})
    assert negative.preprocess[0].columns == ["pixel_1"]


def test_list_index_out_of_range_refused() -> None:
    with pytest.raises(SpecError, match="out of range") as info:
        load_spec(DIGITS, {"preprocess.5.type": "drop"})
    assert info.value.field == "preprocess.5.type"


def test_list_needs_an_index() -> None:
    with pytest.raises(SpecError, match="use an index") as info:
        load_spec(DIGITS, {"preprocess.first": 1})
    assert info.value.field == "preprocess.first"


@pytest.mark.parametrize("bad", ["foo", "=3", " =3"])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, [bad])
    assert info.value.field == "--set"
    assert repr(bad) in str(info.value)


def test_override_creating_unknown_key_refused() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, ["train.scaling.num_workerz=1"])
    assert info.value.field == "train.scaling.num_workerz"
    assert "unknown key" in str(info.value)
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, ["newsection.deep.key=1"])
    assert info.value.field == "newsection"


def test_apply_overrides_does_not_mutate_input() -> None:
    document = {"train": {"epochs": 1, "scaling": {"num_workers": 2}}, "items": [{"a": 1}]}
    result = apply_overrides(document, {"train.scaling.num_workers": 4, "items.0.a": 5, "new.key": "v"})
    assert result == {"train": {"epochs": 1, "scaling": {"num_workers": 4}}, "items": [{"a": 5}],
                      "new": {"key": "v"}}
    assert document == {"train": {"epochs": 1, "scaling": {"num_workers": 2}}, "items": [{"a": 1}]}


def test_with_overrides_keeps_file_and_revalidates() -> None:
    spec = load_spec(DIGITS)
    assert with_overrides(spec, None) is spec
    updated = with_overrides(spec, ["train.epochs=4"])
    assert updated.train.epochs == 4
    assert updated.file == spec.file == str(DIGITS)
    assert spec.train.epochs == 10
    with pytest.raises(SpecError) as info:
        with_overrides(spec, ["train.epochs=0"])
    assert info.value.field == "train.epochs"
    assert info.value.file == str(DIGITS)


# --------------------------------------------------------------------------- semantic validation


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"data.split.test": 1.0}, "data.split.test"),
        ({"data.split.test": 1.5}, "data.split.test"),
        ({"data.split.test": 0.0}, "data.split.test"),
        ({"data.split.validation": -0.1}, "data.split.validation"),
        ({"data.split.validation": 0.5, "data.split.test": 0.5}, "data.split"),
        ({"data.split.validation": 0.3, "data.split.test": 0.8}, "data.split"),
    ],
)
def test_split_fractions_refused(overrides: dict[str, float], field: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, overrides)
    assert info.value.field == field


def test_split_fractions_accepted() -> None:
    spec = load_spec(DIGITS, {"data.split.validation": 0.0, "data.split.test": 0.5})
    assert (spec.data.split.validation, spec.data.split.test) == (0.0, 0.5)


def test_split_sum_message() -> None:
    with pytest.raises(SpecError, match="training fraction"):
        load_spec(DIGITS, {"data.split.validation": 0.5, "data.split.test": 0.5})


def test_impute_constant_needs_fill_value() -> None:
    with pytest.raises(SpecError, match="fill_value") as info:
        load_spec(DIGITS, {"preprocess.0": {"type": "impute", "strategy": "constant", "columns": ["pixel_*"]}})
    assert info.value.field is not None
    assert info.value.field.startswith("preprocess.0")
    spec = load_spec(DIGITS, {"preprocess.0": {"type": "impute", "strategy": "constant", "fill_value": 0,
                                               "columns": ["pixel_*"]}})
    assert spec.preprocess[0].fill_value == 0


def test_unknown_step_type_refused() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, {"preprocess.0.type": "normalize"})
    assert info.value.field is not None
    assert info.value.field.startswith("preprocess.0")


def test_unknown_promotion_metric_refused() -> None:
    with pytest.raises(SpecError, match="promotion_metric") as info:
        load_spec(DIGITS, {"tracking.promotion_metric": "f1"})
    assert "test_accuracy" in str(info.value)
    with pytest.raises(SpecError, match="promotion_metric"):
        load_spec(DIGITS, {"tracking.promotion_metric": "test_rmse"})  # a regression metric


def test_known_promotion_metric_accepted() -> None:
    spec = load_spec(DIGITS, {"tracking.promotion_metric": "test_loss"})
    assert spec.promotion == ("test_loss", "min")
    spec = load_spec(DIGITS, {"tracking.promotion_metric": "cost_estimate", "tracking.promotion_mode": "max"})
    assert spec.promotion == ("cost_estimate", "max")


def test_promotion_defaults() -> None:
    assert tabular().promotion == ("test_accuracy", "max")
    regression = tabular(data={"source": "/d.csv", "label": "y", "task": "regression"})
    assert regression.promotion == ("test_rmse", "min")
    mode_only = tabular(tracking={"experiment": "e", "model_name": "m", "promotion_mode": "min"})
    assert mode_only.promotion == ("test_accuracy", "min")


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "a/b"])
def test_bad_pipeline_name_refused(name: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, {"name": name})
    assert info.value.field == "name"


def test_negative_resources_refused() -> None:
    with pytest.raises(SpecError, match="negative") as info:
        load_spec(DIGITS, {"train.scaling.resources_per_worker": {"CPU": -1}})
    assert info.value.field == "train.scaling"


# --------------------------------------------------------------------------- data.source resolution


def test_relative_source_resolved_against_spec_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    path = write_spec(spec_dir, TABULAR_YAML)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    spec = load_spec(path)
    assert spec.data.source == str((spec_dir / "rows.csv").resolve())
    assert Path(spec.data.source).is_absolute()


def test_relative_source_with_relative_spec_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    write_spec(spec_dir, TABULAR_YAML.replace("rows.csv", "data/rows.csv"))
    monkeypatch.chdir(tmp_path)
    spec = load_spec("specs/spec.yaml")
    assert spec.data.source == str((spec_dir / "data" / "rows.csv").resolve())


@pytest.mark.parametrize(
    "source",
    ["s3://bucket/rows.parquet", "sklearn:digits", "palmerpenguins:penguins",
     "synthetic://classification?rows=10&features=3&classes=2"],
)
def test_uris_and_bundled_sources_kept(tmp_path: Path, source: str) -> None:
    path = write_spec(tmp_path, TABULAR_YAML.replace("rows.csv", f'"{source}"'))
    assert load_spec(path).data.source == source


def test_absolute_source_kept(tmp_path: Path) -> None:
    absolute = str(tmp_path / "abs" / "rows.csv")
    path = write_spec(tmp_path, TABULAR_YAML.replace("rows.csv", absolute))
    assert load_spec(path).data.source == absolute


# --------------------------------------------------------------------------- models


def test_resolve_zoo_names() -> None:
    assert resolve_factory("mlp") is MLP
    assert resolve_factory("cnn") is CNN


def test_resolve_import_path() -> None:
    assert resolve_factory("rayline.models.zoo:MLP") is MLP


@pytest.mark.parametrize("name", ["resnet", "module:", ":factory", "no_colon_here"])
def test_resolve_neither_zoo_nor_path(name: str) -> None:
    with pytest.raises(SpecError, match="neither a zoo model") as info:
        resolve_factory(name)
    assert info.value.field == "model.name"


def test_resolve_module_not_found() -> None:
    with pytest.raises(SpecError, match="cannot import 'rayline_no_such_module_xyz'") as info:
        resolve_factory("rayline_no_such_module_xyz:build")
    assert info.value.field == "model.name"
    assert "ModuleNotFoundError" in str(info.value)


def test_resolve_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rayline_broken_factory_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rayline_broken_factory_mod", raising=False)
    with pytest.raises(SpecError, match="RuntimeError: boom at import") as info:
        resolve_factory("rayline_broken_factory_mod:build")
    assert info.value.field == "model.name"


@pytest.mark.parametrize("name", ["rayline.models.zoo:Missing", "rayline.models.zoo:math"])
def test_resolve_missing_or_not_callable_attribute(name: str) -> None:
    with pytest.raises(SpecError, match="has no callable") as info:
        resolve_factory(name)
    assert info.value.field == "model.name"


def test_build_model_zoo_and_digits() -> None:
    model = build_model(ModelSpec(name="mlp", params={"hidden": [8]}), num_features=4, num_outputs=3)
    assert isinstance(model, MLP)
    assert model.net[-1].out_features == 3
    cnn = build_model(load_spec(DIGITS).model, num_features=64, num_outputs=10)
    assert isinstance(cnn, CNN)
    assert cnn.input_shape == (1, 8, 8)


def test_build_model_bad_params() -> None:
    with pytest.raises(SpecError, match="mlp") as info:
        build_model(ModelSpec(name="mlp", params={"no_such_param": 1}), num_features=4, num_outputs=2)
    assert info.value.field == "model.params"


def test_build_model_cnn_shape_mismatch() -> None:
    spec = ModelSpec(name="cnn", params={"input_shape": [1, 8, 8]})
    with pytest.raises(SpecError, match="input_shape") as info:
        build_model(spec, num_features=10, num_outputs=2)
    assert info.value.field == "model.params"
    assert "10 features" in str(info.value)


def test_build_model_factory_not_returning_a_module() -> None:
    with pytest.raises(SpecError, match=r"not a torch\.nn\.Module") as info:
        build_model(ModelSpec(name="builtins:dict"), num_features=4, num_outputs=2)
    assert info.value.field == "model.name"


def test_build_model_user_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rayline_user_factory_mod.py").write_text(
        "from torch import nn\n"
        "def build(num_features, num_outputs, width=2):\n"
        "    return nn.Sequential(nn.Linear(num_features, width), nn.Linear(width, num_outputs))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rayline_user_factory_mod", raising=False)
    model = build_model(ModelSpec(name="rayline_user_factory_mod:build", params={"width": 5}), 3, 7)
    assert isinstance(model, nn.Sequential)
    assert (model[0].in_features, model[0].out_features, model[1].out_features) == (3, 5, 7)


# --------------------------------------------------------------------------- placement


def test_worker_bundle() -> None:
    assert worker_bundle(ScalingSpec()) == {"CPU": 1.0}
    assert worker_bundle(ScalingSpec(use_gpu=True)) == {"CPU": 1.0, "GPU": 1.0}
    assert worker_bundle(ScalingSpec(use_gpu=True, resources_per_worker={"CPU": 2, "GPU": 0.5})) == {
        "CPU": 2.0, "GPU": 0.5}
    assert worker_bundle(ScalingSpec(resources_per_worker={"CPU": 1, "memory": 0})) == {"CPU": 1.0}


@pytest.mark.parametrize(
    ("scaling", "nodes"),
    [
        (ScalingSpec(num_workers=2), [{"CPU": 2.0}]),
        (ScalingSpec(num_workers=4), [{"CPU": 2.0}, {"CPU": 2.0}]),
        (ScalingSpec(num_workers=3, resources_per_worker={"CPU": 0.5}), [{"CPU": 1.5}]),
        (ScalingSpec(num_workers=2, use_gpu=True), [{"CPU": 4.0, "GPU": 2.0}]),
        (ScalingSpec(num_workers=1, resources_per_worker={}), [{"CPU": 1.0}]),
    ],
)
def test_check_placeable_fits(scaling: ScalingSpec, nodes: list[dict[str, float]]) -> None:
    check_placeable(scaling, nodes=nodes)


@pytest.mark.parametrize(("footprint", "available", "fits"), [
    ({"CPU": 1.1}, {"CPU": 4.0}, 3),  # a sweep's 1-worker trials on the 4-CPU test cluster
    ({"CPU": 2.1}, {"CPU": 2.0}, 0),
    ({"CPU": 0.6}, {"CPU": 1.8}, 3),  # fractions that divide exactly are not lost to rounding
    ({"CPU": 1.1, "GPU": 1.0}, {"CPU": 16.0, "GPU": 2.0}, 2),  # the scarcest resource decides
    ({"CPU": 1.1, "GPU": 1.0}, {"CPU": 16.0}, 0),
])
def test_how_many_trials_fit(footprint: dict[str, float], available: dict[str, float], fits: int) -> None:
    assert how_many_fit(footprint, available) == fits


def test_check_placeable_too_many_workers() -> None:
    with pytest.raises(SpecError, match="at most 3") as info:
        check_placeable(ScalingSpec(num_workers=4), nodes=[{"CPU": 2.0}, {"CPU": 1.5}])
    assert info.value.field == "train.scaling.num_workers"


def test_check_placeable_bundle_fits_no_node() -> None:
    scaling = ScalingSpec(num_workers=1, resources_per_worker={"CPU": 4.0})
    with pytest.raises(SpecError, match="no node has that much") as info:
        check_placeable(scaling, nodes=[{"CPU": 2.0}, {"CPU": 3.0}])
    assert info.value.field == "train.scaling.resources_per_worker"


def test_check_placeable_bundle_split_across_nodes_refused() -> None:
    # 2 CPUs on one node and 2 GPUs on another: the total is enough, no single node is
    scaling = ScalingSpec(num_workers=1, resources_per_worker={"CPU": 2.0, "GPU": 2.0})
    with pytest.raises(SpecError) as info:
        check_placeable(scaling, nodes=[{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 2.0}])
    assert info.value.field == "train.scaling.resources_per_worker"


def test_check_placeable_gpu_on_cpu_only_nodes() -> None:
    with pytest.raises(SpecError) as info:
        check_placeable(ScalingSpec(num_workers=1, use_gpu=True), nodes=[{"CPU": 8.0}, {"CPU": 8.0}])
    assert info.value.field == "train.scaling.use_gpu"


def test_check_placeable_no_nodes() -> None:
    with pytest.raises(SpecError):
        check_placeable(ScalingSpec(num_workers=1), nodes=[])


# --------------------------------------------------------------------------- schema


PIXELS = {f"pixel_{i}": pa.float64() for i in range(4)}


def test_check_schema_digits_like() -> None:
    spec = load_spec(DIGITS)
    features, steps = check_schema(spec, {**PIXELS, "target": pa.int64()})
    assert features == ["pixel_0", "pixel_1", "pixel_2", "pixel_3"]
    assert [step.type for step in steps] == ["min_max_scale"]
    assert steps[0].columns == features
    assert spec.preprocess[0].columns == ["pixel_*"]  # the spec itself is not changed


def test_check_schema_label_missing() -> None:
    spec = tabular()
    with pytest.raises(SpecError) as info:
        check_schema(spec, {"a": pa.float64(), "b": pa.int32()})
    assert info.value.field == "data.label"
    assert "'y'" in str(info.value)
    assert "a, b" in str(info.value)


def test_check_schema_regression_label_must_be_numeric() -> None:
    spec = tabular(data={"source": "/d.csv", "label": "y", "task": "regression"})
    with pytest.raises(SpecError, match="not numeric") as info:
        check_schema(spec, {"a": pa.float64(), "y": pa.string()})
    assert info.value.field == "data.label"
    check_schema(spec, {"a": pa.float64(), "y": pa.float32()})


def test_check_schema_string_feature_needs_encoding() -> None:
    spec = tabular()
    schema = {"a": pa.float64(), "colour": pa.string(), "y": pa.int64()}
    with pytest.raises(SpecError, match="one_hot or hash") as info:
        check_schema(spec, schema)
    assert info.value.field == "data.features"
    assert "'colour'" in str(info.value)


@pytest.mark.parametrize("step", [{"type": "one_hot"}, {"type": "hash"}, {"type": "drop"}])
def test_check_schema_string_feature_encoded(step: dict[str, Any]) -> None:
    spec = tabular(preprocess=[{**step, "columns": ["colour"]}])
    schema = {"a": pa.float64(), "colour": pa.string(), "y": pa.string()}
    features, steps = check_schema(spec, schema)
    assert features == ["a", "colour"]
    assert steps[0].columns == ["colour"]


def test_check_schema_numeric_types() -> None:
    spec = tabular()
    schema = {"i": pa.int8(), "f": pa.float16(), "b": pa.bool_(), "d": pa.decimal128(5, 2), "y": pa.int64()}
    features, _ = check_schema(spec, schema)
    assert features == ["i", "f", "b", "d"]
    with pytest.raises(SpecError, match="'t'"):
        check_schema(spec, {"t": pa.timestamp("s"), "y": pa.int64()})


def test_check_schema_numpy_dtypes() -> None:
    spec = tabular()
    features, _ = check_schema(spec, {"a": "float32", "b": "bool", "y": "int64"})
    assert features == ["a", "b"]
    with pytest.raises(SpecError, match="'c'"):
        check_schema(spec, {"a": "float32", "c": "object", "y": "int64"})


def test_check_schema_explicit_features() -> None:
    spec = tabular(data={"source": "/d.csv", "label": "y", "task": "classification", "features": ["b", "a"]})
    features, _ = check_schema(spec, {"a": pa.float64(), "b": pa.float64(), "c": pa.string(), "y": pa.int64()})
    assert features == ["b", "a"]  # the unlisted string column c is not a feature


def test_check_schema_explicit_feature_missing() -> None:
    spec = tabular(data={"source": "/d.csv", "label": "y", "task": "classification", "features": ["a", "zz"]})
    with pytest.raises(SpecError, match="'zz'") as info:
        check_schema(spec, {"a": pa.float64(), "y": pa.int64()})
    assert info.value.field == "data.features"


def test_check_schema_label_as_feature_refused() -> None:
    spec = tabular(data={"source": "/d.csv", "label": "y", "task": "classification", "features": ["a", "y"]})
    with pytest.raises(SpecError, match="also listed as a feature") as info:
        check_schema(spec, {"a": pa.float64(), "y": pa.int64()})
    assert info.value.field == "data.features"


def test_check_schema_no_features() -> None:
    with pytest.raises(SpecError, match="no feature columns") as info:
        check_schema(tabular(), {"y": pa.int64()})
    assert info.value.field == "data.features"


def test_check_schema_glob_expansion() -> None:
    spec = tabular(preprocess=[
        {"type": "standard_scale", "columns": ["x*", "x1", "other"]},
        {"type": "min_max_scale", "columns": ["?2"]},
    ])
    schema = {"x1": pa.float64(), "other": pa.float64(), "x2": pa.float64(), "xx": pa.int32(), "y": pa.int64()}
    features, steps = check_schema(spec, schema)
    assert features == ["x1", "other", "x2", "xx"]
    assert steps[0].columns == ["x1", "x2", "xx", "other"]  # in feature order, no duplicates
    assert steps[1].columns == ["x2"]


def test_check_schema_glob_is_case_sensitive_and_skips_label() -> None:
    spec = tabular(preprocess=[{"type": "standard_scale", "columns": ["*"]}])
    features, steps = check_schema(spec, {"A": pa.float64(), "b": pa.float64(), "y": pa.int64()})
    assert steps[0].columns == features == ["A", "b"]
    lower = tabular(preprocess=[{"type": "standard_scale", "columns": ["a"]}])
    with pytest.raises(SpecError):
        check_schema(lower, {"A": pa.float64(), "y": pa.int64()})


@pytest.mark.parametrize(("index", "pattern"), [(0, "z*"), (1, "y")])
def test_check_schema_pattern_matching_nothing(index: int, pattern: str) -> None:
    steps = [{"type": "standard_scale", "columns": ["x*"]}, {"type": "min_max_scale", "columns": ["x1"]}]
    steps[index]["columns"] = [pattern]  # "y" is the label: never a step column
    spec = tabular(preprocess=steps)
    with pytest.raises(SpecError, match="matches no feature column") as info:
        check_schema(spec, {"x1": pa.float64(), "y": pa.int64()})
    assert info.value.field == f"preprocess.{index}.columns"
    assert repr(pattern) in str(info.value)


# --------------------------------------------------------------------------- preprocessor state codec
# Ray Data preprocessors with hand-set stats: transform_batch on pandas needs no Ray cluster
# (importing ray.data.preprocessors does not start one).


def _roundtrip(preprocessor: Any) -> Any:
    state = json.loads(json.dumps(dump_preprocessor(preprocessor)))
    return load_preprocessor(state)


def test_codec_standard_scaler_roundtrip() -> None:
    ray_was_up = ray.is_initialized()  # True when the integration tests' session platform is running
    scaler = StandardScaler(columns=["a"])
    scaler.stats_ = {"mean(a)": 1.0, "std(a)": 2.0}
    restored = _roundtrip(scaler)
    assert type(restored) is StandardScaler
    assert restored.stats_ == {"mean(a)": 1.0, "std(a)": 2.0}
    assert restored.columns == ["a"]
    batch = pd.DataFrame({"a": [1.0, 3.0, 5.0], "b": [9.0, 9.0, 9.0]})
    expected = scaler.transform_batch(batch.copy())
    assert expected["a"].tolist() == [0.0, 1.0, 2.0]
    pd.testing.assert_frame_equal(restored.transform_batch(batch.copy()), expected)
    assert ray.is_initialized() == ray_was_up  # transforming a pandas batch starts no Ray cluster


def test_codec_min_max_scaler_roundtrip() -> None:
    scaler = MinMaxScaler(columns=["a"])
    scaler.stats_ = {"min(a)": 0.0, "max(a)": 16.0}
    restored = _roundtrip(scaler)
    batch = pd.DataFrame({"a": [0.0, 8.0, 16.0]})
    assert restored.transform_batch(batch.copy())["a"].tolist() == [0.0, 0.5, 1.0]


def test_codec_one_hot_string_vocabulary() -> None:
    encoder = OneHotEncoder(columns=["c"])
    encoder.stats_ = {"unique_values(c)": {"x": 0, "y": 1}}
    restored = _roundtrip(encoder)
    assert restored.stats_ == {"unique_values(c)": {"x": 0, "y": 1}}
    batch = pd.DataFrame({"c": ["x", "y", "z"]})
    encoded = restored.transform_batch(batch.copy())
    assert [list(v) for v in encoded["c"]] == [[1, 0], [0, 1], [0, 0]]
    pd.testing.assert_frame_equal(encoded, encoder.transform_batch(batch.copy()))


def test_codec_one_hot_int_vocabulary() -> None:
    encoder = OneHotEncoder(columns=["c"])
    encoder.stats_ = {"unique_values(c)": {3: 0, 7: 1}}
    state = json.loads(json.dumps(dump_preprocessor(encoder)))
    assert "__pairs__" in state["stats"]["unique_values(c)"]  # JSON would turn bare int keys into strings
    restored = _roundtrip(encoder)
    assert restored.stats_ == {"unique_values(c)": {3: 0, 7: 1}}
    assert all(isinstance(key, int) for key in restored.stats_["unique_values(c)"])
    batch = pd.DataFrame({"c": [3, 7, 5]})
    encoded = restored.transform_batch(batch.copy())
    assert [list(v) for v in encoded["c"]] == [[1, 0], [0, 1], [0, 0]]


def test_codec_tuple_and_dtype_values() -> None:
    value = {"t": (1, "a"), "d": np.dtype("float32"), "n": np.int64(5), (1, 2): [np.float32(0.5)]}
    decoded = decode(json.loads(json.dumps(encode(value))))
    assert decoded == {"t": (1, "a"), "d": np.dtype("float32"), "n": 5, (1, 2): [0.5]}
    assert isinstance(decoded["t"], tuple)
    with pytest.raises(TypeError, match="cannot store"):
        encode({"x": object()})


def test_codec_unknown_type_refused() -> None:
    scaler = StandardScaler(columns=["a"])
    scaler.stats_ = {"mean(a)": 1.0, "std(a)": 2.0}
    state = dump_preprocessor(scaler)
    state["type"] = "builtins.evil"
    with pytest.raises(ValueError, match="unknown preprocessor type"):
        load_preprocessor(state)


def test_codec_refuses_to_dump_unlisted_class() -> None:
    with pytest.raises(TypeError, match="not a storable preprocessor"):
        dump_preprocessor(Normalizer(columns=["a"]))


@pytest.mark.parametrize(("overrides", "field"), [
    ({"preprocess": [{"type": "impute", "columns": ["pixel_*"], "strategy": "constant"}]}, "preprocess.0"),
    ({"preprocess": [{"type": "min_max_scale", "columns": []}]}, "preprocess.0.columns"),
    ({"tracking.promotion_metric": "test_rmse"}, "tracking.promotion_metric"),
])
def test_error_fields_are_document_paths(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(DIGITS, overrides)
    assert caught.value.field == field
    assert caught.value.file == str(DIGITS)
    assert len(str(caught.value)) < 300  # the message never dumps the whole spec


@pytest.mark.parametrize(("override", "field"), [
    ("preprocess.0.columns.0.x=1", "preprocess.0.columns.0.x"),
    ("preprocess.9.type=drop", "preprocess.9.type"),
    ("train.epochs.deep=1", "train.epochs"),  # the scalar became a section: validation names it
])
def test_bad_override_paths_are_spec_errors_naming_the_file(override: str, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(DIGITS, [override])
    assert caught.value.file == str(DIGITS)
    assert caught.value.field == field


def test_a_single_override_string_is_one_override() -> None:
    assert load_spec(DIGITS, "train.epochs=3").train.epochs == 3


def test_shipped_service_spec_loads() -> None:
    from rayline.spec import load_service_spec

    spec = load_service_spec(ROOT / "serving" / "digits.yaml")
    assert spec.model_name == "digits" and spec.host == "127.0.0.1"
    assert spec.autoscaling.min_replicas <= spec.autoscaling.max_replicas


@pytest.mark.parametrize(("overrides", "field"), [
    ({"model": "digits"}, "model"),
    ({"autoscaling.min_replicas": 3, "autoscaling.max_replicas": 2}, "autoscaling"),
    ({"api_keys": ["k"]}, "api_keys"),
    ({"max_queued_requests": 0}, "max_queued_requests"),
    ({"canary.model": "models:/other@challenger"}, "canary.model"),
    ({"canary.model": "models:/digits@challenger", "canary.traffic_percent": 100}, "canary.traffic_percent"),
])
def test_bad_service_specs_name_the_field(overrides: dict[str, Any], field: str) -> None:
    from rayline.spec import load_service_spec

    with pytest.raises(SpecError) as caught:
        load_service_spec(ROOT / "serving" / "digits.yaml", overrides)
    assert caught.value.field == field
    assert caught.value.file == str(ROOT / "serving" / "digits.yaml")


def test_canary_spec_is_a_second_version_of_the_served_model() -> None:
    from rayline.spec import load_service_spec

    spec = load_service_spec(ROOT / "serving" / "digits.yaml", {"canary.model": "models:/digits/4"})
    assert str(spec.canary.model) == "models:/digits/4" and spec.canary.traffic_percent == 10
    assert spec.canary.model.version == "4" and spec.model.alias == "champion"


@pytest.mark.parametrize("text", ["models:/digits", "models:/a/b/c", "digits@champion", "models:/x@", "models:/x/1a",
                                  "models:/ x@y"])
def test_model_uris_are_parsed_once_and_refused_when_malformed(text: str) -> None:
    from rayline.spec import ModelUri

    with pytest.raises(ValueError, match="models:/name@alias"):
        ModelUri.parse(text)
    assert ModelUri.parse("models:/digits@champion") == ModelUri("digits", alias="champion")
    assert str(ModelUri.parse("models:/digits/12")) == "models:/digits/12"


def test_exported_serve_config_is_the_committed_one_and_round_trips() -> None:
    """serving/digits.serve.yaml is `rayline serve serving/digits.yaml --export`: same spec, no drift."""
    import yaml

    from rayline.serving.config import APP_BUILDER, write_serve_config
    from rayline.spec import ServiceSpec, load_service_spec

    spec = load_service_spec(ROOT / "serving" / "digits.yaml")
    exported = write_serve_config(spec, "serving/digits.yaml")
    assert (ROOT / "serving" / "digits.serve.yaml").read_text() == exported
    config = yaml.safe_load(exported)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 60.0}
    [application] = config["applications"]
    assert application["import_path"] == APP_BUILDER and "runtime_env" not in application
    assert ServiceSpec.model_validate(application["args"]) == spec
    with_registry = yaml.safe_load(write_serve_config(spec, "x.yaml", "http://127.0.0.1:5000"))
    assert with_registry["applications"][0]["runtime_env"] == {
        "env_vars": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}}


def test_service_auth_sources_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rayline.serving.auth import authorized, load_key_digests
    from rayline.spec.service import AuthSpec

    with pytest.raises(SpecError) as caught:
        load_key_digests(AuthSpec(api_keys_env="RAYLINE_TEST_NO_SUCH_VAR"))
    assert caught.value.field == "auth.api_keys_env"
    with pytest.raises(SpecError) as caught:
        load_key_digests(AuthSpec(api_keys_file=str(tmp_path / "absent")))
    assert caught.value.field == "auth.api_keys_file"
    (tmp_path / "keys").write_text("alpha\n\nbeta\n")
    digests = load_key_digests(AuthSpec(api_keys_file=str(tmp_path / "keys")))
    assert "alpha" not in "".join(digests) and len(digests) == 2
    assert authorized("Bearer beta", digests) and not authorized("Bearer gamma", digests)
    assert not authorized(None, digests) and not authorized("beta", digests) and authorized(None, [])


def test_serve_ingress_choice_reaches_ray_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from rayline.cluster.embedded import _chosen_ingress, _ingress_env
    from rayline.errors import RaylineError

    assert _ingress_env("proxy") == {}
    haproxy = _ingress_env("haproxy")
    assert haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # HAProxy's stats page and exporter get free ports, not 8404/9101 shared by every cluster on the machine.
    assert {"8404", "9101"}.isdisjoint({haproxy["RAY_SERVE_HAPROXY_STATS_PORT"],
                                        haproxy["RAY_SERVE_HAPROXY_METRICS_PORT"]})
    monkeypatch.delenv("RAYLINE_SERVE_INGRESS", raising=False)
    assert _chosen_ingress() == "haproxy"
    monkeypatch.setenv("RAYLINE_SERVE_INGRESS", "nginx")
    with pytest.raises(RaylineError, match="RAYLINE_SERVE_INGRESS='nginx'"):
        _chosen_ingress()


@pytest.mark.parametrize("query", ["rows=0", "rows=-5", "features=0", "classes=1", "seed=-1", "features=100000"])
def test_synthetic_options_out_of_range_are_refused_naming_the_source(query: str, tmp_path: Path) -> None:
    from rayline.data.sources import read_source
    from rayline.spec import DataSpec

    data = DataSpec(source=f"synthetic://classification?{query}", label="label", task="classification")
    with pytest.raises(SpecError) as refused:
        read_source(data, str(tmp_path))
    assert refused.value.field == "data.source" and query.split("=")[0] in str(refused.value)
    assert not any(tmp_path.iterdir())  # refused before anything was generated


def test_yaml_with_a_duplicate_key_is_refused_naming_the_key_and_both_lines(tmp_path: Path) -> None:
    from rayline.spec.loading import read_yaml

    spec = tmp_path / "twice.yaml"
    spec.write_text("name: a\ntrain:\n  epochs: 3\n  lr: 0.1\n  epochs: 30\n")
    with pytest.raises(SpecError) as refused:
        read_yaml(spec)
    assert "'epochs'" in str(refused.value) and "lines 3 and 5" in str(refused.value)
    assert refused.value.file == str(spec)
    spec.write_text("name: a\ntrain:\n  epochs: 3\nmodel:\n  epochs: 3\n")  # the same key in two mappings is fine
    assert read_yaml(spec)["model"] == {"epochs": 3}


@pytest.mark.parametrize("override", ["a=[", "train.epochs={", "model.params.hidden=[1, 2"])
def test_an_override_whose_value_is_not_yaml_is_refused_naming_it(override: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_overrides([override])
    assert refused.value.field == "--set" and override in str(refused.value)


def test_a_registry_error_stops_promotion_instead_of_promoting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only "alias not found" means there is no champion yet; a registry answering 500 moves nothing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from rayline.errors import RaylineError
    from rayline.tracking import promote_if_better

    calls: list[str] = []

    class Failing(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            calls.append(f"{self.command} {self.path}")
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error_code": "INTERNAL_ERROR", "message": "database is locked"}')

        do_GET = do_POST = do_PATCH = do_DELETE = _fail

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        with pytest.raises(RaylineError, match="promotion stopped"):
            promote_if_better(f"http://127.0.0.1:{server.server_port}", "m", "3", "champion", "test_accuracy",
                              "max", 0.9)
    finally:
        server.shutdown()
    assert calls and not any("alias" in call and call.startswith(("POST", "PATCH")) for call in calls), calls
