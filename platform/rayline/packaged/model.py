"""The one packaged model: weights (safetensors) + fitted preprocessing (JSON) + model spec (JSON).

Serving replicas, batch inference, notebooks and ``mlflow models serve`` all load this directory with the
compiled preprocessing (numpy, no Ray); nothing in it is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rayline.errors import RaylineError, SpecError
from rayline.models import build_model, check_allowed
from rayline.packaged.hashing import HashKeyError
from rayline.packaged.layout import MODEL_SPEC, PREPROCESSOR, WEIGHTS
from rayline.packaged.preprocessing import CompiledPreprocessor
from rayline.spec import ModelSpec


class LoadError(RaylineError):
    """A model or checkpoint file that cannot be loaded safely: it is refused, never loaded some other way."""


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file on CPU; anything else (a pickle, a truncated file) raises LoadError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise LoadError(f"{path} is not a readable safetensors file: {err}") from None


def _read_spec(path: Path, own_code: bool) -> ModelSpec:
    """The model spec in ``path``, refused (before anything is imported) if it names a factory not allowed."""
    try:
        spec = ModelSpec.model_validate_json(path.read_text())
        if not own_code:
            check_allowed(spec.name)
    except SpecError as err:
        err.file = str(path)
        raise
    except (OSError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        raise LoadError(f"{path} is not a model spec: {' '.join(str(err).split())}") from None
    return spec


@dataclass(frozen=True)
class Predictions:
    """One value per row: ``prediction`` (the label or the regression value) and, for classes, the
    ``probability`` of that label."""

    prediction: np.ndarray
    probability: np.ndarray | None

    def __len__(self) -> int:
        return len(self.prediction)

    def rows(self, start: int, stop: int) -> Predictions:
        """The predictions of rows ``start:stop``."""
        probability = None if self.probability is None else self.probability[start:stop]
        return Predictions(self.prediction[start:stop], probability)

    def columns(self) -> dict[str, np.ndarray]:
        """Column name → values (one entry per row)."""
        return {"prediction": self.prediction} | ({} if self.probability is None else
                                                  {"probability": self.probability})

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per row."""
        labels = self.prediction.tolist()
        if self.probability is None:
            return [{"prediction": label} for label in labels]
        return [{"prediction": label, "probability": p}
                for label, p in zip(labels, self.probability.tolist(), strict=True)]

    def to_frame(self) -> pd.DataFrame:
        """The predictions as a pandas frame (what the MLflow pyfunc returns)."""
        return pd.DataFrame(self.columns())


class PackagedModel:
    """A trained model with its preprocessing: ``predict(raw_rows) -> predictions``."""

    def __init__(self, module: torch.nn.Module, preprocessor: CompiledPreprocessor) -> None:
        self.module = module.eval()
        self.preprocessor = preprocessor
        self._labels = None if preprocessor.classes is None else np.asarray(preprocessor.classes, dtype=object)

    @staticmethod
    def write(directory: Path, weights: dict[str, torch.Tensor], preprocessor_json: str, spec: ModelSpec) -> Path:
        """Write the three files into ``directory`` (created) and return it."""
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / WEIGHTS))
        (directory / PREPROCESSOR).write_text(preprocessor_json)
        (directory / MODEL_SPEC).write_text(spec.model_dump_json(indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, own_code: bool = False) -> PackagedModel:
        """Load a directory written by :meth:`write`; unsafe or damaged files raise :class:`LoadError`.

        Its model must be a zoo model or come from a module allowed by ``RAYLINE_MODEL_MODULES``
        (:func:`rayline.models.check_allowed`), unless ``own_code``: for the caller that has just trained it
        from its own spec, whose factory it has imported already.
        """
        root = Path(directory)
        spec = _read_spec(root / MODEL_SPEC, own_code)
        weights = load_safetensors(root / WEIGHTS)
        try:
            preprocessor = CompiledPreprocessor.from_json((root / PREPROCESSOR).read_text())
        except HashKeyError as err:
            raise LoadError(str(err)) from None
        module = build_model(spec, preprocessor.num_features, preprocessor.num_outputs)
        try:
            module.load_state_dict(weights)
        except RuntimeError as err:
            raise LoadError(f"{root / WEIGHTS} does not fit model {spec.name!r}: {' '.join(str(err).split())}") \
                from None
        return cls(module, preprocessor)

    @property
    def input_columns(self) -> list[str]:
        """Raw columns a request must carry."""
        return self.preprocessor.input_columns

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw input rows: ``prediction`` (label or value), plus ``probability`` for classes."""
        return self.predict_frame(frame).to_frame()

    def predict_frame(self, frame: pd.DataFrame) -> Predictions:
        """Predictions for a frame of raw input columns."""
        return self.predict_features(self.preprocessor.transform_frame(frame))

    def predict_block(self, block: np.ndarray) -> Predictions:
        """Predictions for a float64 block of raw rows in :attr:`input_columns` order (numeric-only models)."""
        return self.predict_features(self.preprocessor.transform_block(block))

    def predict_features(self, features: np.ndarray) -> Predictions:
        """Predictions for preprocessed float32 feature rows."""
        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(features)).numpy()
        if self._labels is None:
            return Predictions(outputs[:, 0].astype(np.float64), None)
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        indices = probabilities.argmax(axis=1)
        return Predictions(self._labels[indices], probabilities[np.arange(len(indices)), indices].astype(np.float64))
