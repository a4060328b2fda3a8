"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP), read without unpickling arbitrary objects.

Every rank writes only its own shards of the model and optimizer state (``__<rank>_0.distcp``), and rank 0 the
index (``.metadata``); Ray Train merges the ranks' directories into one checkpoint in storage. DCP reshards on
load, so a checkpoint written by N workers resumes on M, and :func:`read_full_weights` assembles the full model
state_dict in one process (what packaging registers).

DCP's own reader unpickles ``.metadata`` and the non-tensor values with plain ``pickle``, which runs whatever
code the bytes name. Here both go through PyTorch's weights-only unpickler, with DCP's index classes
allowlisted: a checkpoint that names anything else raises :class:`LoadError`.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import pickle
import sys
import warnings
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from rayline.packaged.model import LoadError

SHARDS = "sharded"  # the DCP directory inside a checkpoint
MODEL_KEY, OPTIMIZER_KEY = "model", "optimizer"
_INDEX_CLASSES = frozenset({
    *(value for value in vars(dcp_metadata).values()
      if isinstance(value, type) and value.__module__ == dcp_metadata.__name__
      and (dataclasses.is_dataclass(value) or issubclass(value, enum.Enum))),
    _StorageInfo, torch.Size, torch.serialization._get_layout,  # a layout by its name, from torch's own table
    PosixPath, PurePosixPath,  # where the checkpoint was written
})
_INDEX_MODULES = frozenset({"torch", "torch.serialization", "pathlib", dcp_metadata.__name__,
                            _StorageInfo.__module__})
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Called on every rank: write this rank's shards of ``model`` and ``optimizer`` under ``directory``."""
    state = {MODEL_KEY: get_model_state_dict(model), OPTIMIZER_KEY: get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(directory / SHARDS)))


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Called on every rank: load a sharded checkpoint into this rank's shards, whatever world size wrote it."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = {MODEL_KEY: get_model_state_dict(model), OPTIMIZER_KEY: get_optimizer_state_dict(model, optimizer)}
    _load(state, directory)
    set_model_state_dict(model, state[MODEL_KEY])
    set_optimizer_state_dict(model, optimizer, state[OPTIMIZER_KEY])


def read_full_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The full model state_dict of a sharded checkpoint, assembled in this process (no process group)."""
    index = _SafeReader(str(directory / SHARDS)).read_metadata()
    prefix = f"{MODEL_KEY}."
    weights = {fqn.removeprefix(prefix): torch.empty(tensor.size, dtype=tensor.properties.dtype)
               for fqn, tensor in index.state_dict_metadata.items()
               if fqn.startswith(prefix) and isinstance(tensor, dcp_metadata.TensorStorageMetadata)}
    state = {MODEL_KEY: weights}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process"
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        _load(state, directory, no_dist=True)
    return state[MODEL_KEY]


def has_shards(directory: Path) -> bool:
    """Whether ``directory`` holds a sharded checkpoint."""
    return (directory / SHARDS / ".metadata").is_file()


def _load(state: dict[str, Any], directory: Path, no_dist: bool = False) -> None:
    try:
        dcp.load(state, storage_reader=_SafeReader(str(directory / SHARDS)), planner=_SafePlanner(), no_dist=no_dist)
    except LoadError:
        raise
    except Exception as err:  # DCP wraps a rank's failure in a CheckpointException
        cause = _refusal(err)
        if cause is not None:
            raise cause from None
        raise LoadError(f"{directory} is not a readable sharded checkpoint: {str(err).strip().splitlines()[-1]}") \
            from err


def _refusal(err: BaseException) -> LoadError | None:
    """The :class:`LoadError` a rank raised inside DCP's wrapper, if that is what failed."""
    failures = getattr(err, "failures", {}) or {}
    for failure in failures.values():
        found = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(found, LoadError):
            return found
    return None


class _IndexUnpickler(pickle.Unpickler):
    """Python's unpickler restricted to DCP's index classes and torch's size, dtype, layout and memory format:
    a name outside them is refused before anything is called (the "restricting globals" recipe of the pickle
    docs)."""

    def find_class(self, module: str, name: str) -> Any:
        found = getattr(sys.modules.get(module), name, None) if module in _INDEX_MODULES else None
        if isinstance(found, _TORCH_VALUES) or found in _INDEX_CLASSES:
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class _SafeReader(dcp.FileSystemReader):
    """DCP's file reader, with its index read by :class:`_IndexUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            with path.open("rb") as stream:
                index = _IndexUnpickler(stream).load()
        except OSError as err:
            raise LoadError(f"{path} is not readable: {err.strerror}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise LoadError(f"{path}: refused to unpickle: {' '.join(str(err).split())}") from None
        if not isinstance(index, dcp_metadata.Metadata):
            raise LoadError(f"{path} is not a DCP index")
        if getattr(index, "storage_meta", None) is None:
            index.storage_meta = dcp_metadata.StorageMeta()
        index.storage_meta.load_id = self.load_id
        return index


class _SafePlanner(DefaultLoadPlanner):
    """DCP's load planner, with non-tensor values (optimizer hyperparameters, step counts) read weights-only."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
