"""The one packaged model: weights (safetensors) + fitted preprocessor (JSON) + model spec (JSON).

Serving replicas, batch inference, notebooks and ``mlflow models serve`` all load this directory;
nothing in it is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from rayline.data import FittedPreprocessor
from rayline.models import build_model
from rayline.spec import ModelSpec

WEIGHTS = "model.safetensors"
PREPROCESSOR = "preprocessor.json"
MODEL_SPEC = "model.json"


class PackagedModel:
    """A trained model with its preprocessing: ``predict(raw_rows) -> predictions``."""

    def __init__(self, module: torch.nn.Module, preprocessor: FittedPreprocessor, spec: ModelSpec) -> None:
        self.module = module.eval()
        self.preprocessor = preprocessor
        self.spec = spec

    @staticmethod
    def write(directory: Path, weights: dict[str, torch.Tensor], preprocessor: FittedPreprocessor,
              spec: ModelSpec) -> Path:
        """Write the three files into ``directory`` (created) and return it."""
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / WEIGHTS))
        (directory / PREPROCESSOR).write_text(preprocessor.to_json())
        (directory / MODEL_SPEC).write_text(spec.model_dump_json(indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PackagedModel:
        """Load a directory written by :meth:`write`."""
        root = Path(directory)
        preprocessor = FittedPreprocessor.from_json((root / PREPROCESSOR).read_text())
        spec = ModelSpec.model_validate(json.loads((root / MODEL_SPEC).read_text()))
        module = build_model(spec, preprocessor.num_features, preprocessor.num_outputs)
        module.load_state_dict(load_file(str(root / WEIGHTS)))
        return cls(module, preprocessor, spec)

    @property
    def input_columns(self) -> list[str]:
        """Raw columns a request must carry."""
        return self.preprocessor.input_columns

    def outputs(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw model outputs (logits, or the regression value) for raw input rows."""
        features = torch.from_numpy(self.preprocessor.transform_frame(frame))
        with torch.inference_mode():
            return self.module(features).numpy()

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw input rows: ``prediction`` (label or value), plus ``probability`` for classes."""
        outputs = self.outputs(frame)
        if self.preprocessor.task == "regression":
            return pd.DataFrame({"prediction": outputs[:, 0].astype(np.float64)})
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        indices = probabilities.argmax(axis=1)
        return pd.DataFrame({
            "prediction": self.preprocessor.decode(indices),
            "probability": probabilities[np.arange(len(indices)), indices].astype(np.float64),
        })
