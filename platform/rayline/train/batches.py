"""What a worker iterates each epoch: its share of a split, in batches of torch tensors.

Every pass of Ray Data's ``iter_torch_batches`` starts an execution (an executor thread, stats sent to Ray Data's
stats actor): about 30 ms whatever the rows, besides about 1 ms per batch. For a small shard already in the object
store that fixed cost is most of an epoch, twice per epoch with validation. Such a shard is therefore pulled into
the worker once per run, by one Ray Data pass, held on the worker's device and sliced into batches every epoch;
streamed splits and larger shards go through Ray Data every epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import ray.train
import torch

from rayline.data import FEATURES

RESIDENT_SHARD_MAX_BYTES = 256 * 2**20  # a worker holds a shard in memory when it takes at most this
LABEL_BYTES = 8


def resident_splits(presharded: Iterable[str], counts: dict[str, int], workers: int, num_features: int) -> list[str]:
    """The ``presharded`` splits (one materialized dataset per rank) whose per-rank shard is small enough for
    each worker to hold for the whole run."""
    row_bytes = num_features * 4 + LABEL_BYTES
    return sorted(name for name in presharded if counts[name] // workers * row_bytes <= RESIDENT_SHARD_MAX_BYTES)


class WorkerBatches:
    """Batches of this worker's shard of each split, as ``{FEATURES: float32, label: long or float32}`` on
    ``device``. ``presharded`` splits arrive as one dataset per rank (``<split>_rank<rank>``), the others through
    Ray Train's ``streaming_split``; ``resident`` ones are pulled once and then sliced."""

    def __init__(self, label: str, task: str, presharded: Iterable[str], resident: Iterable[str],
                 device: torch.device) -> None:
        self.label, self.device = label, device
        self.dtypes = {FEATURES: torch.float32, label: torch.long if task == "classification" else torch.float32}
        self.presharded, self.resident = frozenset(presharded), frozenset(resident)
        self.held: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, split: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over this worker's shard of ``split``, in order."""
        if split not in self.resident:
            return self._shard(split).iter_torch_batches(batch_size=batch_size, dtypes=self.dtypes,
                                                          device=self.device)
        if split not in self.held:
            blocks = list(self._shard(split).iter_torch_batches(batch_size=None, dtypes=self.dtypes,
                                                                 device=self.device))
            self.held[split] = (torch.cat([block[FEATURES] for block in blocks]),
                                torch.cat([block[self.label] for block in blocks]))
        features, labels = self.held[split]
        return ({FEATURES: x, self.label: y}
                for x, y in zip(features.split(batch_size), labels.split(batch_size), strict=True))

    def _shard(self, split: str) -> ray.train.DataIterator:
        rank = ray.train.get_context().get_world_rank()
        return ray.train.get_dataset_shard(f"{split}_rank{rank}" if split in self.presharded else split)
