"""Ray Data reading, validation, deterministic split, and preprocessing fitted on the training split only."""

from rayline.data.fitted import FEATURES, FittedPreprocessor
from rayline.data.prepare import PreparedData, prepare
from rayline.data.sources import SourceInfo

__all__ = ["FEATURES", "FittedPreprocessor", "PreparedData", "SourceInfo", "prepare"]
