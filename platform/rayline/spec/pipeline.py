"""Pydantic models of a pipeline spec (``pipelines/*.yaml``): the YAML contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PositiveInt, ValidationInfo, field_validator, model_validator

from rayline.errors import SpecError
from rayline.spec.base import SpecFile, Strict
from rayline.spec.model_uri import check_part


class SplitSpec(Strict):
    """Deterministic split: each row goes to a split by a hash of its content and the seed."""

    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 42

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitSpec:
        if self.validation + self.test >= 1.0:
            raise ValueError("validation + test must leave a training fraction (sum < 1)")
        return self


MOE_DEFAULT_EXPERTS = 4  # models.moe.MoEMLP's num_experts (spec sits below models)


class DataSpec(Strict):
    """Where the rows come from and what to learn from them."""

    source: str = Field(
        description="CSV/Parquet path or URI, a bundled dataset (sklearn:digits, "
        "palmerpenguins:penguins), synthetic://classification?rows=N&features=F&classes=C or "
        "synthetic://mixture?rows=N&features=F&classes=C&regimes=R&skew=P (regime 0 holds P percent of rows)"
    )
    format: Literal["auto", "csv", "parquet"] = "auto"
    label: str
    features: list[str] | None = Field(None, description="feature columns; default: all but the label")
    task: Literal["classification", "regression"]
    split: SplitSpec = SplitSpec()
    drop_null_labels: bool = Field(
        False, description="drop the rows whose label is null (how many is reported); by default such rows are "
        "refused")
    cache: bool | None = Field(
        None, description="true: keep the preprocessed splits in Ray's object store (never the driver); false: "
        "write them once as float32 Parquet under the run's storage and stream those files every epoch. Either "
        "way each row is split and transformed once per run. Default: cache when the raw rows fit in a fifth "
        "of the object store")


class _Step(Strict):
    columns: list[str] = Field(min_length=1, description="feature columns; glob patterns like pixel_* allowed")


class StandardScale(_Step):
    """Subtract the training mean, divide by the training (population) std."""

    type: Literal["standard_scale"]


class MinMaxScale(_Step):
    """Scale to [0, 1] with the training min and max."""

    type: Literal["min_max_scale"]


class OneHot(_Step):
    """One column per category seen in training (unseen categories encode as all zeros)."""

    type: Literal["one_hot"]
    max_categories: int | None = Field(None, ge=1)


class Impute(_Step):
    """Fill missing values with a statistic of the training split or a constant."""

    type: Literal["impute"]
    strategy: Literal["mean", "most_frequent", "constant"] = "mean"
    fill_value: float | str | None = None

    @model_validator(mode="after")
    def _constant_has_value(self) -> Impute:
        if self.strategy == "constant" and self.fill_value is None:
            raise ValueError("strategy 'constant' needs fill_value")
        return self


class Drop(_Step):
    """Remove sensitive or useless columns before anything else sees them."""

    type: Literal["drop"]


class Hash(_Step):
    """Replace each value by a one-hot of its hash bucket (the raw value never reaches the model). Values equal in
    Python share a bucket (``3``, ``3.0``, ``True == 1``), and so do missing ones."""

    type: Literal["hash"]
    num_buckets: int = Field(16, ge=2, le=4096)
    keyed: bool = Field(
        True, description="hash with the secret key in RAYLINE_HASH_KEY (or the file named by "
        "RAYLINE_HASH_KEY_FILE), which training and serving both need; the model records only its fingerprint. "
        "false: an unkeyed hash, whose buckets a dictionary of likely values (names, zip codes) can reverse")


PreprocessStep = Annotated[
    StandardScale | MinMaxScale | OneHot | Impute | Drop | Hash, Field(discriminator="type")
]


class ModelSpec(Strict):
    """A zoo model (``mlp``, ``cnn``) or a user factory ``package.module:function``."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class ScalingSpec(Strict):
    """How many Ray Train workers, and what each one reserves."""

    num_workers: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        2, description="workers; [min, max]: elastic, starts with as many as fit (up to max), goes on with fewer "
                       "(down to min) from the latest checkpoint when workers or nodes are lost, and grows back "
                       "when resources return")
    elastic_resize_interval_s: float = Field(
        60.0, gt=0, description="elastic only: how often a running group checks whether more workers now fit")
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    placement: Literal["pack", "spread"] = Field(
        "pack", description="pack: workers share nodes where they fit (fast collectives on one machine); spread: "
                            "over as many nodes as possible (one node's loss costs fewer workers); best effort, "
                            "Ray's PACK and SPREAD placement strategies")

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
    expert (and the rest of the model) sharded by FSDP over ``data`` workers. ``data * expert`` is the worker
    count."""

    data: int = Field(1, ge=1, description="workers each expert is sharded over (FSDP)")
    expert: int = Field(ge=1, description="workers the experts are split over (all_to_all dispatch)")


class TrainSpec(Strict):
    """The one train loop's settings."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    strategy: Literal["ddp", "fsdp", "expert_parallel"] = Field(
        "ddp", description="ddp: replicated weights; fsdp: parameters, gradients and optimizer state sharded "
                           "across the workers (PyTorch FSDP2); expert_parallel: a Mixture-of-Experts model's "
                           "experts split across the workers, on the mesh of train.mesh")
    scaling: ScalingSpec = ScalingSpec()
    mesh: MeshSpec | None = Field(  # after strategy and scaling: its validator reads them
        None, description="expert_parallel's {data, expert} mesh; default: every worker on the expert dimension")
    precision: Literal["fp32", "bf16", "fp16"] = Field(  # after scaling: its validator reads use_gpu
        "fp32", description="autocast dtype of the forward pass; fp16 (with a gradient scaler) needs a GPU")
    grad_accum_steps: int = Field(1, ge=1, description="batches whose gradients add up before each step")
    activation_checkpointing: bool = Field(
        False, description="recompute each top-level block's activations in the backward pass instead of keeping "
                           "them: less memory, one more forward pass of compute")
    checkpoint_every: int = Field(1, ge=1, description="checkpoint every N epochs (and after the last)")
    checkpoint_upload: Literal["async", "sync"] = Field(
        "async", description="async: each worker writes its checkpoint to local disk and training goes on while "
                             "Ray Train uploads it to the run's storage (it becomes the latest checkpoint only "
                             "once every file is there); sync: the step waits for the upload")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the latest checkpoint")
    collective_timeout_s: int = Field(300, ge=1, description="a rank that waits this long in a collective "
                                                             "(a hung peer) fails the attempt")
    seed: int = 0

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
    """Prices for the cost estimate logged with each run (currency units per hour)."""

    cpu_hour: float = Field(0.05, ge=0.0)
    gpu_hour: float = Field(2.50, ge=0.0)


def _registry_part(kind: str, value: str) -> str:
    """A registered model name or alias that a model URI can name (so the model can be served)."""
    check_part(kind, value)
    return value


class TrackingSpec(Strict):
    """MLflow experiment, registered model and the promotion gate."""

    experiment: str = Field(min_length=1)
    model_name: Annotated[str, AfterValidator(lambda v: _registry_part("name", v))] = Field(
        description="registered model name")
    alias: Annotated[str, AfterValidator(lambda v: _registry_part("alias", v))] = "champion"
    promotion_metric: str | None = Field(None, description="default: test_accuracy / test_rmse")
    promotion_mode: Literal["max", "min"] | None = None
    cost: CostSpec = CostSpec()


class PipelineSpec(SpecFile):
    """A whole pipeline: data → preprocess → model → train → tracking."""

    RELATIVE_PATHS = ("data.source",)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataSpec
    preprocess: list[PreprocessStep] = Field(default_factory=list)
    model: ModelSpec
    train: TrainSpec
    tracking: TrackingSpec

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
