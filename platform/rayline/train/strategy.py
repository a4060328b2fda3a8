"""Parallelism strategies: how the one train loop wraps a model and saves and restores its training state.

A strategy changes wrapping and checkpointing, never the loop's shape. ``ddp`` is data parallel through Ray
Train's ``prepare_model`` (gloo on CPU, nccl on GPU); ``fsdp`` shards parameters, gradients and optimizer state
with PyTorch's FSDP2 (``fully_shard``), which runs on gloo too (Ray's ``prepare_model(parallel_strategy="fsdp")``
is FSDP1 and GPU-only); ``expert_parallel`` splits a Mixture-of-Experts model's experts across the workers and
shards the rest as FSDP does. All three checkpoint full, unsharded state on rank 0, so a checkpoint resumes on
any worker count and the registered model is a plain state_dict.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol

import ray.train
import ray.train.torch
import torch
from torch import nn

from rayline.spec import MeshSpec, TrainSpec
from rayline.train.checkpoint import TrainingState

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


class Strategy(Protocol):
    """What the train loop needs from a parallelism strategy."""

    name: str

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move to the worker's device and wrap for distributed training."""
        ...

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The module to evaluate (every rank runs it on its own shard of the split, in step)."""
        ...

    def state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
              meta: dict[str, Any]) -> TrainingState | None:
        """Called on every rank at a checkpoint: rank 0 gets the full training state on CPU, the others None."""
        ...

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState) -> None:
        """Load a checkpoint's full state into this rank's model and optimizer (every rank calls it)."""
        ...


def _cpu(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}


def _rank() -> int:
    return ray.train.get_context().get_world_rank()


class DataParallel:
    """Replicated weights, averaged gradients (DistributedDataParallel via ``prepare_model``)."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
              meta: dict[str, Any]) -> TrainingState | None:
        if _rank() != 0:
            return None
        return TrainingState(_cpu(self.unwrap(model).state_dict()), optimizer.state_dict(),
                             {**meta, "strategy": self.name})

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState) -> None:
        _same_strategy(self.name, state)
        self.unwrap(model).load_state_dict(state.weights)
        optimizer.load_state_dict(state.optimizer)


class FullyShardedDataParallel:
    """Each rank holds a shard of every parameter, its gradient and its optimizer state (FSDP2). Every module
    that owns parameters is a unit: its full parameters exist only during its forward and backward."""

    name = "fsdp"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh

        device = ray.train.torch.get_device()
        mesh = init_device_mesh(device.type, (ray.train.get_context().get_world_size(),))
        return shard_parameter_owners(model.to(device), mesh)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
              meta: dict[str, Any]) -> TrainingState | None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0 only
        weights = get_model_state_dict(model, options=full)
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=full)
        if _rank() != 0:
            return None
        return TrainingState(_cpu(weights), optimizer_state, {**meta, "strategy": self.name})

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        _same_strategy(self.name, state)
        full = StateDictOptions(full_state_dict=True)  # every rank read the full state: each keeps its shard
        set_model_state_dict(model, state.weights, options=full)
        set_optimizer_state_dict(model, optimizer, state.optimizer, options=full)


class ExpertParallel(FullyShardedDataParallel):
    """A Mixture-of-Experts model on the ``(expert, data)`` mesh of ``train.mesh``: experts split over ``expert``
    (tokens reach them by ``all_to_all``), everything sharded by FSDP2 over ``data`` (see
    :mod:`rayline.train.expert_parallel`). Checkpoints hold the full state, as FSDP's do."""

    name = "expert_parallel"

    def __init__(self, mesh: MeshSpec) -> None:
        self.mesh = mesh

    def wrap(self, model: nn.Module) -> nn.Module:
        from rayline.train.expert_parallel import expert_data_mesh, shard_model

        device = ray.train.torch.get_device()
        return shard_model(model.to(device), expert_data_mesh(device.type, self.mesh.expert, self.mesh.data))


def shard_parameter_owners(model: nn.Module, mesh: DeviceMesh, skip: Collection[nn.Module] = ()) -> nn.Module:
    """FSDP2 units: every module that owns parameters itself (except ``skip``, sharded already), then the root.
    A unit's full parameters exist only during its forward and backward."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules())[1:]:
        if module not in skip and any(True for _ in module.parameters(recurse=False)):
            fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _same_strategy(name: str, state: TrainingState) -> None:
    """Optimizer state is laid out per strategy (DDP's by parameter index, FSDP's by parameter name)."""
    written = state.meta.get("strategy", "ddp")
    if written != name:
        raise ValueError(f"this checkpoint was written by train.strategy {written!r}; it cannot resume under "
                         f"{name!r}")


def get_strategy(spec: TrainSpec) -> Strategy:
    """The strategy ``train.strategy`` names."""
    match spec.strategy:
        case "ddp":
            return DataParallel()
        case "fsdp":
            return FullyShardedDataParallel()
        case "expert_parallel":
            return ExpertParallel(spec.device_mesh)
    raise AssertionError(spec.strategy)
