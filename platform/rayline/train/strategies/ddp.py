"""``ddp``: replicated weights, averaged gradients (DistributedDataParallel through Ray Train's ``prepare_model``:
gloo on CPU, nccl on GPU). Checkpoints hold the full state, written by rank 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train.torch
import torch
from torch import nn

from rayline.spec import TrainSpec
from rayline.train.checkpoint import TrainingState, read_full_state, save_checkpoint
from rayline.train.strategies.base import check_written_by, rank


def _cpu(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}


class DataParallel:
    """Replicated weights, averaged gradients."""

    name = "ddp"

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> DataParallel:
        return cls()

    def wrap(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def save(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             meta: dict[str, Any]) -> None:
        if rank() == 0:
            save_checkpoint(directory, TrainingState(_cpu(self.unwrap(model).state_dict()), optimizer.state_dict(),
                                                     {**meta, "strategy": self.name}))

    def restore(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        state = read_full_state(directory)
        check_written_by(self.name, state.meta)
        self.unwrap(model).load_state_dict(state.weights)
        optimizer.load_state_dict(state.optimizer)
        return state.meta
