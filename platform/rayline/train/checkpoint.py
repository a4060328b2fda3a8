"""Checkpoints as plain tensors: weights in safetensors, optimizer state loaded with ``weights_only=True``.

A file that would run code when unpickled, or is damaged, raises :class:`LoadError`; nothing falls back to an
unsafe load.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray.train import Checkpoint
from safetensors.torch import save_file

from rayline.packaged.model import LoadError, load_safetensors

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
META = "meta.json"


def save_checkpoint(directory: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    epoch: int, history: list[dict[str, float]]) -> None:
    """Write weights, optimizer state, the epoch and the metrics of every epoch so far into ``directory``."""
    save_file(weights, str(directory / WEIGHTS))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER)
    (directory / META).write_text(json.dumps({"epoch": epoch, "history": history}))


def load_optimizer_state(path: Path) -> dict[str, Any]:
    """An optimizer state saved by ``torch.save``, read with the weights-only unpickler: tensors and plain
    containers only, never arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).partition("WeightsUnpickler error:")[2] or str(err)
        raise LoadError(f"{path}: refused to unpickle: {_first_sentence(detail)}") from None
    except (OSError, RuntimeError, EOFError) as err:
        raise LoadError(f"{path} is not a readable optimizer state: {_first_sentence(str(err))}") from None


def _first_sentence(text: str) -> str:
    """The first sentence of torch's multi-line error messages, on one line."""
    return (text.strip().splitlines() or [""])[0].split(". ")[0]


def load_checkpoint(checkpoint: Checkpoint, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) in place; return the checkpoint's metadata (``epoch``, ``history``)."""
    with checkpoint.as_directory() as directory:
        root = Path(directory)
        model.load_state_dict(load_safetensors(root / WEIGHTS))
        if optimizer is not None:
            optimizer.load_state_dict(load_optimizer_state(root / OPTIMIZER))
        return json.loads((root / META).read_text())


def read_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint, on CPU."""
    with checkpoint.as_directory() as directory:
        return load_safetensors(Path(directory) / WEIGHTS)


def report_with_checkpoint(metrics: dict[str, float], write: bool, weights: dict[str, torch.Tensor] | None,
                           optimizer: torch.optim.Optimizer, history: list[dict[str, float]]) -> None:
    """``ray.train.report`` from every rank; the rank with ``write`` attaches the checkpoint (with ``history``,
    the metrics of every epoch so far, the last one being ``metrics``)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if write and weights is not None:
            save_checkpoint(Path(tmp), weights, optimizer, int(metrics["epoch"]), history)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
