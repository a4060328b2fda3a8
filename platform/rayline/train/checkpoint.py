"""Checkpoints as plain tensors: weights in safetensors, optimizer state loaded with ``weights_only=True``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray.train import Checkpoint
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
META = "meta.json"


def save_checkpoint(directory: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    epoch: int) -> None:
    """Write weights, optimizer state and the epoch into ``directory``."""
    save_file(weights, str(directory / WEIGHTS))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER)
    (directory / META).write_text(json.dumps({"epoch": epoch}))


def load_checkpoint(checkpoint: Checkpoint, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) in place; return the checkpoint's metadata (``epoch``)."""
    with checkpoint.as_directory() as directory:
        root = Path(directory)
        model.load_state_dict(load_file(str(root / WEIGHTS)))
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(root / OPTIMIZER, map_location="cpu", weights_only=True))
        return json.loads((root / META).read_text())


def read_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint, on CPU."""
    with checkpoint.as_directory() as directory:
        return load_file(str(Path(directory) / WEIGHTS))


def report_with_checkpoint(metrics: dict[str, float], write: bool, weights: dict[str, torch.Tensor] | None,
                           optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """``ray.train.report`` from every rank; the rank with ``write`` attaches the checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if write and weights is not None:
            save_checkpoint(Path(tmp), weights, optimizer, epoch)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
