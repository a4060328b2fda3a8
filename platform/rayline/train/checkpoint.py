"""Checkpoints as plain tensors: weights in safetensors, optimizer state loaded with ``weights_only=True``.

A file that would run code when unpickled, or is damaged, raises :class:`LoadError`; nothing falls back to an
unsafe load.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray.train import Checkpoint
from safetensors.torch import save_file

from rayline.packaged.model import LoadError, load_safetensors

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
META = "meta.json"


@dataclass
class TrainingState:
    """What a checkpoint holds: full (unsharded) weights and optimizer state on CPU, and its metadata (``epoch``,
    ``history``: the metrics of every epoch so far; ``strategy``: the parallelism that wrote the optimizer state)."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    meta: dict[str, Any]


def save_checkpoint(directory: Path, state: TrainingState) -> None:
    """Write ``state`` into ``directory``: weights as safetensors, optimizer state with ``torch.save``."""
    save_file(state.weights, str(directory / WEIGHTS))
    torch.save(state.optimizer, directory / OPTIMIZER)
    (directory / META).write_text(json.dumps(state.meta))


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


def read_checkpoint(checkpoint: Checkpoint) -> TrainingState:
    """A checkpoint's training state, read safely (see :func:`load_optimizer_state`)."""
    with checkpoint.as_directory() as directory:
        root = Path(directory)
        return TrainingState(load_safetensors(root / WEIGHTS), load_optimizer_state(root / OPTIMIZER),
                             json.loads((root / META).read_text()))


def read_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint, on CPU."""
    with checkpoint.as_directory() as directory:
        return load_safetensors(Path(directory) / WEIGHTS)


def report_with_checkpoint(metrics: dict[str, float], state: TrainingState | None) -> None:
    """``ray.train.report`` from every rank; the rank holding ``state`` (rank 0) attaches it as the checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if state is not None:
            save_checkpoint(Path(tmp), state)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
