"""Activation checkpointing on its own (no Ray): which blocks are wrapped, that they really run their forward
again in the backward pass, and that gradients and state_dict keys do not change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayline.models import CNN, MLP, MoEMLP
from rayline.train.activations import blocks, checkpoint_activations


@pytest.mark.parametrize("model,expected", [
    (MLP(64, 3), ["Sequential"]),
    (CNN(64, 3), ["Sequential", "Sequential"]),
    (MoEMLP(64, 3, layers=2), ["Sequential", "LayerNorm", "LayerNorm", "MoELayer", "MoELayer", "Linear"]),
], ids=["mlp", "cnn", "moe"])
def test_the_blocks_are_the_top_level_children_and_the_layers_of_a_stack(model: nn.Module,
                                                                         expected: list[str]) -> None:
    assert [type(block).__name__ for block in blocks(model)] == expected


def _step(model: nn.Module, inner: nn.Module, features: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    """One forward and backward: how often ``inner`` ran, and the gradients by parameter name."""
    calls, forward = [], inner.forward
    inner.forward = lambda *args: (calls.append(1), forward(*args))[1]
    model(features).square().sum().backward()
    return len(calls), {name.replace("_checkpoint_wrapped_module.", ""): parameter.grad
                        for name, parameter in model.named_parameters()}


def test_checkpointed_blocks_recompute_in_the_backward_pass_with_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = MoEMLP(16, 3, layers=2)
    checkpointed = MoEMLP(16, 3, layers=2)
    checkpointed.load_state_dict(plain.state_dict())
    keys = list(plain.state_dict())
    checkpoint_activations(checkpointed)
    assert list(checkpointed.state_dict()) == keys  # what the registered model's state_dict holds
    features = torch.randn(32, 16)
    ran, grads = _step(plain, plain.moes[0].experts, features)
    reran, checkpointed_grads = _step(checkpointed, checkpointed.moes[0].experts, features)
    assert (ran, reran) == (1, 2)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad)
