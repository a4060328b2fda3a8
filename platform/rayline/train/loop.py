"""The one per-worker train loop: pipelines and sweeps all run this function on Ray Train workers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint
from torch import nn

from rayline.data import FEATURES
from rayline.models import build_model
from rayline.spec import ModelSpec, TrainSpec
from rayline.train.activations import checkpoint_activations
from rayline.train.batches import WorkerBatches
from rayline.train.checkpoint import report_with_checkpoint
from rayline.train.precision import Stepper
from rayline.train.routing import RoutingMeter
from rayline.train.strategies import get_strategy


@dataclass
class LoopConfig:
    """Everything a worker needs; plain data so it travels to workers as ``train_loop_config``."""

    model: dict[str, Any]
    train: dict[str, Any]
    task: str
    label: str
    num_features: int
    num_outputs: int
    splits: list[str]
    presharded: list[str] = field(default_factory=list)  # splits that arrive as one dataset per rank
    resident: list[str] = field(default_factory=list)  # presharded splits each worker holds (see train.batches)
    start_from: str | None = None  # a checkpoint (path or URI) to start from when the run has none of its own


def _optimizer(spec: TrainSpec, model: nn.Module) -> torch.optim.Optimizer:
    options = {"lr": spec.lr, "weight_decay": spec.weight_decay}
    match spec.optimizer:
        case "adam":
            return torch.optim.Adam(model.parameters(), **options)
        case "adamw":
            return torch.optim.AdamW(model.parameters(), **options)
        case "sgd":
            return torch.optim.SGD(model.parameters(), momentum=0.9, **options)
    raise AssertionError(spec.optimizer)


def _set_hyperparameters(optimizer: torch.optim.Optimizer, spec: TrainSpec) -> None:
    for group in optimizer.param_groups:
        group.update(lr=spec.lr, weight_decay=spec.weight_decay)


class Scorer:
    """Sums loss and accuracy/squared error over batches; totals are all-reduced across workers."""

    def __init__(self, task: str, device: torch.device) -> None:
        self.classification = task == "classification"
        self.loss_fn = nn.CrossEntropyLoss() if self.classification else nn.MSELoss()
        self.totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, hits or sq. error, rows

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output if self.classification else output.squeeze(-1)
        loss = self.loss_fn(output, target)
        with torch.no_grad():
            rows = target.shape[0]
            quality = (output.argmax(-1) == target).sum() if self.classification else ((output - target) ** 2).sum()
            self.totals[0] += loss.detach().double() * rows
            self.totals[1] += quality.double()
            self.totals[2] += rows
        return loss

    def result(self, prefix: str) -> dict[str, float]:
        totals = self.totals.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        loss_sum, quality, rows = totals.tolist()
        rows = max(rows, 1.0)
        if self.classification:
            quality_metric = {f"{prefix}_accuracy": quality / rows}
        else:
            quality_metric = {f"{prefix}_rmse": (quality / rows) ** 0.5}
        return {f"{prefix}_loss": loss_sum / rows, **quality_metric, f"{prefix}_rows": rows}


def evaluate(
    model: nn.Module, split: str, config: LoopConfig, batches: WorkerBatches, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Loss and accuracy/RMSE of ``model`` on this worker's shard of ``split``, all-reduced."""
    scorer = Scorer(config.task, device)
    model.eval()
    with torch.no_grad():
        for batch in batches(split, batch_size):
            scorer.loss(model(batch[FEATURES]), batch[config.label])
    return scorer.result(split if split != "validation" else "val")


def train_loop(raw_config: dict[str, Any]) -> dict[str, Any]:
    """Train for ``train.epochs`` epochs, resuming from the run's latest checkpoint (or ``start_from``'s);
    evaluate on the test split.

    Metrics are reported every epoch; a checkpoint travels with the report on ``train.checkpoint_every``'s
    schedule and after the last epoch. Returns the test metrics, every epoch's metrics (``history``, carried
    through checkpoints across restarts) and where the worker's time went."""
    entered_at = time.time()
    config = LoopConfig(**raw_config)
    spec = TrainSpec.model_validate(config.train)
    torch.manual_seed(spec.seed)
    device = ray.train.torch.get_device()
    strategy = get_strategy(spec)

    model = build_model(ModelSpec.model_validate(config.model), config.num_features, config.num_outputs)
    model = strategy.wrap(checkpoint_activations(model) if spec.activation_checkpointing else model)
    optimizer = _optimizer(spec, model)  # after wrap: its state then lives on the worker's device
    start_epoch, resumed_from, history = 0, None, []
    checkpoint = ray.train.get_checkpoint() or (Checkpoint(config.start_from) if config.start_from else None)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            meta = strategy.restore(Path(directory), model, optimizer)
        _set_hyperparameters(optimizer, spec)  # the saved state carries its run's: PBT may have changed them
        resumed_from, history = int(meta["epoch"]), meta.get("history", [])
        start_epoch = resumed_from + 1
    step = Stepper(spec, optimizer, device)
    batches = WorkerBatches(config.label, config.task, config.presharded, config.resident, device)
    timings = {"loop_entered_at": entered_at, "setup_s": time.time() - entered_at, "epochs_s": 0.0}

    for epoch in range(start_epoch, spec.epochs):
        started = time.perf_counter()
        model.train()
        scorer, routing = Scorer(config.task, device), RoutingMeter(model, device)
        for batch in batches("train", spec.batch_size):
            with step.autocast():
                loss = scorer.loss(model(batch[FEATURES]), batch[config.label]) + routing.aux_loss()
            step.backward(loss)
        step.flush()
        train_s = time.perf_counter() - started
        metrics = {"epoch": epoch, "workers": ray.train.get_context().get_world_size(), **scorer.result("train"),
                   **routing.result(), "epoch_train_s": train_s}
        metrics["samples_per_s"] = metrics["train_rows"] / max(train_s, 1e-9)
        if "validation" in config.splits:
            validated = time.perf_counter()
            metrics.update(evaluate(strategy.unwrap(model), "validation", config, batches, spec.batch_size, device))
            metrics["epoch_val_s"] = time.perf_counter() - validated
        write = (epoch + 1) % spec.checkpoint_every == 0 or epoch == spec.epochs - 1
        metrics["epoch_s"] = time.perf_counter() - started
        history.append(metrics)
        meta = {"epoch": epoch, "history": history}
        save = partial(strategy.save, model=model, optimizer=optimizer, meta=meta) if write else None
        report_with_checkpoint(metrics, save, spec.checkpoint_upload)
        timings["epochs_s"] += time.perf_counter() - started

    tested = time.perf_counter()
    test = evaluate(strategy.unwrap(model), "test", config, batches, spec.batch_size, device)
    timings["test_s"] = time.perf_counter() - tested
    timings["loop_left_at"] = time.time()
    return {"test": test, "resumed_from_epoch": resumed_from, "timings": timings, "history": history}
