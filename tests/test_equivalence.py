"""DDP on 2 ranks, FSDP on 2 ranks (rayline's FSDP2 units) and one process train alike: on a fixed seed, over
real gloo process groups (no Ray), each rank trains on its half of every global batch and the one process on the
whole batch. The mean of the ranks' losses equals the one process's loss at every step, and the weights end the
same, up to the order of float additions (tolerances below). ``test_parallel.py`` runs the same comparison of
DDP and FSDP through whole pipelines on Ray Train."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh

from rayline.cluster.processes import free_port
from rayline.models import build_model
from rayline.spec import ModelSpec
from rayline.train.strategies.base import shard_parameter_owners

FEATURES, CLASSES, HALF_BATCH, STEPS = 12, 4, 16, 6
MODEL = ModelSpec(name="mlp", params={"hidden": [32, 16]})  # no dropout: every way computes the same thing
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(MODEL, FEATURES, CLASSES)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Global batches of a learnable task: the class is the argmax of a fixed linear map of the features."""
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    inputs = [torch.randn(2 * HALF_BATCH, FEATURES, generator=generator) for _ in range(STEPS)]
    return [(batch, (batch @ teacher).argmax(-1)) for batch in inputs]


def _train(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
           distributed: bool) -> list[float]:
    """SGD steps (a gradient off by a factor shows, as it would not under Adam); the loss of each step (the mean
    over ranks when ``distributed``)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for inputs, targets in batches:
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        value = loss.detach().clone()
        if distributed:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        losses.append(value.item())
    return losses


def _rank(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        batches = _batches()
        mine = [(inputs.chunk(2)[rank], targets.chunk(2)[rank]) for inputs, targets in batches]
        one = _model()
        results[("one", rank)] = (_train(one, batches, distributed=False), one.state_dict())
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        results[("ddp", rank)] = (_train(ddp, mine, distributed=True), ddp.module.state_dict())
        fsdp = shard_parameter_owners(_model(), init_device_mesh("cpu", (2,)))
        losses = _train(fsdp, mine, distributed=True)
        results[("fsdp", rank)] = (losses, get_model_state_dict(fsdp, options=StateDictOptions(full_state_dict=True)))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs() -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(free_port(), results), nprocs=2)
        return dict(results)


@pytest.mark.parametrize("way", ["ddp", "fsdp"])
def test_two_ranks_train_as_one_process_does(runs: dict, way: str) -> None:
    single_losses, single_weights = runs[("one", 0)]
    assert single_losses[-1] < single_losses[0]  # it learns: the comparison is not between idle models
    for rank in (0, 1):
        losses, weights = runs[(way, rank)]
        assert losses == pytest.approx(single_losses, rel=LOSS_RTOL), (way, rank)
        assert sorted(weights) == sorted(single_weights)
        for name, value in single_weights.items():
            torch.testing.assert_close(weights[name], value, atol=WEIGHT_ATOL, rtol=0, msg=f"{way} {rank} {name}")
