"""Inference outside training: loading a registered version's packaged model, checking rows against its
signature, and batch inference over a dataset with Ray Data."""

from rayline.inference.batch import BatchPrediction, predict_batch
from rayline.inference.errors import InputError
from rayline.inference.loading import LoadedModel, load_version, resolve_version
from rayline.inference.schema import InputSchema

__all__ = ["BatchPrediction", "InputError", "InputSchema", "LoadedModel", "load_version", "predict_batch",
           "resolve_version"]
