"""The optimizer step without Ray: gradient accumulation adds up to the larger batch, a partial accumulation is
stepped at the end of an epoch, and bf16 autocast changes the forward pass."""

from __future__ import annotations

import torch
from torch import nn

from rayline.spec import TrainSpec
from rayline.train.precision import Stepper

CPU = torch.device("cpu")


def _trained(batches: list[torch.Tensor], targets: list[torch.Tensor], **train: object) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = Stepper(TrainSpec(epochs=1, **train), optimizer, CPU)
    for batch, target in zip(batches, targets, strict=True):
        with step.autocast():
            loss = nn.functional.mse_loss(model(batch), target)
        step.backward(loss)
    step.flush()
    return model


def test_accumulated_halves_step_like_the_whole_batch() -> None:
    torch.manual_seed(1)
    rows, targets = torch.randn(16, 4), torch.randn(16, 1)
    whole = _trained(list(rows.split(8)), list(targets.split(8)))
    halves = _trained(list(rows.split(4)), list(targets.split(4)), grad_accum_steps=2)
    for a, b in zip(whole.parameters(), halves.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_partial_accumulation_steps_as_the_batches_it_holds_would() -> None:
    """Batches of 4, 4 and 1 row: with 2 accumulated, the last step holds one batch, whose mean gradient it takes
    (as without accumulation, where every step is one batch's mean)."""
    torch.manual_seed(1)
    rows, targets = torch.randn(9, 4), torch.randn(9, 1)
    whole = _trained([rows[:8], rows[8:]], [targets[:8], targets[8:]])
    accumulated = _trained(list(rows.split(4)), list(targets.split(4)), grad_accum_steps=2)
    for a, b in zip(whole.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_runs_the_forward_pass_in_bf16() -> None:
    step = Stepper(TrainSpec(epochs=1, precision="bf16"), torch.optim.SGD(nn.Linear(4, 1).parameters()), CPU)
    with step.autocast():
        out = nn.Linear(4, 1)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
