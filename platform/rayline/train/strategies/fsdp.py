"""``fsdp``: parameters, gradients and optimizer state sharded across the workers with PyTorch's FSDP2
(``fully_shard``), which runs on gloo too (Ray's ``prepare_model(parallel_strategy="fsdp")`` is FSDP1 and GPU-only).
Checkpoints are sharded distributed checkpoints, every rank writing its own shards, and resume on any worker
count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from rayline.spec import TrainSpec
from rayline.train.checkpoint import read_meta, write_meta
from rayline.train.sharded_checkpoint import load_sharded, save_sharded
from rayline.train.strategies.base import check_written_by, rank, shard_parameter_owners


class FullyShardedDataParallel:
    """Each rank holds a shard of every parameter, its gradient and its optimizer state. Every module that owns
    parameters is a unit: its full parameters exist only during its forward and backward."""

    name = "fsdp"

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> FullyShardedDataParallel:
        return cls()

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
        if rank() == 0:
            write_meta(directory, {**meta, "strategy": self.name})

    def restore(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        meta = read_meta(directory)
        check_written_by(self.name, meta)
        load_sharded(directory, model, optimizer)  # resharded to this run's worker count
        return meta
