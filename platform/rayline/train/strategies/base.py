"""What a parallelism strategy is to the one train loop, and the parts strategies share.

A strategy changes wrapping and checkpointing, never the loop's shape: it wraps the model for distributed
training, says what to evaluate, writes what each rank holds of the training state at a checkpoint, and restores
it. Whatever the strategy, the registered model is a plain, full state_dict
(:func:`rayline.train.checkpoint.read_weights`).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import ray.train
import torch
from torch import nn

from rayline.spec import TrainSpec

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


class Strategy(Protocol):
    """What the train loop needs from a parallelism strategy."""

    name: str

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> Strategy:
        """The strategy for ``spec`` (``train.mesh`` and the like)."""
        ...

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


def rank() -> int:
    """This worker's rank in the run."""
    return ray.train.get_context().get_world_rank()


def check_written_by(name: str, meta: dict[str, Any]) -> None:
    """Refuse a checkpoint another strategy wrote: they are laid out per strategy (DDP's full and by parameter
    index, the others' sharded)."""
    written = meta.get("strategy", "ddp")
    if written != name:
        raise ValueError(f"this checkpoint was written by train.strategy {written!r}; it cannot resume under "
                         f"{name!r}")


def shard_parameter_owners(model: nn.Module, mesh: DeviceMesh, skip: Collection[nn.Module] = ()) -> nn.Module:
    """FSDP2 units: every module that owns parameters itself (except ``skip``, sharded already), then the root.
    A unit's full parameters exist only during its forward and backward."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules())[1:]:
        if module not in skip and any(True for _ in module.parameters(recurse=False)):
            fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)
