"""Unit tests of the sweep spec (``tuning/*.yaml``): domains, schedulers, and bad input refused with its field path.

Pure Python: no Ray cluster, no MLflow server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized, Uniform

from rayline.errors import SpecError
from rayline.spec import Domain, SweepSpec, load_sweep_spec, resolve_sweep, trial_spec
from rayline.spec.sweep import AshaScheduler, PbtScheduler, trial_metrics

ROOT = Path(__file__).parents[1]
ASHA = ROOT / "tuning" / "digits_asha.yaml"
DIGITS = ROOT / "pipelines" / "digits.yaml"


def sweep_file(directory: Path, **changes: Any) -> Path:
    """A copy of ``tuning/digits_asha.yaml`` in ``directory`` with top-level keys replaced (None: removed)."""
    document = yaml.safe_load(ASHA.read_text())
    document["pipeline"] = str(DIGITS)
    document.update(changes)
    path = directory / "sweep.yaml"
    kept = {key: value for key, value in document.items() if value is not None}
    path.write_text(yaml.safe_dump(kept, sort_keys=False))
    return path


def refused(path: Path, overrides: Any = None) -> SpecError:
    with pytest.raises(SpecError) as caught:
        load_sweep_spec(path, overrides)
    return caught.value


# --------------------------------------------------------------------------- shipped specs


@pytest.mark.parametrize("path", sorted((ROOT / "tuning").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_tuning_specs_load(path: Path) -> None:
    sweep = load_sweep_spec(path)
    assert sweep.file == str(path)
    assert sweep.pipeline == str(DIGITS)  # relative to the sweep file's directory
    assert sweep.objective == ("val_accuracy", "max")
    assert sweep.num_samples == (3 if sweep.scheduler.type == "pbt" else 8)
    document, base = resolve_sweep(sweep)
    assert base.tracking.experiment == "digits-sweeps"  # the sweep's overrides
    assert document["tracking"]["experiment"] == "digits-sweeps" and document["train"]["epochs"] == 10


def test_digits_asha_spec() -> None:
    sweep = load_sweep_spec(ASHA)
    assert sweep.scheduler == AshaScheduler(type="asha", grace_period=2, reduction_factor=2)
    assert sweep.search == "random" and sweep.time_budget_s == 900 and sweep.max_concurrent_trials is None
    assert sweep.search_space == {
        "train.lr": Domain(kind="loguniform", args=(1e-4, 1e-1)),
        "model.params.hidden": Domain(kind="choice", args=([32, 64, 128],)),
        "train.scaling.num_workers": Domain(kind="choice", args=([1, 2],)),
    }
    assert SweepSpec.model_validate(sweep.model_dump()).model_dump() == sweep.model_dump()  # it reads back


def test_load_applies_overrides_to_the_sweep() -> None:
    sweep = load_sweep_spec(ASHA, ["num_samples=4", "scheduler.grace_period=1"])
    assert sweep.num_samples == 4 and sweep.scheduler.grace_period == 1


# --------------------------------------------------------------------------- domains


@pytest.mark.parametrize(("written", "kind", "args", "tune_type", "sampler"), [
    ("uniform(0.0, 0.5)", "uniform", (0.0, 0.5), Float, Uniform),
    ("loguniform(1e-4, 1e-1)", "loguniform", (1e-4, 1e-1), Float, LogUniform),
    ("quniform(16, 128, 16)", "quniform", (16, 128, 16), Float, Quantized),
    ("qloguniform(1e-4, 1e-1, 1e-4)", "qloguniform", (1e-4, 1e-1, 1e-4), Float, Quantized),
    ("randint(1, 3)", "randint", (1, 3), Integer, Uniform),
    ("choice([[64], [128, 64]])", "choice", ([[64], [128, 64]],), Categorical, Uniform),
    ({"loguniform": [1e-4, 1e-1]}, "loguniform", (1e-4, 1e-1), Float, LogUniform),
    ({"choice": [1, 2]}, "choice", ([1, 2],), Categorical, Uniform),
])
def test_domains_parse_and_convert_to_ray_tune(written: Any, kind: str, args: tuple[Any, ...], tune_type: type,
                                               sampler: type) -> None:
    domain = Domain.model_validate(written)
    assert (domain.kind, domain.args) == (kind, args)
    converted = domain.to_tune()
    assert isinstance(converted, tune_type) and isinstance(converted.get_sampler(), sampler)


def test_grid_converts_to_a_grid_search() -> None:
    domain = Domain.model_validate("grid([32, 64])")
    assert domain.to_tune() == tune.grid_search([32, 64]) == {"grid_search": [32, 64]}
    assert Domain.model_validate({"grid": [32, 64]}) == domain


def test_domain_arguments_are_literals_never_evaluated() -> None:
    with pytest.raises(ValueError, match="must be literals"):
        Domain.model_validate("choice([__import__('os').getcwd()])")


def test_samples_cover_bounds_and_middle() -> None:
    assert Domain.model_validate("uniform(1, 4)").samples() == [1, 2.5, 4]
    assert Domain.model_validate("randint(1, 3)").samples() == [1, 2]  # the upper bound is excluded, as in Ray
    assert Domain.model_validate("quniform(16, 128, 16)").samples() == [16, 64, 128]
    assert Domain.model_validate("loguniform(1e-4, 1e-2)").samples() == pytest.approx([1e-4, 1e-3, 1e-2])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("domain", "message"), [
    ("lognormal(1, 2)", "unknown domain 'lognormal'"),
    ("logunifrom(1e-4, 1e-1)", "did you mean 'loguniform'?"),
    ({"normal": [0, 1]}, "unknown domain 'normal'"),
    ("loguniform(1e-4, 1e-1", "a domain is written"),
    ("loguniform", "a domain is written"),
    (0.01, "a domain is written"),
    ([0.1, 0.2], "a domain is written"),
    ("choice([1, 2)", "must be literals"),
    ("choice([])", "non-empty list"),
    ("grid([])", "non-empty list"),
    ("choice()", "takes a list of values"),
    ("choice(1, 2)", "takes a list of values"),
    ({"choice": []}, "non-empty list"),
    ("uniform(1)", "takes 2 numbers"),
    ("quniform(1, 2)", "takes 3 numbers"),
    ("uniform(1, 'a')", "finite numbers"),
    ("uniform(0, inf)", "must be literals"),
    ("uniform(True, 2)", "finite numbers"),
    ("uniform(0.5, 0.1)", "lower bound below its upper bound"),
    ("randint(3, 3)", "lower bound below its upper bound"),
    ("randint(1, 2.5)", "integers"),
    ("loguniform(0, 1)", "lower bound above 0"),
    ("qloguniform(-1, 1, 0.1)", "lower bound above 0"),
    ("quniform(0, 1, 0)", "step q"),
    ({"uniform": 3}, "takes a list of arguments"),
])
def test_malformed_domains_refused_naming_the_path(tmp_path: Path, domain: Any, message: str) -> None:
    path = sweep_file(tmp_path, search_space={"train.lr": domain})
    error = refused(path)
    assert error.field == "search_space.train.lr" and error.file == str(path)
    assert message in error.message
    assert f"{path}: search_space.train.lr: " in str(error)


def test_empty_search_space_refused(tmp_path: Path) -> None:
    assert refused(sweep_file(tmp_path, search_space={})).field == "search_space"


@pytest.mark.parametrize(("search_space", "field", "message"), [
    ({"train.lrr": "loguniform(1e-4, 1e-1)"}, "search_space.train.lrr",
     "train.lrr is not a field of the pipeline spec (did you mean 'lr'?)"),
    ({"optimiser.lr": "choice([0.1])"}, "search_space.optimiser.lr", "optimiser is not a field of the pipeline spec"),
    ({"train.lr": "uniform(-1, 0)"}, "search_space.train.lr",
     "the pipeline refuses -1: Input should be greater than 0 (got -1)"),
    ({"train.scaling.num_workers": "choice([1, 0])"}, "search_space.train.scaling.num_workers",
     "the pipeline refuses 0"),
    ({"train.scaling.num_workers": "uniform(1, 4)"}, "search_space.train.scaling.num_workers",
     "the pipeline refuses 2.5"),  # the middle of the range: a float for an integer field
    ({"train.optimizer": "choice(['adam', 'lion'])"}, "search_space.train.optimizer", "'lion'"),
    ({"data.split.validation": "uniform(0.1, 0.9)"}, "search_space.data.split.validation",
     "the pipeline refuses 0.9: data.split: validation + test must leave a training fraction"),
    ({"preprocess.first": "choice([1])"}, "search_space.preprocess.first",
     "not a field of the pipeline spec: preprocess is a list: use an index"),
])
def test_search_space_checked_against_the_pipeline(tmp_path: Path, search_space: dict[str, Any], field: str,
                                                   message: str) -> None:
    path = sweep_file(tmp_path, search_space={"train.lr": "loguniform(1e-4, 1e-1)", **search_space})
    error = refused(path)
    assert error.problems == ((field, error.message),) and error.file == str(path)
    assert message in error.message


def test_every_search_space_problem_is_listed(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, search_space={"train.lrr": "uniform(0.1, 0.2)", "train.lr": "uniform(-1, 0)",
                                              "train.batch_size": "grid([32, 64])"}, metric="val_f1")
    assert [problem.field for problem in refused(path).problems] == [
        "search_space.train.lrr", "search_space.train.lr", "metric"]


def test_epochs_are_not_tuned(tmp_path: Path) -> None:
    error = refused(sweep_file(tmp_path, search_space={"train.epochs": "choice([5, 10])"}))
    assert error.field == "search_space.train.epochs" and "max_t" in error.message


@pytest.mark.parametrize(("changes", "overrides", "message"), [
    ({"metric": "val_f1", "mode": "max"}, None, "no trial reports 'val_f1'; known: train_loss"),
    ({"metric": "test_accuracy"}, None, "no trial reports 'test_accuracy'"),
    ({"metric": "val_rmse"}, None, "no trial reports 'val_rmse'"),  # a regression metric on a classifier
    ({}, {"overrides": {"data.split.validation": 0.0}}, "the pipeline has no validation split"),
])
def test_a_metric_no_trial_reports_is_refused(tmp_path: Path, changes: dict[str, Any], overrides: Any,
                                              message: str) -> None:
    error = refused(sweep_file(tmp_path, **changes), overrides)
    assert error.field == "metric" and message in error.message and "train_accuracy" in error.message


def test_metrics_a_trial_reports() -> None:
    _, base = resolve_sweep(load_sweep_spec(ASHA))
    assert trial_metrics(base) == ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "samples_per_s",
                                   "epoch_s", "epoch_train_s", "epoch_val_s"]
    regression = base.model_copy(update={"data": base.data.model_copy(update={"task": "regression"})})
    assert "val_rmse" in trial_metrics(regression) and "val_accuracy" not in trial_metrics(regression)


def test_mode_defaults_and_ambiguity(tmp_path: Path) -> None:
    assert load_sweep_spec(sweep_file(tmp_path, metric="val_loss", mode=None)).objective == ("val_loss", "min")
    error = refused(sweep_file(tmp_path, metric="samples_per_s", mode=None))
    assert error.field == "mode" and "samples_per_s" in error.message
    speed = load_sweep_spec(sweep_file(tmp_path, metric="samples_per_s", mode="max"))
    assert speed.objective == ("samples_per_s", "max")
    assert refused(sweep_file(tmp_path, mode="maximum")).field == "mode"


def test_missing_pipeline_file_refused(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, pipeline="nope.yaml")
    error = refused(path)
    assert error.field == "pipeline" and error.file == str(path)
    assert str(tmp_path / "nope.yaml") in error.message  # resolved against the sweep file's directory


def test_invalid_pipeline_names_the_pipeline_file(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(DIGITS.read_text().replace("epochs: 10", "epochs: 0"))
    error = refused(sweep_file(tmp_path, pipeline="pipeline.yaml"))
    assert (error.file, error.field) == (str(pipeline), "train.epochs")


def test_overrides_the_pipeline_refuses_name_the_override(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, overrides={"train.epochz": 3, "train.lr": -1})
    error = refused(path)
    assert error.file == str(path)
    assert [problem.field for problem in error.problems] == ["overrides.train.lr", "overrides.train.epochz"]


@pytest.mark.parametrize(("changes", "field"), [
    ({"bogus": 1}, "bogus"),
    ({"num_samples": 0}, "num_samples"),
    ({"time_budget_s": 0}, "time_budget_s"),
    ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
    ({"search": "optuna"}, "search"),
    ({"name": "bad name"}, "name"),
    ({"pipeline": None}, "pipeline"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler"),
    ({"scheduler": {"type": "asha", "grace_period": 0}}, "scheduler.grace_period"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "scheduler.reduction_factor"),
    ({"scheduler": {"type": "asha", "grace_perod": 2}}, "scheduler.grace_perod"),
    ({"scheduler": {"type": "asha", "grace_period": 11}}, "scheduler.grace_period"),  # above train.epochs
    ({"scheduler": {"type": "pbt"}}, "scheduler.perturbation_interval"),
    ({"scheduler": {"type": "pbt", "perturbation_interval": 10, "hyperparam_mutations": ["train.lr"]}},
     "scheduler.perturbation_interval"),
    ({"scheduler": {"type": "pbt", "perturbation_interval": 3, "hyperparam_mutations": ["train.lr"]},
      "overrides": {"train.checkpoint_every": 2}}, "scheduler.perturbation_interval"),  # no checkpoint at epoch 3
    ({"scheduler": {"type": "pbt", "perturbation_interval": 2}}, "scheduler.hyperparam_mutations"),  # the model
    ({"scheduler": {"type": "pbt", "perturbation_interval": 2, "hyperparam_mutations": ["train.momentum"]}},
     "scheduler.hyperparam_mutations"),
    ({"scheduler": {"type": "pbt", "perturbation_interval": 2, "hyperparam_mutations": []}},
     "scheduler.hyperparam_mutations"),
    ({"scheduler": {"type": "pbt", "perturbation_interval": 2}, "search_space": {"train.lr": "grid([0.1])"}},
     "scheduler.hyperparam_mutations"),
])
def test_bad_sweep_fields_refused(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    error = refused(sweep_file(tmp_path, **changes))
    assert error.field == field, str(error)


def test_pbt_mutates_the_non_grid_domains_by_default(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, scheduler={"type": "pbt", "perturbation_interval": 2},
                      search_space={"train.lr": "loguniform(1e-4, 1e-1)", "train.batch_size": "grid([32, 64])"})
    scheduler = load_sweep_spec(path).scheduler
    assert isinstance(scheduler, PbtScheduler) and scheduler.hyperparam_mutations == ["train.lr"]


# --------------------------------------------------------------------------- trials


def test_trial_spec_applies_a_sampled_config() -> None:
    document, base = resolve_sweep(load_sweep_spec(ASHA))
    config = {"train.lr": 0.01, "model.params.hidden": 128, "train.scaling.num_workers": 1}
    trial = trial_spec(document, config)
    assert (trial.train.lr, trial.model.params["hidden"], trial.train.scaling.num_workers) == (0.01, 128, 1)
    assert trial.model.params["channels"] == [16, 32] and trial.tracking.experiment == "digits-sweeps"
    assert trial.data.source == base.data.source and base.train.lr == 0.003  # the base is untouched
    with pytest.raises(SpecError) as caught:
        trial_spec(document, {"train.lr": 0})
    assert caught.value.field == "train.lr"


def test_num_trials_counts_every_grid_combination(tmp_path: Path) -> None:
    sweep = load_sweep_spec(sweep_file(tmp_path, num_samples=2, search_space={
        "train.lr": "grid([0.1, 0.01, 0.001])", "train.batch_size": "grid([32, 64])",
        "model.params.hidden": "choice([32])"}))
    assert sweep.num_trials == 2 * 3 * 2


def test_sweep_spec_from_python_values() -> None:
    sweep = SweepSpec(name="s", pipeline=str(DIGITS), search_space={"train.lr": "uniform(0.001, 0.01)"})
    assert sweep.scheduler.type == "fifo" and sweep.num_samples == 1 and sweep.objective == ("val_accuracy", "max")
    document, _ = resolve_sweep(sweep)
    assert trial_spec(document, {"train.lr": 0.005}).train.lr == 0.005


def test_pbt_leaves_a_trials_last_epoch_alone() -> None:
    """At its last epoch a trial goes on to its test evaluation: PBT neither pauses nor replaces it there (it would
    restart from another trial's final checkpoint with no epoch left to train)."""
    from ray.tune.schedulers import TrialScheduler

    from rayline.tune.schedulers import PbtOverTrainJobs

    pbt = PbtOverTrainJobs(4, 3, 3, time_attr="training_iteration", perturbation_interval=2, metric="val_accuracy",
                        mode="max", hyperparam_mutations={"train.lr": [0.1, 0.01]})
    # decided before Ray's PBT looks the trial up (it knows no trial here, and would raise)
    assert pbt.on_trial_result(None, None, {"training_iteration": 4}) == TrialScheduler.CONTINUE
