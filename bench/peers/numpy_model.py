"""What the benchmark's peers serve: the packaged model's torch module and its preprocessing written in numpy.

Loading uses ``rayline.models.build_model`` (once, at start); nothing from rayline runs per request. Only the
step types of the benchmark's two models are re-implemented (``min_max_scale``, ``standard_scale``), with Ray's
rule that a range or std under 1e-8 counts as 1.
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

SCALERS = {"io.ray.preprocessors.min_max_scaler": ("min", "max"),
           "io.ray.preprocessors.standard_scaler": ("mean", "std")}


class NumpyModel:
    """``predict(block)`` for a float64 (rows, columns) block in ``columns`` order."""

    def __init__(self, directory: str | Path) -> None:
        torch.set_num_threads(1)
        root = Path(directory)
        state = json.loads((root / "preprocessor.json").read_text())
        self.columns: list[str] = state["input_columns"]
        offset, divisor = np.zeros(len(self.columns)), np.ones(len(self.columns))
        position = {c: i for i, c in enumerate(self.columns)}
        for step in state["feature_steps"]:
            kind, stats = step["type"], step["stats"]
            if kind.endswith("concatenator"):
                continue
            if kind not in SCALERS:
                raise ValueError(f"the peers re-implement {sorted(SCALERS)} only, not {kind}")
            low, high = SCALERS[kind]
            for column in step["fields"]["columns"]:
                i = position[column]
                offset[i] = stats[f"{low}({column})"]
                spread = stats[f"{high}({column})"] - (offset[i] if low == "min" else 0.0)
                divisor[i] = spread if spread >= 1e-8 else 1.0
        self.offset, self.divisor = offset, divisor
        pairs = state["label_encoder"]["stats"][f"unique_values({state['label']})"]["__pairs__"]
        self.classes = [value for value, _ in sorted(pairs, key=lambda pair: pair[1])]
        spec = ModelSpec.model_validate_json((root / "model.json").read_text())
        self.module = build_model(spec, state["num_features"], len(self.classes)).eval()
        self.module.load_state_dict(load_file(str(root / "model.safetensors")))
        self._orders: dict[tuple[str, ...], np.ndarray] = {}

    def block(self, split: dict[str, Any]) -> np.ndarray:
        """A ``dataframe_split`` payload as a float64 block in the model's column order."""
        key = tuple(split["columns"])
        if key not in self._orders:
            given = {c: i for i, c in enumerate(key)}
            self._orders[key] = np.array([given[c] for c in self.columns])
        return np.asarray(split["data"], dtype=np.float64)[:, self._orders[key]]

    def predict(self, block: np.ndarray) -> list[dict[str, Any]]:
        """``{"prediction": label, "probability": p}`` per row."""
        features = ((block - self.offset) / self.divisor).astype(np.float32)
        with torch.inference_mode():
            probabilities = torch.softmax(self.module(torch.from_numpy(features)), dim=1).numpy()
        best = probabilities.argmax(axis=1)
        return [{"prediction": self.classes[i], "probability": float(p)}
                for i, p in zip(best.tolist(), probabilities[np.arange(len(best)), best].tolist(), strict=True)]
