"""Pydantic models of a sweep spec (``tuning/*.yaml``): a pipeline spec, a search space over its fields, a
scheduler and the metric to optimise; and the checks that refuse a bad sweep before any trial starts."""

from __future__ import annotations

import ast
import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from rayline.errors import SpecError, SpecProblem
from rayline.spec.base import SpecFile, Strict
from rayline.spec.loading import Overrides, apply_overrides, load, validate, with_overrides
from rayline.spec.pipeline import PipelineSpec

DomainKind = Literal["uniform", "loguniform", "quniform", "qloguniform", "randint", "choice", "grid"]
KINDS: tuple[str, ...] = get_args(DomainKind)
_ARITY = {"uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "choice": 1, "grid": 1}
_CALL = re.compile(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", re.DOTALL)
_FORMS = "a domain is written 'loguniform(1e-4, 1e-1)' or as a mapping {loguniform: [1e-4, 1e-1]}"


def _parse_domain(value: Any) -> dict[str, Any]:
    """``name(args)`` (arguments read with ``ast.literal_eval``: literals only) or ``{name: args}``.

    In the mapping form, choice and grid take their list of values: ``{choice: [1, 2]}`` is ``choice([1, 2])``.
    """
    if isinstance(value, str):
        match = _CALL.fullmatch(value)
        if not match:
            raise ValueError(_FORMS)
        name, text = match.groups()
        try:
            args = ast.literal_eval(f"[{text}]")
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError(f"the arguments of {name}() must be literals (numbers, strings, lists)") from None
    elif isinstance(value, Mapping) and len(value) == 1:
        [(name, raw)] = value.items()
        args = [raw] if name in ("choice", "grid") else raw
        if not isinstance(args, list):
            raise ValueError(f"{name} takes a list of arguments")
    else:
        raise ValueError(_FORMS)
    if name not in KINDS:
        close = difflib.get_close_matches(str(name), KINDS, n=1)
        raise ValueError(f"unknown domain {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; known: {', '.join(KINDS)}")
    return {"kind": name, "args": tuple(args)}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Domain(Strict):
    """Where a tuned field's values come from, as its Ray Tune domain.

    A domain is written as a call, ``loguniform(1e-4, 1e-1)`` (its arguments literals only), or as a one-key
    mapping, ``{loguniform: [1e-4, 1e-1]}``, where ``choice`` and ``grid`` take their list of values
    (``{choice: [32, 64]}``). The domains:

    - ``uniform(a, b)``, ``loguniform(a, b)`` (0 < a), ``quniform(a, b, q)``, ``qloguniform(a, b, q)``: a float
      in [a, b], rounded to a multiple of q for the q-forms;
    - ``randint(a, b)``: an integer in [a, b), b excluded as in Ray Tune;
    - ``choice([v, ...])``: one value at random per trial;
    - ``grid([v, ...])``: every value, each one ``num_samples`` times (Ray Tune's ``grid_search``).

    A malformed or empty domain is refused, and so is one whose values the pipeline field refuses (checked on
    every value of a choice or grid, and on both bounds and the middle of a range).
    """

    kind: DomainKind = Field(description="the distribution the values are drawn from")
    args: tuple[Any, ...] = Field(description="its arguments as written: the bounds (and the step q of the "
                                  "q-forms), or the one list of values of ``choice`` and ``grid``")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        # a mapping with a kind is the model's own form (as model_dump writes it): checked as it is
        return value if isinstance(value, Mapping) and "kind" in value else _parse_domain(value)

    @model_validator(mode="after")
    def _valid_arguments(self) -> Domain:
        kind, args = self.kind, self.args
        if len(args) != _ARITY[kind]:
            shape = "a list of values" if kind in ("choice", "grid") else f"{_ARITY[kind]} numbers"
            raise ValueError(f"{kind} takes {shape}")
        if kind in ("choice", "grid"):
            if not isinstance(args[0], list) or not args[0]:
                raise ValueError(f"{kind} takes a non-empty list of values")
            return self
        if not all(_is_number(arg) for arg in args):
            raise ValueError(f"the arguments of {kind} must be finite numbers")
        if kind == "randint" and not all(isinstance(arg, int) for arg in args):
            raise ValueError("the bounds of randint must be integers")
        low, high = args[:2]
        if not low < high:
            raise ValueError(f"{kind} needs its lower bound below its upper bound")
        if "log" in kind and low <= 0:
            raise ValueError(f"{kind} needs a lower bound above 0")
        if kind.startswith("q") and args[2] <= 0:
            raise ValueError(f"the step q of {kind} must be above 0")
        return self

    def samples(self) -> list[Any]:
        """Values that stand for the domain when a pipeline checks it: every value of a choice or grid, both
        bounds and the middle of a range (so a float range is refused for an integer field)."""
        if self.kind in ("choice", "grid"):
            return list(self.args[0])
        low, high = self.args[:2]
        if self.kind == "randint":
            return [low, high - 1]
        values = [low, math.sqrt(low * high) if "log" in self.kind else (low + high) / 2, high]
        return [round(value / self.args[2]) * self.args[2] for value in values] if self.kind.startswith("q") else values

    def to_tune(self) -> Any:
        """The Ray Tune domain (``tune.loguniform(...)``, ``tune.choice([...])``, ``tune.grid_search([...])``)."""
        from ray import tune  # here, not at the top: the spec room stays importable without Ray

        return getattr(tune, "grid_search" if self.kind == "grid" else self.kind)(*self.args)


class FifoScheduler(Strict):
    """No early stopping: every trial runs all ``train.epochs`` epochs."""

    type: Literal["fifo"] = Field(description="selects this scheduler")


class AshaScheduler(Strict):
    """Asynchronous successive halving (Ray Tune's ASHA): stops the worse trials at each rung, so the budget goes
    to the promising ones. Its ``max_t`` is ``train.epochs``, and a trial that reaches it runs its test
    evaluation."""

    type: Literal["asha"] = Field(description="selects this scheduler")
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped; at most "
                              "``train.epochs``")
    reduction_factor: float = Field(2.0, gt=1.0, description="keep the best 1/reduction_factor at each rung")


PBT_MUTABLE = ("train.lr", "train.weight_decay", "train.batch_size")  # what a checkpoint's training can go on with


class PbtScheduler(Strict):
    """Population-based training: every ``perturbation_interval`` epochs, a weaker trial goes on from a better
    trial's checkpoint, with that trial's config and the mutated paths resampled.

    Only ``train.lr``, ``train.weight_decay`` and ``train.batch_size`` can be mutated, because a checkpoint fits
    any value of those. The trial keeps its nested MLflow run; its tags ``rayline.config`` and
    ``rayline.started_from`` say what it now runs and from which checkpoint (its params keep the first config).
    A trial's last epoch is never perturbed: it goes on to its test evaluation. When every trial has a slot, no
    trial is paused at a perturbation; with more trials than run at once, Ray's PBT pauses trials there so the
    others catch up, and each pause restarts a Train job: keep ``num_samples`` to what runs at once.
    """

    type: Literal["pbt"] = Field(description="selects this scheduler")
    perturbation_interval: int = Field(ge=1, description="epochs between perturbations; below ``train.epochs`` and "
                                       "a multiple of ``train.checkpoint_every``, so that a perturbed trial starts "
                                       "from the better trial's checkpoint of that epoch")
    hyperparam_mutations: list[str] | None = Field(
        None, min_length=1,
        description=f"search-space paths resampled on a perturbation, among {', '.join(PBT_MUTABLE)}; unset: "
                    "every one that is not a grid")


Scheduler = Annotated[FifoScheduler | AshaScheduler | PbtScheduler, Field(discriminator="type")]

class SweepSpec(SpecFile):
    """A sweep (``tuning/*.yaml``): trials of one pipeline spec, each with values drawn from the search space,
    run with Ray Tune by ``rayline tune``.

    The search algorithm is Ray Tune's random/grid one (``BasicVariantGenerator``): ``grid`` domains are
    enumerated, the others sampled, ``num_samples`` times over the grid. Optuna and other searchers are not
    included (they need packages the platform does not install).

    ``rayline.spec.load_sweep_spec()`` checks a sweep against its pipeline before anything runs: a path that is
    not a pipeline field (with the nearest one), a domain whose values the field refuses, a malformed or empty
    domain, a metric no trial reports, and scheduler settings that do not fit the epochs are each refused naming
    their path.

    The pipeline's data is read, split and preprocessed once, and every trial trains on it; each trial is the
    pipeline's own training, a Ray Train job. The best trial (by the metric's last value) among those that
    finished their test evaluation is registered through the pipeline's promotion gate.
    """

    RELATIVE_PATHS = ("pipeline",)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="the sweep's name: it names the MLflow parent run, and ``--resume`` finds the "
                                  "sweep's latest unfinished run by it")
    pipeline: str = Field(min_length=1, description="the pipeline spec; a relative path is from the sweep file's "
                                                    "directory")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted path → value, applied to the pipeline spec before the search "
        "space (e.g. ``tracking.experiment``, ``train.epochs``)")
    search_space: dict[str, Domain] = Field(
        min_length=1, description="dotted pipeline field path → domain. ``train.epochs`` is the schedulers' "
        "``max_t`` and is set in ``overrides`` instead; ``data.*`` and ``preprocess`` cannot be tuned, because "
        "the data is prepared once and shared by every trial")
    search: Literal["random"] = Field("random", description="the search algorithm: Ray Tune's variant generator, "
                                      "which enumerates grid domains and samples the others")
    scheduler: Scheduler = Field(FifoScheduler(type="fifo"), description="what stops or perturbs trials, selected "
                                 "by its ``type``: ``fifo``, ``asha`` or ``pbt``")
    metric: str = Field("val_accuracy", description="the metric the sweep optimises; one every trial reports each "
                        "epoch (``train_*`` and, with a validation split, ``val_*`` loss and accuracy or rmse, "
                        "``samples_per_s``, ``epoch_s``, ...)")
    mode: Literal["max", "min"] | None = Field(
        None, description="which direction wins; unset: max for ``*accuracy``, min for ``*loss`` and ``*rmse``; "
        "required for other metrics")
    num_samples: int = Field(1, ge=1, description="trials sampled (times the grid, if any)")
    seed: int | None = Field(None, description="seeds the sampling: the same seed draws the same configurations")
    time_budget_s: float | None = Field(None, gt=0, description="wall-clock seconds after which the sweep stops "
                                        "every trial still running; unset: no limit")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="the most trials at once; unset: what the cluster can hold (its resources, or "
        "the autoscaler's maximum, over the largest trial's footprint), so trials never wait on each other's "
        "workers")

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if "train.epochs" in self.search_space:
            raise SpecError("train.epochs is the schedulers' max_t: set it in overrides",
                            field="search_space.train.epochs")
        if self.mode is None and not self.metric.endswith(("accuracy", "loss", "rmse")):
            raise SpecError(f"say max or min: {self.metric!r} has no default direction", field="mode")
        if isinstance(self.scheduler, PbtScheduler):
            self.scheduler.hyperparam_mutations = self._mutations(self.scheduler.hyperparam_mutations)
        return self

    def _mutations(self, paths: list[str] | None) -> list[str]:
        mutable = [path for path, domain in self.search_space.items() if domain.kind != "grid"]
        field = "scheduler.hyperparam_mutations"
        if not mutable:
            raise SpecError("pbt needs a search-space domain that is not a grid to resample", field=field)
        for path in paths or []:
            if path not in mutable:
                raise SpecError(f"{path!r} is not a non-grid domain of the search space", field=field)
        chosen = mutable if paths is None else paths
        for path in chosen:
            if path not in PBT_MUTABLE:
                raise SpecError(f"pbt can only resample {', '.join(PBT_MUTABLE)}: a perturbed trial goes on from "
                                f"another's checkpoint, which {path!r} would not fit", field=field)
        return chosen

    @property
    def num_trials(self) -> int:
        """Trials the sweep runs: ``num_samples`` times every combination of its grid domains."""
        return self.num_samples * math.prod(len(domain.args[0]) for domain in self.search_space.values()
                                            if domain.kind == "grid")

    @property
    def objective(self) -> tuple[str, Literal["max", "min"]]:
        """(metric, mode) the sweep optimises."""
        return self.metric, self.mode or ("max" if self.metric.endswith("accuracy") else "min")


def trial_metrics(pipeline: PipelineSpec) -> list[str]:
    """The per-epoch metrics a trial of ``pipeline`` reports (see ``train/loop.py``)."""
    quality = "accuracy" if pipeline.data.task == "classification" else "rmse"
    validated = pipeline.data.split.validation > 0
    splits = ["train", "val"] if validated else ["train"]
    timings = ["epoch_s", "epoch_train_s", *(["epoch_val_s"] if validated else [])]
    return [f"{split}_{name}" for split in splits for name in ("loss", quality)] + ["samples_per_s", *timings]


def check_metric(sweep: SweepSpec, pipeline: PipelineSpec) -> None:
    """Refuse a metric that no trial of ``pipeline`` reports."""
    known = trial_metrics(pipeline)
    if sweep.metric not in known:
        unvalidated = sweep.metric.startswith("val_") and "val_loss" not in known
        why = " (the pipeline has no validation split)" if unvalidated else ""
        raise SpecError(f"no trial reports {sweep.metric!r}{why}; known: {', '.join(known)}", field="metric")


def trial_spec(base_document: Mapping[str, Any], config: Mapping[str, Any]) -> PipelineSpec:
    """The validated pipeline spec of one trial: ``config`` (dotted path → sampled value) set on the base."""
    return validate(PipelineSpec, apply_overrides(dict(base_document), config))


def _refusal(base_document: Mapping[str, Any], path: str, value: Any) -> str | None:
    """Why the pipeline refuses ``value`` at ``path``, if it does."""
    try:
        document = apply_overrides(dict(base_document), {path: value})
    except SpecError as err:  # the path runs through a list or a value
        return f"not a field of the pipeline spec: {err.message}"
    try:
        validate(PipelineSpec, document)
    except SpecError as err:
        if err.message.startswith("unknown key"):
            return f"{err.field} is not a field of the pipeline spec{err.message.removeprefix('unknown key')}"
        detail = err.message if err.field == path else f"{err.field}: {err.message}"
        return f"the pipeline refuses {value!r}: {detail}"
    return None


def _search_space_problems(sweep: SweepSpec, base_document: Mapping[str, Any]) -> list[SpecProblem]:
    """Each domain's sample values set on the pipeline: a path that is not a field, or the first value refused."""
    problems = []
    for path, domain in sweep.search_space.items():
        reason = next(filter(None, (_refusal(base_document, path, value) for value in domain.samples())), None)
        if reason:
            problems.append(SpecProblem(f"search_space.{path}", reason))
    return problems


def _scheduler_problems(sweep: SweepSpec, pipeline: PipelineSpec) -> list[SpecProblem]:
    """A scheduler that does not fit ``train.epochs`` (its ``max_t``); PBT perturbing between checkpoints."""
    scheduler, epochs, every = sweep.scheduler, pipeline.train.epochs, pipeline.train.checkpoint_every
    if isinstance(scheduler, AshaScheduler) and scheduler.grace_period > epochs:
        return [SpecProblem("scheduler.grace_period", f"exceeds train.epochs ({epochs}), the scheduler's max_t")]
    if isinstance(scheduler, PbtScheduler) and scheduler.perturbation_interval >= epochs:
        return [SpecProblem("scheduler.perturbation_interval",
                            f"must be below train.epochs ({epochs}), or nothing is ever perturbed")]
    if isinstance(scheduler, PbtScheduler) and scheduler.perturbation_interval % every:
        return [SpecProblem("scheduler.perturbation_interval",
                            f"must be a multiple of train.checkpoint_every ({every}): a perturbed trial starts from "
                            "the better trial's checkpoint of that epoch")]
    return []


def _error(problems: list[SpecProblem], file: str | None) -> SpecError:
    first, *more = problems
    return SpecError(first.message, field=first.field, file=file, more=more)


def resolve_sweep(sweep: SweepSpec) -> tuple[dict[str, Any], PipelineSpec]:
    """The tuned pipeline (its spec with the sweep's overrides): as a document for :func:`trial_spec`, and validated.

    Refuses, each problem naming its field: a missing pipeline spec; an invalid one (naming the pipeline's file and
    field); overrides it refuses (``overrides.<path>``); search-space paths that are not its fields or values it
    refuses (``search_space.<path>``); a metric no trial reports; a scheduler that does not fit ``train.epochs``.
    """
    if not Path(sweep.pipeline).is_file():
        raise SpecError(f"pipeline spec {sweep.pipeline} not found", field="pipeline", file=sweep.file)
    pipeline = load(PipelineSpec, sweep.pipeline)
    try:
        base = with_overrides(pipeline, sweep.overrides)
    except SpecError as err:
        moved = [SpecProblem(f"overrides.{field}" if field else "overrides", message)
                 for field, message in err.problems]
        raise _error(moved, sweep.file) from None
    document = base.model_dump(mode="json")
    problems = _search_space_problems(sweep, document) + _scheduler_problems(sweep, base)
    try:
        check_metric(sweep, base)
    except SpecError as err:
        problems += err.problems
    if problems:
        raise _error(problems, sweep.file)
    return document, base


def load_sweep_spec(path: str | Path, overrides: Overrides = None) -> SweepSpec:
    """Load a sweep spec from YAML with overrides (``{"num_samples": 4}`` or ``["num_samples=4"]``) and check it
    against its pipeline spec (:func:`resolve_sweep`), so that bad input is refused before any trial starts.

    A relative ``pipeline`` path is resolved against the sweep file's directory.
    Raises :class:`rayline.errors.SpecError` naming the file and the field.
    """
    spec = load(SweepSpec, path, overrides)
    resolve_sweep(spec)
    return spec
