"""What the benchmark's peers serve: the packaged model's torch module and its preprocessing written in numpy.

Loading uses ``rayline.models.build_model`` (once, at start); nothing from rayline runs per request. Only the
step types of the benchmark's two models are re-implemented (``min_max_scale``, ``standard_scale``, then the
final concatenation), with Ray's rule that a range or std under 1e-8 counts as 1; anything else is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))

from rayline.models import build_model
from rayline.spec import ModelSpec

MIN_MAX, STANDARD = "io.ray.preprocessors.min_max_scaler", "io.ray.preprocessors.standard_scaler"
CONCAT = "io.ray.preprocessors.concatenator"
EPSILON = 1e-8


class NumpyModel:
    """A packaged model directory (``model.safetensors``, ``preprocessor.json``, ``model.json``) ready to
    ``predict`` float64 blocks whose columns are in ``columns`` order."""

    def __init__(self, directory: str | Path) -> None:
        torch.set_num_threads(1)
        root = Path(directory)
        state = json.loads((root / "preprocessor.json").read_text())
        self.columns: list[str] = state["input_columns"]
        self.offset, self.divisor = np.zeros(len(self.columns)), np.ones(len(self.columns))
        for step in state["feature_steps"]:
            self._add_scaler(step)
        if state["label_encoder"] is None:
            raise ValueError("the peers serve classifiers only")
        vocabulary = state["label_encoder"]["stats"][f"unique_values({state['label']})"]
        pairs = vocabulary["__pairs__"] if "__pairs__" in vocabulary else vocabulary.items()
        self.classes = [value for value, _ in sorted(pairs, key=lambda pair: pair[1])]
        spec = ModelSpec.model_validate_json((root / "model.json").read_text())
        self.module = build_model(spec, state["num_features"], len(self.classes)).eval()
        self.module.load_state_dict(load_file(str(root / "model.safetensors")))
        self._orders: dict[tuple[str, ...], np.ndarray] = {}

    def _add_scaler(self, step: dict[str, Any]) -> None:
        """Fold one fitted scaler into ``(x - offset) / divisor``; the final concatenation needs nothing."""
        kind, columns, stats = step["type"], step["fields"]["columns"], step["stats"]
        if kind == CONCAT and columns == self.columns:
            return
        if kind not in (MIN_MAX, STANDARD):
            raise ValueError(f"the peers re-implement min_max_scale and standard_scale only, not {kind}")
        for column in columns:
            i = self.columns.index(column)
            if kind == MIN_MAX:
                self.offset[i], spread = stats[f"min({column})"], stats[f"max({column})"] - stats[f"min({column})"]
            else:
                self.offset[i], spread = stats[f"mean({column})"], stats[f"std({column})"]
            self.divisor[i] = spread if spread >= EPSILON else 1.0

    def block(self, split: dict[str, Any]) -> np.ndarray:
        """A ``dataframe_split`` payload (``columns``, ``data``) as a float64 block in ``columns`` order."""
        key = tuple(split["columns"])
        if key not in self._orders:
            given = {c: i for i, c in enumerate(key)}
            self._orders[key] = np.array([given[c] for c in self.columns])
        return np.asarray(split["data"], dtype=np.float64)[:, self._orders[key]]

    def predict(self, block: np.ndarray) -> list[dict[str, Any]]:
        """``{"prediction": label, "probability": p}`` per row: the softmax's most probable class."""
        features = ((block - self.offset) / self.divisor).astype(np.float32)
        with torch.inference_mode():
            probabilities = torch.softmax(self.module(torch.from_numpy(features)), dim=1).numpy()
        best = probabilities.argmax(axis=1)
        return [{"prediction": self.classes[i], "probability": p}
                for i, p in zip(best.tolist(), probabilities[np.arange(len(best)), best].tolist(), strict=True)]
