"""Pydantic models of a pipeline spec (``pipelines/*.yaml``): the YAML contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PositiveInt, ValidationInfo, field_validator, model_validator

from rayline.errors import SpecError
from rayline.spec.base import SpecFile, Strict
from rayline.spec.model_uri import check_part


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


class _Step(Strict):
    """A preprocessing step. The steps of ``preprocess`` are applied in order, each fitted on the training split
    only (so nothing about the validation or test rows leaks into the model), and then applied to every split
    with the fitted state. After the steps, all kept features are concatenated into a single float32 vector per
    row. Every non-numeric feature must be covered by a ``one_hot``, ``hash`` or ``drop`` step."""

    columns: list[str] = Field(
        min_length=1, description="the feature columns the step applies to; an entry may be a glob pattern over the "
        "feature columns (``pixel_*``, ``*_mm``), and each pattern must match at least one column")


class StandardScale(_Step):
    """Subtract the training mean, divide by the training (population) std."""

    type: Literal["standard_scale"] = Field(description="selects this step")


class MinMaxScale(_Step):
    """Scale to [0, 1] with the training min and max. Values outside the training range (when serving) leave
    [0, 1]."""

    type: Literal["min_max_scale"] = Field(description="selects this step")


class OneHot(_Step):
    """One column per category seen in training; unseen (and missing) categories encode as all zeros."""

    type: Literal["one_hot"] = Field(description="selects this step")
    max_categories: int | None = Field(
        None, ge=1, description="keep only this many categories per column, the most frequent in training (the "
        "others encode as all zeros); none: every category seen")


class Impute(_Step):
    """Fill in missing values (null, NaN) with a statistic of the training split or a constant."""

    type: Literal["impute"] = Field(description="selects this step")
    strategy: Literal["mean", "most_frequent", "constant"] = Field(
        "mean", description="what fills a gap: the column's training mean, its most frequent training value, or "
        "``fill_value``")
    fill_value: float | str | None = Field(None, description="the value that fills gaps; required with "
                                           "``strategy: constant``")

    @model_validator(mode="after")
    def _constant_has_value(self) -> Impute:
        if self.strategy == "constant" and self.fill_value is None:
            raise ValueError("strategy 'constant' needs fill_value")
        return self


class Drop(_Step):
    """Remove sensitive or useless columns before anything else sees them. No raw value of a dropped column is
    written anywhere."""

    type: Literal["drop"] = Field(description="selects this step")


class Hash(_Step):
    """Replace each value by a one-hot of its keyed BLAKE2 hash bucket: the raw value never reaches the model.

    Every value is first given one canonical form, so that a value falls in the same bucket in training, behind
    HTTP, in the MLflow pyfunc and in batch inference: values equal in Python share a bucket (``3``, ``3.0``,
    ``True`` and ``1``), missing values (null, NaN) share one, and strings stay apart from numbers.

    The hash is keyed with a secret from ``RAYLINE_HASH_KEY`` (or the file that ``RAYLINE_HASH_KEY_FILE`` names),
    so that a dictionary of likely values (names, zip codes) cannot reverse the buckets: a run without the key is
    refused unless the step says ``keyed: false``. The key must be in the environment wherever the model is loaded
    too (start ``rayline up`` with it, so that Serve replicas inherit it); the model and the run record only its
    fingerprint (tag ``rayline.hash_key_fingerprint``). No raw value of a hashed column is written anywhere: the
    model's input example holds placeholders in hashed columns.
    """

    type: Literal["hash"] = Field(description="selects this step")
    num_buckets: int = Field(16, ge=2, le=4096, description="hash buckets per column, each one position of "
                             "the one-hot; fewer buckets put more distinct values together")
    keyed: bool = Field(
        True, description="hash with the secret key in ``RAYLINE_HASH_KEY`` (or the file named by "
        "``RAYLINE_HASH_KEY_FILE``), which training and serving both need; the model records only its "
        "fingerprint. false: an unkeyed hash, whose buckets a dictionary of likely values (names, zip codes) can "
        "reverse")


PreprocessStep = Annotated[
    StandardScale | MinMaxScale | OneHot | Impute | Drop | Hash, Field(discriminator="type")
]


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


class ScalingSpec(Strict):
    """How many Ray Train workers, and what each one reserves."""

    num_workers: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        2, description="Ray Train workers; ``[min, max]`` for elastic training (Ray Train's elastic scaling): the "
                       "run starts with as many workers as fit, up to max; when workers or nodes are lost it goes "
                       "on from the latest checkpoint with those that remain (down to min), and grows back when "
                       "resources return. Each epoch logs its ``workers``. Not with ``expert_parallel``, whose "
                       "mesh is fixed")
    elastic_resize_interval_s: float = Field(
        60.0, gt=0, description="elastic only: how often a running group checks whether more workers now fit (a "
                                "resize restarts the group from the latest checkpoint)")
    use_gpu: bool = Field(False, description="train on GPUs, one per worker unless ``resources_per_worker`` "
                          "says otherwise")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0}, description="the Ray resources each worker reserves (``CPU``, "
        "``GPU`` or custom ones); the run's ``cost_estimate`` prices the CPUs and GPUs reserved")
    placement: Literal["pack", "spread"] = Field(
        "pack", description="pack: workers share nodes where they fit (collectives stay on one machine); spread: "
                            "over as many nodes as possible, so losing a node costs fewer workers. Best effort "
                            "(Ray's PACK and SPREAD placement strategies)")

    @field_validator("num_workers")
    @classmethod
    def _ordered_range(cls, num_workers: int | tuple[int, int]) -> int | tuple[int, int]:
        if isinstance(num_workers, tuple) and num_workers[0] > num_workers[1]:
            raise ValueError(f"a worker range is [min, max] with min <= max, not {list(num_workers)}")
        return num_workers

    @model_validator(mode="after")
    def _positive_resources(self) -> ScalingSpec:
        bad = [name for name, amount in self.resources_per_worker.items() if amount < 0]
        if bad:
            raise ValueError(f"resources_per_worker must not be negative: {bad}")
        return self

    @property
    def elastic(self) -> bool:
        """Whether ``num_workers`` is a range."""
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        """The fewest workers the run trains with."""
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        """The most workers the run trains with (what it asks for)."""
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def workers_text(self) -> str:
        """``2``, or ``1-2`` for a range."""
        return f"{self.min_workers}-{self.max_workers}" if self.elastic else str(self.num_workers)


class MeshSpec(Strict):
    """The 2-D device mesh of ``strategy: expert_parallel``: experts split over ``expert`` workers, and each
    expert (and the rest of the model) sharded by FSDP over ``data`` workers. ``data * expert`` must equal
    ``scaling.num_workers``."""

    data: int = Field(1, ge=1, description="workers each expert, and the rest of the model, is sharded over (FSDP)")
    expert: int = Field(ge=1, description="workers the experts are split over, tokens exchanged with ``all_to_all`` "
                        "(the rest of the model is replicated over them); ``model.params.num_experts`` must be a "
                        "multiple of it")


class TrainSpec(Strict):
    """The one train loop's settings: how long, how each step updates the model, how the work is spread over Ray
    Train workers, and how the run checkpoints and recovers."""

    epochs: int = Field(ge=1, description="passes over the training split")
    batch_size: int = Field(64, ge=1, description="rows per batch on each worker (per accumulated batch with "
                            "``grad_accum_steps``)")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="the torch optimizer; ``sgd`` runs "
                                                       "with momentum 0.9")
    lr: float = Field(1e-3, gt=0.0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="the optimizer's weight decay")
    strategy: Literal["ddp", "fsdp", "expert_parallel"] = Field(
        "ddp", description="ddp: replicated weights; fsdp: parameters, gradients and optimizer state sharded "
                           "across the workers (PyTorch FSDP2, on gloo or nccl); expert_parallel: a ``moe`` model's "
                           "experts split across the workers, tokens exchanged with ``all_to_all``, on the mesh of "
                           "``train.mesh``. ddp checkpoints the full state from rank 0; fsdp and expert_parallel "
                           "write sharded checkpoints (torch.distributed.checkpoint: each worker writes only its "
                           "own shards, nothing is gathered) that resume on any worker count. Either way the "
                           "registered model is a plain, full state_dict")
    scaling: ScalingSpec = Field(ScalingSpec(), description="the Ray Train workers and what each reserves")
    mesh: MeshSpec | None = Field(  # after strategy and scaling: its validator reads them
        None, description="expert_parallel only: the ``{data: D, expert: X}`` mesh, with D * X = "
                          "``scaling.num_workers``; unset: every worker on the expert dimension")
    precision: Literal["fp32", "bf16", "fp16"] = Field(  # after scaling: its validator reads use_gpu
        "fp32", description="the forward pass's dtype: bf16 autocasts it (CPU or GPU); fp16 autocasts it with a "
                            "gradient scaler and needs ``scaling.use_gpu``")
    grad_accum_steps: int = Field(1, ge=1, description="batches whose gradients add up before each optimizer step")
    activation_checkpointing: bool = Field(
        False, description="recompute each top-level block's activations (each child of the model, each layer of a "
                           "child ``ModuleList``) in the backward pass instead of keeping them: less activation "
                           "memory for one more forward pass")
    checkpoint_every: int = Field(1, ge=1, description="checkpoint every N epochs, and after the last one")
    checkpoint_upload: Literal["async", "sync"] = Field(
        "async", description="async: each worker writes its checkpoint to local disk and training goes on while "
                             "Ray Train uploads it to the run's storage; it becomes the latest checkpoint only once "
                             "every file is there, so a crash mid-upload resumes from the one before. sync: the "
                             "step waits for the upload")
    max_failures: int = Field(2, ge=0, description="worker-group restarts, each resuming from the latest checkpoint; "
                              "a failure that persists after them fails the run")
    collective_timeout_s: int = Field(300, ge=1, description="a rank that waits this long in a collective "
                                                             "(a hung peer) fails the attempt; ``max_failures`` "
                                                             "then applies")
    seed: int = Field(0, description="the torch seed each worker sets before building the model")

    @field_validator("mesh")
    @classmethod
    def _mesh_fits_the_workers(cls, mesh: MeshSpec | None, info: ValidationInfo) -> MeshSpec | None:
        if mesh is None:
            return None
        if info.data.get("strategy") != "expert_parallel":
            raise ValueError("a mesh is for strategy: expert_parallel")
        scaling = info.data.get("scaling")
        if scaling is not None and not scaling.elastic and mesh.data * mesh.expert != scaling.num_workers:
            raise ValueError(f"data ({mesh.data}) * expert ({mesh.expert}) must equal scaling.num_workers "
                             f"({scaling.num_workers})")
        return mesh

    @property
    def device_mesh(self) -> MeshSpec:
        """The mesh expert_parallel runs on: the spec's, or every worker on the expert dimension."""
        return self.mesh or MeshSpec(data=1, expert=self.scaling.max_workers)

    @model_validator(mode="after")
    def _fixed_workers_for_a_mesh(self) -> TrainSpec:
        if self.strategy == "expert_parallel" and self.scaling.elastic:
            raise SpecError("expert_parallel splits the experts over a fixed mesh: give a worker count, not a range",
                            field="train.scaling.num_workers")
        return self

    @field_validator("precision")
    @classmethod
    def _fp16_on_gpu(cls, precision: str, info: ValidationInfo) -> str:
        scaling = info.data.get("scaling")
        if precision == "fp16" and scaling is not None and not scaling.use_gpu:
            raise ValueError("fp16 needs scaling.use_gpu (on CPU, use bf16)")
        return precision


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
