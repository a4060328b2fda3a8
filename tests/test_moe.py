"""The Mixture-of-Experts layer on its own (no Ray): dispatch, capacity and drops, the load-balancing loss, and
expert parallelism over real gloo process groups (2 and 4 processes) against the same model in one process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from rayline.cluster.processes import free_port
from rayline.data.sources import SYNTHETIC_DEFAULTS, mixture
from rayline.models.moe import MoELayer, MoEMLP
from rayline.train.routing import RoutingMeter
from rayline.train.sharded_checkpoint import load_sharded, read_full_weights, save_sharded
from rayline.train.strategies.expert_parallel import expert_data_mesh, shard_model

FEATURES, CLASSES = 10, 3
PARAMS = {"dim": 16, "hidden": 32, "num_experts": 4, "top_k": 2, "capacity_factor": 1.0, "aux_loss_weight": 0.01}


def test_grouped_dispatch_equals_the_per_expert_loop() -> None:
    torch.manual_seed(0)
    grouped = MoELayer(8, 16, num_experts=4, top_k=2, capacity_factor=1.0)
    naive = MoELayer(8, 16, num_experts=4, top_k=2, capacity_factor=1.0, dispatch="naive")
    naive.load_state_dict(grouped.state_dict())
    tokens = torch.randn(37, 8, requires_grad=True)
    outputs = grouped(tokens)
    outputs.square().sum().backward()
    grad, tokens.grad = tokens.grad, None
    assert grouped.routing.dropped > 0  # capacity 1.0 with top-2 routing drops some: both paths must agree on which
    torch.testing.assert_close(naive(tokens), outputs)
    naive(tokens).square().sum().backward()
    torch.testing.assert_close(tokens.grad, grad)
    torch.testing.assert_close(naive.routing.load, grouped.routing.load)


def test_assignments_past_an_experts_capacity_are_dropped_and_counted() -> None:
    layer = MoELayer(4, 8, num_experts=4, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[2] = 1.0  # every positive token prefers expert 2
    tokens = torch.rand(10, 4) + 0.1
    outputs = layer(tokens)
    capacity = layer.capacity(10)  # ceil(1.0 * 10 * 1 / 4) = 3
    assert capacity == 3
    assert layer.routing.load.tolist() == [0, 0, 10, 0]
    assert layer.routing.dropped.item() == 10 - capacity
    kept = outputs.abs().sum(1) > 0
    assert kept.tolist() == [True] * capacity + [False] * (10 - capacity)  # first come, first served


def test_the_routing_meter_reports_each_experts_share_drops_and_imbalance() -> None:
    torch.manual_seed(0)
    model = MoEMLP(FEATURES, CLASSES, **PARAMS)
    meter = RoutingMeter(model, torch.device("cpu"))
    for _ in range(3):
        model(torch.randn(32, FEATURES))
        assert meter.aux_loss().requires_grad
    metrics = meter.result()
    shares = [metrics[f"moe0_expert{expert}_load"] for expert in range(4)]
    assert sum(shares) == pytest.approx(1.0)
    assert metrics["moe0_imbalance"] == pytest.approx(max(shares) * 4)
    assert 0 <= metrics["moe0_drop_rate"] < 1 and metrics["train_aux_loss"] > 0
    assert RoutingMeter(torch.nn.Linear(2, 2), torch.device("cpu")).result() == {}  # no MoE: nothing to report


def _imbalance_after_training(aux_loss_weight: float) -> tuple[float, float]:
    """Expert imbalance and drop rate over the last epoch of training on the skewed mixture (70% of rows from one
    regime), by the routing meter the train loop uses."""
    torch.manual_seed(0)
    options = {**SYNTHETIC_DEFAULTS["mixture"], "features": 16}
    values, labels, _ = mixture(6000, 0, options)
    features, targets = torch.from_numpy(values), torch.from_numpy(labels)
    model = MoEMLP(16, options["classes"], dim=32, hidden=64, capacity_factor=1.25, aux_loss_weight=aux_loss_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        meter = RoutingMeter(model, torch.device("cpu"))
        for start in range(0, len(features), 64):
            loss = F.cross_entropy(model(features[start:start + 64]), targets[start:start + 64]) + meter.aux_loss()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    metrics = meter.result()
    return metrics["moe0_imbalance"], metrics["moe0_drop_rate"]


def test_the_auxiliary_loss_lowers_imbalance_on_a_skewed_task() -> None:
    unbalanced, unbalanced_drops = _imbalance_after_training(0.0)
    balanced, balanced_drops = _imbalance_after_training(0.05)
    assert unbalanced > 1.3  # the busy regime crowds its experts
    assert balanced < unbalanced - 0.2 and balanced_drops < unbalanced_drops


def _expert_parallel_worker(rank: int, expert: int, data: int, port: int, checkpoint: Path, results: dict) -> None:
    """One rank: the sharded model against the same model in one process, on this rank's batch (outputs), on
    the batches of every rank (three SGD steps), and restored from a sharded checkpoint into a fresh sharded
    model."""
    world = expert * data
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        generator = torch.Generator().manual_seed(1)
        inputs = torch.randn(world, 8, FEATURES, generator=generator)
        targets = torch.randint(0, CLASSES, (world, 8), generator=generator)
        torch.manual_seed(0)
        single = MoEMLP(FEATURES, CLASSES, **{**PARAMS, "aux_loss_weight": 0.0, "capacity_factor": 4.0})
        torch.manual_seed(0)
        sharded = shard_model(MoEMLP(FEATURES, CLASSES, **{**PARAMS, "aux_loss_weight": 0.0,
                                                            "capacity_factor": 4.0}),
                              expert_data_mesh("cpu", expert, data))
        output_gap = (sharded(inputs[rank]) - single(inputs[rank])).abs().max().item()
        optimizer = torch.optim.SGD(sharded.parameters(), lr=0.1)
        single_optimizer = torch.optim.SGD(single.parameters(), lr=0.1)
        for _ in range(3):  # the mean loss over ranks is the single model's loss over every rank's batch
            F.cross_entropy(sharded(inputs[rank]), targets[rank]).backward()
            F.cross_entropy(single(inputs.flatten(0, 1)), targets.flatten()).backward()
            for step in (optimizer, single_optimizer):
                step.step()
                step.zero_grad()
        full = StateDictOptions(full_state_dict=True)
        weights = get_model_state_dict(sharded, options=full)
        weight_gap = max((weights[name] - value).abs().max().item() for name, value in single.state_dict().items())

        torch.manual_seed(0)
        model = shard_model(MoEMLP(FEATURES, CLASSES, **PARAMS), expert_data_mesh("cpu", expert, data))
        adam = torch.optim.Adam(model.parameters(), lr=0.01)

        def step(net: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
            loss = F.cross_entropy(net(inputs[rank]), targets[rank]) + net.moes[0].routing.aux_loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.item()

        for _ in range(2):
            step(model, adam)
        save_sharded(checkpoint, model, adam)  # every rank its own shards, into one directory
        saved_weights = get_model_state_dict(model, options=full)
        dist.barrier()
        torch.manual_seed(7)
        restored = shard_model(MoEMLP(FEATURES, CLASSES, **PARAMS), expert_data_mesh("cpu", expert, data))
        restored_adam = torch.optim.Adam(restored.parameters(), lr=0.01)
        load_sharded(checkpoint, restored, restored_adam)
        consolidated = read_full_weights(checkpoint)  # in this process alone, as packaging does
        consolidation_gap = max((consolidated[name] - value).abs().max().item()
                                for name, value in saved_weights.items())
        went_on = [step(model, adam) for _ in range(2)]
        resumed = [step(restored, restored_adam) for _ in range(2)]
        results[rank] = {"output_gap": output_gap, "weight_gap": weight_gap, "went_on": went_on,
                         "resumed": resumed, "local_experts": sharded.moes[0].experts.w1.to_local().shape[0],
                         "consolidated": sorted(consolidated) == sorted(single.state_dict()),
                         "consolidation_gap": consolidation_gap}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("expert,data", [(2, 1), (2, 2)], ids=["2 expert ranks", "2x2 expert-data mesh"])
@pytest.mark.slow
def test_expert_parallel_computes_what_one_process_does(expert: int, data: int, tmp_path: Path) -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_expert_parallel_worker, args=(expert, data, free_port(), tmp_path, results), nprocs=expert * data)
        results = dict(results)
    assert sorted(results) == list(range(expert * data))
    for rank, result in results.items():
        assert result["local_experts"] == PARAMS["num_experts"] // (expert * data), rank  # at rest: FSDP's shard
        assert result["output_gap"] < 1e-6, rank  # the same outputs for the same weights
        assert result["weight_gap"] < 1e-5, rank  # and the same training steps
        assert result["resumed"] == result["went_on"], rank  # a restore from the shards goes on exactly
        assert result["consolidated"] and result["consolidation_gap"] == 0.0, rank  # the full model, as trained
