"""The fitted preprocessor: one object applied in training (Ray Data), serving and batch inference (pandas)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import ray.data
from ray.data.preprocessor import Preprocessor
from ray.data.preprocessors import Chain, Concatenator, LabelEncoder, SimpleImputer

from rayline.data.state_codec import dump_preprocessor, load_preprocessor
from rayline.data.steps import HashBuckets, build_step
from rayline.packaged.preprocessing import CompiledPreprocessor
from rayline.spec import PreprocessStep

FEATURES = "features"


@dataclass
class FittedPreprocessor:
    """Feature steps fitted on the training split, ending in one float32 ``features`` vector per row."""

    input_columns: list[str]
    label: str
    task: Literal["classification", "regression"]
    feature_steps: list[Preprocessor]
    label_encoder: LabelEncoder | None
    num_features: int

    @classmethod
    def fit(
        cls,
        train: ray.data.Dataset,
        labelled: ray.data.Dataset,
        steps: list[PreprocessStep],
        features: list[str],
        label: str,
        task: Literal["classification", "regression"],
    ) -> FittedPreprocessor:
        """Fit the steps on ``train``; the label vocabulary comes from ``labelled`` (all rows)."""
        dropped = {c for step in steps if step.type == "drop" for c in step.columns}
        kept = [c for c in features if c not in dropped]
        chain = Chain(*[build_step(step) for step in steps],
                      Concatenator(columns=kept, output_column_name=FEATURES, dtype=np.float32, flatten=True))
        chain.fit(train)
        label_encoder = LabelEncoder(label_column=label).fit(labelled) if task == "classification" else None
        fitted = cls(kept, label, task, list(chain.preprocessors), label_encoder, num_features=0)
        sample = train.select_columns(kept).take_batch(2, batch_format="pandas")
        fitted.num_features = int(fitted.transform_frame(sample).shape[1])
        return fitted

    @property
    def classes(self) -> list[Any] | None:
        """Label values in index order (classification), else None."""
        if self.label_encoder is None:
            return None
        vocabulary = self.label_encoder.stats_[f"unique_values({self.label})"]
        return [value for value, _ in sorted(vocabulary.items(), key=lambda item: item[1])]

    @property
    def imputed_columns(self) -> frozenset[str]:
        """Input columns whose missing values the steps fill in."""
        return frozenset(c for step in self.feature_steps if isinstance(step, SimpleImputer) for c in step.columns)

    @property
    def hash_key_fingerprint(self) -> str | None:
        """The fingerprint of the secret key the hash steps use (None when no step hashes with a key)."""
        return next((step.key_fingerprint for step in self.feature_steps
                     if isinstance(step, HashBuckets) and step.key_fingerprint), None)

    @property
    def num_outputs(self) -> int:
        """Model output width: number of classes, or 1 for regression."""
        classes = self.classes
        return len(classes) if classes is not None else 1

    def transform_dataset(self, dataset: ray.data.Dataset, keep: Sequence[str] = ()) -> ray.data.Dataset:
        """Lazy Ray Data transform to ``features`` (float32 vector), the encoded label and the ``keep`` columns."""
        steps = [*self.feature_steps, *([self.label_encoder] if self.label_encoder else [])]
        return Chain(*steps).transform(dataset).select_columns([FEATURES, self.label, *keep])

    def transform_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The same steps on a pandas frame of raw input columns: a (rows, num_features) float32 array."""
        rows = frame[self.input_columns].reset_index(drop=True)  # Ray's Concatenator aligns rows by index label
        transformed = Chain(*self.feature_steps).transform_batch(rows)
        return np.stack(transformed[FEATURES].to_numpy()).astype(np.float32, copy=False)

    def compile(self) -> CompiledPreprocessor:
        """The same fitted state as the packaged model applies it: numpy only, for requests."""
        return CompiledPreprocessor.from_json(self.to_json())

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices back to label values."""
        classes = self.classes
        if classes is None:
            raise ValueError("decode() is for classification")
        return np.asarray(classes, dtype=object)[indices]

    def to_json(self) -> str:
        """Plain-data state (no pickles): what the packaged model carries."""
        return json.dumps({
            "input_columns": self.input_columns,
            "label": self.label,
            "task": self.task,
            "num_features": self.num_features,
            "feature_steps": [dump_preprocessor(step) for step in self.feature_steps],
            "label_encoder": dump_preprocessor(self.label_encoder) if self.label_encoder else None,
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FittedPreprocessor:
        """Inverse of :meth:`to_json`."""
        state = json.loads(text)
        encoder = state["label_encoder"]
        return cls(
            input_columns=state["input_columns"],
            label=state["label"],
            task=state["task"],
            feature_steps=[load_preprocessor(step) for step in state["feature_steps"]],
            label_encoder=load_preprocessor(encoder) if encoder else None,
            num_features=state["num_features"],
        )
