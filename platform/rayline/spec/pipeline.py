"""Pydantic models of a pipeline spec (``pipelines/*.yaml``): the YAML contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from rayline.errors import SpecError
from rayline.spec.base import SpecFile, Strict
from rayline.spec.model_uri import check_part
from rayline.spec.preprocess import PreprocessStep
from rayline.spec.train import TrainSpec


class SplitSpec(Strict):
    """How the rows are divided into training, validation and test splits.

    The split is deterministic: each row goes to a split by a hash of its content keyed with ``seed``, never by its
    position, so the same rows land in the same split on every run, however the data is read or batched.
    ``validation + test`` must be below 1, so that rows are left to train on.
    """

    validation: float = Field(0.1, ge=0.0, lt=1.0, description="share of the rows held out to evaluate the model "
                              "after every epoch (the ``val_*`` metrics); 0 leaves no validation split")
    test: float = Field(0.2, gt=0.0, lt=1.0, description="share of the rows held out for the test evaluation after "
                        "training, whose ``test_*`` metrics the promotion gate compares")
    seed: int = Field(42, description="keys the hash that assigns rows to splits: another seed draws another "
                      "split of the same rows")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitSpec:
        if self.validation + self.test >= 1.0:
            raise ValueError("validation + test must leave a training fraction (sum < 1)")
        return self


MOE_DEFAULT_EXPERTS = 4  # models.moe.MoEMLP's num_experts (spec sits below models)


class DataSpec(Strict):
    """Where the rows come from and what to learn from them.

    A source is one of:

    - a CSV or Parquet file, a directory of them, or a URI (``s3://...``); a relative path is resolved against the
      spec file's directory;
    - a bundled dataset: ``sklearn:digits``, ``sklearn:iris``, ``sklearn:wine``, ``sklearn:breast_cancer``,
      ``sklearn:diabetes``, ``palmerpenguins:penguins``;
    - a synthetic dataset, generated once as Parquet under ``<storage>/datasets/``, with columns ``x0`` to
      ``x{F-1}`` and ``label``:

      - ``synthetic://classification?rows=N&features=F&classes=C&seed=S`` (defaults 100000 / 32 / 4 / 0);
      - ``synthetic://mixture?rows=N&features=F&classes=C&regimes=R&skew=P&seed=S`` (defaults
        100000 / 16 / 4 / 4 / 70 / 0): rows from R regimes, each a cluster of features with its own linear
        teacher, regime 0 holding P percent of them. It is a task for a Mixture-of-Experts, with unbalanced
        expert load.
    """

    source: str = Field(
        description="where the rows come from: a CSV/Parquet file, directory or URI, a bundled dataset or a "
        "``synthetic://`` source (see above); a relative path is resolved against the spec file's directory"
    )
    format: Literal["auto", "csv", "parquet"] = Field(
        "auto", description="how to read a file source; ``auto`` reads ``.csv`` as CSV, and ``.parquet``, ``.pq`` "
        "or no suffix as Parquet")
    label: str = Field(description="the label column")
    features: list[str] | None = Field(None, description="feature columns; none given: every column but the label")
    task: Literal["classification", "regression"] = Field(
        description="what the model learns: a class per row (metrics ``*_accuracy``) or a number (``*_rmse``)")
    split: SplitSpec = Field(SplitSpec(), description="the deterministic training/validation/test split")
    drop_null_labels: bool = Field(
        False, description="drop the rows whose label is null (their count is logged as ``rows_dropped_null_label`` "
        "and printed); otherwise a label column with nulls is refused before training")
    cache: bool | None = Field(
        None, description="true: the preprocessed splits stay in Ray's object store (never the driver); false: "
        "they are written once as float32 Parquet under the run's storage (deleted after training) and the "
        "training split is streamed from those files every epoch (validation and test are read once into the "
        "object store where they fit). Either way each row is split and transformed once per run, never per "
        "epoch. Unset: cache when the raw rows fit in a fifth of Ray's object store")


class ModelSpec(Strict):
    """The network to train: a zoo model or a user factory.

    Zoo models, with their ``params`` and defaults:

    - ``mlp``: ``hidden`` ``[64, 64]``, ``dropout`` ``0.0``.
    - ``cnn``: ``input_shape`` ``[1, 8, 8]``, ``channels`` ``[16, 32]``, ``hidden`` ``64``, ``dropout`` ``0.1``.
    - ``moe``: a sparse Mixture-of-Experts (``models/moe.py``): an input projection to ``dim`` ``64``, ``layers``
      ``1`` residual blocks ``x + moe(layer_norm(x))`` and a linear head. Each block routes every row to its
      ``top_k`` ``2`` of ``num_experts`` ``4`` feed-forward experts (width ``hidden`` ``128``). While training,
      an expert takes at most ``capacity_factor`` ``1.25`` times its even share of a batch's assignments; the
      rest are dropped (the row keeps its residual) and counted. The load-balancing loss (Switch Transformer's),
      times ``aux_loss_weight`` ``0.01``, is added to the task loss. ``dispatch`` ``grouped`` runs all experts in
      one batched matmul; ``naive`` loops over them. Every epoch logs ``train_aux_loss`` and, per block ``l``,
      ``moe<l>_expert<e>_load`` (expert ``e``'s share of the assignments), ``moe<l>_drop_rate`` and
      ``moe<l>_imbalance`` (the busiest expert's load over the mean).

    A user factory ``package.module:factory`` is called as ``factory(num_features=..., num_outputs=..., **params)``
    and must return a ``torch.nn.Module``. It must be importable by the driver, by the workers and wherever the
    model is loaded later, because only the ``rayline`` package is bundled into the MLflow model. Loading a
    packaged model from the registry (serving replicas, batch inference, ``mlflow.pyfunc.load_model``) imports
    nothing but the zoo unless the operator lists the factory's module, or a package above it, in
    ``RAYLINE_MODEL_MODULES`` (comma-separated, e.g. ``mycompany.models``); any other factory is refused before
    its module is imported, so whoever can write to the registry cannot make a replica run their code. The
    variable must be set where the model loads: for ``rayline up``, before it starts (Ray's processes inherit
    it).
    """

    name: str = Field(min_length=1, description="a zoo model (``mlp``, ``cnn``, ``moe``) or the import path of a "
                      "factory, ``package.module:factory``")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model's "
                                   "constructor or factory; unset ones keep the model's defaults")


class CostSpec(Strict):
    """Prices for the ``cost_estimate`` metric logged with each run (currency units per hour): the CPUs and GPUs the
    training workers reserved, times the wall time of the whole fit."""

    cpu_hour: float = Field(0.05, ge=0.0, description="price of one reserved CPU for an hour")
    gpu_hour: float = Field(2.50, ge=0.0, description="price of one reserved GPU for an hour")


def _registry_part(kind: str, value: str) -> str:
    """A registered model name or alias that a model URI can name (so the model can be served)."""
    check_part(kind, value)
    return value


class TrackingSpec(Strict):
    """MLflow experiment, registered model and the promotion gate.

    A run that trains to the end registers a new version of the model; the promotion gate then moves ``alias`` to
    it when it beats, on ``promotion_metric``, the version the alias names (a tie keeps the alias where it is),
    or when no version holds the alias yet."""

    experiment: str = Field(min_length=1, description="the MLflow experiment the run is logged in")
    model_name: Annotated[str, AfterValidator(lambda v: _registry_part("name", v))] = Field(
        description="the registered model name; it must be one a ``models:/`` URI can name, so that the model can "
                    "be served")
    alias: Annotated[str, AfterValidator(lambda v: _registry_part("alias", v))] = Field(
        "champion", description="the alias the promotion gate moves")
    promotion_metric: str | None = Field(
        None, description="the metric the gate compares: ``test_accuracy`` (classification) or ``test_rmse`` "
                          "(regression), ``test_loss``, ``cost_estimate`` or ``train_wall_s``; unset: "
                          "``test_accuracy`` for classification, ``test_rmse`` for regression")
    promotion_mode: Literal["max", "min"] | None = Field(
        None, description="which direction wins; unset: max for ``test_accuracy``, min for every other metric")
    cost: CostSpec = Field(CostSpec(), description="prices for ``cost_estimate``")


class PipelineSpec(SpecFile):
    """A whole pipeline (``pipelines/*.yaml``): data → preprocess → model → train → tracking.

    Every problem the checks find is reported at once, each naming its file and field, before any Train worker
    starts and before anything is written to MLflow."""

    RELATIVE_PATHS = ("data.source",)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="the pipeline's name: it starts the default MLflow run "
                                  "name and is the run's ``rayline.pipeline`` tag")
    data: DataSpec = Field(description="where the rows come from, the label, the task and the split")
    preprocess: list[PreprocessStep] = Field(
        default_factory=list, description="the preprocessing steps, each selected by its ``type``: applied in "
        "order, fitted on the training split only; then all kept features are concatenated into one float32 "
        "vector. Every non-numeric feature must be covered by a ``one_hot``, ``hash`` or ``drop`` step")
    model: ModelSpec = Field(description="the network: a zoo model or a factory, and its parameters")
    train: TrainSpec = Field(description="the train loop, its parallelism and its checkpoints")
    tracking: TrackingSpec = Field(description="the MLflow experiment, the registered model and the promotion gate")

    @model_validator(mode="after")
    def _known_promotion_metric(self) -> PipelineSpec:
        quality = "test_accuracy" if self.data.task == "classification" else "test_rmse"
        known = {quality, "test_loss", "cost_estimate", "train_wall_s"}
        if self.tracking.promotion_metric is not None and self.tracking.promotion_metric not in known:
            # SpecError passes through pydantic, so the error names the field rather than the whole spec.
            raise SpecError(f"must be one of {sorted(known)} for a {self.data.task} pipeline "
                            f"(got {self.tracking.promotion_metric!r})", field="tracking.promotion_metric")
        return self

    @model_validator(mode="after")
    def _experts_split_evenly(self) -> PipelineSpec:
        if self.train.strategy != "expert_parallel" or ":" in self.model.name:  # a user factory: checked at wrap
            return self
        if self.model.name != "moe":
            raise SpecError(f"expert_parallel needs a Mixture-of-Experts model (model.name: moe), not "
                            f"{self.model.name!r}", field="train.strategy")
        experts, split = self.model.params.get("num_experts", MOE_DEFAULT_EXPERTS), self.train.device_mesh.expert
        if not isinstance(experts, int) or experts % split:
            raise SpecError(f"model.params.num_experts ({experts}) must be a multiple of the mesh's expert "
                            f"dimension ({split})", field="train.mesh.expert")
        return self

    @property
    def promotion(self) -> tuple[str, Literal["max", "min"]]:
        """(metric, mode) the promotion gate compares on."""
        default = "test_accuracy" if self.data.task == "classification" else "test_rmse"
        metric = self.tracking.promotion_metric or default
        mode = self.tracking.promotion_mode or ("max" if metric == "test_accuracy" else "min")
        return metric, mode
