"""Parallelism strategies: how the one train loop wraps a model and extracts its weights.

A strategy changes wrapping and checkpointing, never the loop's shape. ``ddp`` is data parallel through
Ray Train's ``prepare_model`` (gloo on CPU, nccl on GPU); model-parallel strategies plug in here.
"""

from __future__ import annotations

from typing import Protocol

import ray.train.torch
import torch
from torch import nn


class Strategy(Protocol):
    """What the train loop needs from a parallelism strategy."""

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move to the worker's device and wrap for distributed training."""
        ...

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module (for evaluation without collectives)."""
        ...

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full (unsharded) weights on CPU, for checkpoints and packaging."""
        ...


class DataParallel:
    """Replicated weights, averaged gradients (DistributedDataParallel via ``prepare_model``)."""

    def wrap(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu().contiguous() for name, tensor in self.unwrap(model).state_dict().items()}


STRATEGIES: dict[str, type[Strategy]] = {"ddp": DataParallel}


def get_strategy(name: str) -> Strategy:
    """The strategy registered under ``name`` (``train.strategy`` in the spec)."""
    return STRATEGIES[name]()
