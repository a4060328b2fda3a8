"""Ray Train: the one train loop, parallelism strategies, checkpoints, and ``fit``."""

from rayline.train.checkpoint import read_weights
from rayline.train.fit import TrainingDiverged, TrainingFailed, TrainOutcome, fit
from rayline.train.loop import LoopConfig, train_loop
from rayline.train.strategies import Strategy, get_strategy

__all__ = ["LoopConfig", "Strategy", "TrainOutcome", "TrainingDiverged", "TrainingFailed", "fit", "get_strategy",
           "read_weights", "train_loop"]
