"""Parallelism strategies, by the name ``train.strategy`` gives them: a new strategy is a module here with a
class that has :class:`Strategy`'s parts, and one line in :data:`STRATEGIES` (and its name in the spec's
``train.strategy``)."""

from __future__ import annotations

from rayline.spec import TrainSpec
from rayline.train.strategies.base import Strategy
from rayline.train.strategies.ddp import DataParallel
from rayline.train.strategies.expert_parallel import ExpertParallel
from rayline.train.strategies.fsdp import FullyShardedDataParallel

STRATEGIES: dict[str, type[Strategy]] = {
    DataParallel.name: DataParallel,
    FullyShardedDataParallel.name: FullyShardedDataParallel,
    ExpertParallel.name: ExpertParallel,
}


def get_strategy(spec: TrainSpec) -> Strategy:
    """The strategy ``train.strategy`` names, set up from ``spec``."""
    return STRATEGIES[spec.strategy].from_spec(spec)


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
