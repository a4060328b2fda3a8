"""User models for tests, loaded through the public ``module:factory`` model path."""

from __future__ import annotations

import os
from pathlib import Path

import ray.train
import torch

from rayline.models import MLP


class CrashOnceMLP(MLP):
    """An MLP whose rank-1 worker process dies once, at its ``crash_at_step``-th training step.

    ``marker`` (a file path) records that the crash happened, so the restarted worker group runs through.
    """

    def __init__(self, num_features: int, num_outputs: int, marker: str, crash_at_step: int, **params) -> None:
        super().__init__(num_features, num_outputs, **params)
        self.marker = Path(marker)
        self.crash_at_step = crash_at_step
        self.steps = 0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
            if self.steps == self.crash_at_step and not self.marker.exists() and _rank() == 1:
                self.marker.write_text("crashed")
                os._exit(1)
        return super().forward(features)


def _rank() -> int:
    try:
        return ray.train.get_context().get_world_rank()
    except Exception:  # outside a Train worker (e.g. loading the packaged model)
        return -1
