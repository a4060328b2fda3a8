"""Parallelism strategies: how the one train loop wraps a model and saves and restores its training state.

A strategy changes wrapping and checkpointing, never the loop's shape. ``ddp`` is data parallel through Ray
Train's ``prepare_model`` (gloo on CPU, nccl on GPU); ``fsdp`` shards parameters, gradients and optimizer state
with PyTorch's FSDP2 (``fully_shard``), which runs on gloo too (Ray's ``prepare_model(parallel_strategy="fsdp")``
is FSDP1 and GPU-only); ``expert_parallel`` splits a Mixture-of-Experts model's experts across the workers and
shards the rest as FSDP does. ``ddp`` checkpoints full state from rank 0; the sharded strategies write sharded
distributed checkpoints, every rank its own shards, which resume on any worker count. Either way the registered
model is a plain, full state_dict (:func:`rayline.train.checkpoint.read_weights`).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ray.train
import ray.train.torch
import torch
from torch import nn

from rayline.spec import MeshSpec, TrainSpec
from rayline.train.checkpoint import TrainingState, read_full_state, read_meta, save_checkpoint, write_meta
from rayline.train.sharded_checkpoint import load_sharded, save_sharded

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

    def save(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             meta: dict[str, Any]) -> None:
        """Called on every rank at a checkpoint: write what this rank holds of the training state, and (rank 0)
        ``meta``, into this rank's local ``directory``."""
        ...

    def restore(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Load a checkpoint into this rank's model and optimizer (every rank calls it); return its metadata."""
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

    def save(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             meta: dict[str, Any]) -> None:
        if _rank() == 0:
            save_checkpoint(directory, TrainingState(_cpu(self.unwrap(model).state_dict()), optimizer.state_dict(),
                                                     {**meta, "strategy": self.name}))

    def restore(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        state = read_full_state(directory)
        _same_strategy(self.name, state.meta)
        self.unwrap(model).load_state_dict(state.weights)
        optimizer.load_state_dict(state.optimizer)
        return state.meta


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

    def save(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             meta: dict[str, Any]) -> None:
        save_sharded(directory, model, optimizer)  # each rank its own shards; nothing is gathered
        if _rank() == 0:
            write_meta(directory, {**meta, "strategy": self.name})

    def restore(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        meta = read_meta(directory)
        _same_strategy(self.name, meta)
        load_sharded(directory, model, optimizer)  # resharded to this run's worker count
        return meta


class ExpertParallel(FullyShardedDataParallel):
    """A Mixture-of-Experts model on the ``(expert, data)`` mesh of ``train.mesh``: experts split over ``expert``
    (tokens reach them by ``all_to_all``), everything sharded by FSDP2 over ``data`` (see
    :mod:`rayline.train.expert_parallel`). Checkpoints are sharded, as FSDP's are."""

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


def _same_strategy(name: str, meta: dict[str, Any]) -> None:
    """Checkpoints are laid out per strategy (DDP's full and by parameter index, the others' sharded)."""
    written = meta.get("strategy", "ddp")
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
