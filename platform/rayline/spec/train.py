"""Pydantic models of a pipeline's training settings (``train:`` in ``pipelines/*.yaml``): the one train loop,
its workers, its parallelism and its checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from rayline.errors import SpecError
from rayline.spec.base import Strict


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
