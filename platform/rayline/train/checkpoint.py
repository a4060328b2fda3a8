"""Checkpoints as plain tensors, written to local disk and uploaded by Ray Train, in one of two layouts:

- full (``ddp``): rank 0 writes the weights in safetensors and the optimizer state with ``torch.save``;
- sharded (``fsdp``, ``expert_parallel``): every rank writes its own shards (:mod:`.sharded_checkpoint`).

Both carry ``meta.json`` (epoch, history, strategy) from rank 0. A file that would run code when unpickled, or is
damaged, raises :class:`LoadError`; nothing falls back to an unsafe load.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from ray.train import Checkpoint
from safetensors.torch import save_file

from rayline.packaged.model import LoadError, load_safetensors
from rayline.train.sharded_checkpoint import has_shards, read_full_weights

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
    write_meta(directory, state.meta)


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Write a checkpoint's metadata (plain JSON)."""
    (directory / META).write_text(json.dumps(meta))


def read_meta(directory: Path) -> dict[str, Any]:
    """A checkpoint's metadata: ``epoch``, ``history`` and the ``strategy`` that wrote it."""
    try:
        return json.loads((directory / META).read_text())
    except (OSError, ValueError) as err:
        raise LoadError(f"{directory / META} is not readable checkpoint metadata: {err}") from None


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


def read_full_state(directory: Path) -> TrainingState:
    """A full checkpoint's training state, read safely (see :func:`load_optimizer_state`)."""
    return TrainingState(load_safetensors(directory / WEIGHTS), load_optimizer_state(directory / OPTIMIZER),
                         read_meta(directory))


def read_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The full, unsharded weights of a checkpoint of either layout, on CPU (what packaging registers)."""
    with checkpoint.as_directory() as directory:
        root = Path(directory)
        return read_full_weights(root) if has_shards(root) else load_safetensors(root / WEIGHTS)


def report_with_checkpoint(metrics: dict[str, float], write: Callable[[Path], None] | None,
                           upload: Literal["async", "sync"]) -> None:
    """``ray.train.report`` from every rank. With ``write``, each rank first writes what it holds of the
    checkpoint into a local directory; Ray Train uploads the ranks' directories into one checkpoint in the run's
    storage (in the background when ``upload`` is ``async``) and registers it once every file is there, then
    deletes the local copies. A crash mid-upload leaves the previous checkpoint as the latest."""
    import ray.train
    from ray.train import CheckpointUploadMode

    directory = Path(tempfile.mkdtemp(prefix="rayline-checkpoint-")) if write is not None else None
    wrote = False
    try:
        if directory is not None:
            write(directory)
        wrote = directory is not None and any(directory.iterdir())
        mode = CheckpointUploadMode.ASYNC if upload == "async" else CheckpointUploadMode.SYNC
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(directory)) if wrote else None,
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=True)
    finally:
        if directory is not None and not wrote:
            shutil.rmtree(directory, ignore_errors=True)
