"""Activation checkpointing (``train.activation_checkpointing``): a model's blocks keep only their inputs in
the forward pass and recompute the rest in the backward pass, trading compute for activation memory."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's top-level blocks: each direct child, and each element of a direct child that is a
    ``ModuleList`` (a stack of layers, as a Transformer's or ``moe``'s), when it owns parameters."""
    found = []
    for child in model.children():
        for block in (child if isinstance(child, nn.ModuleList) else [child]):
            if any(True for _ in block.parameters()):
                found.append(block)
    return found


def checkpoint_activations(model: nn.Module) -> nn.Module:
    """Wrap each of the model's :func:`blocks` in place in a non-reentrant checkpoint (before any parallel
    wrapping); the state_dict keeps its keys."""
    chosen = {id(block) for block in blocks(model)}
    apply_activation_checkpointing(model, check_fn=lambda module: id(module) in chosen)  # non-reentrant
    return model
