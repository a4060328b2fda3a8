"""The one packaged model (weights + compiled preprocessing + model spec) and its MLflow pyfunc entry.

Nothing here imports Ray: consumers of a logged model need torch, numpy, pandas, safetensors and MLflow."""

from rayline.packaged.model import PackagedModel, Predictions

__all__ = ["PackagedModel", "Predictions"]
