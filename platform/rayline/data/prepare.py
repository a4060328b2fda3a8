"""Read → validate → split → fit preprocessing: everything training needs, checked before any worker starts."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import ray.data

from rayline.data.fitted import FittedPreprocessor
from rayline.data.sources import SourceInfo, read_source
from rayline.data.split import SPLITS, assign_splits, count_splits, select_split
from rayline.data.validate import check_schema
from rayline.errors import SpecError
from rayline.spec import PipelineSpec

CACHE_MAX_ROWS = 200_000


@dataclass
class PreparedData:
    """Preprocessed, lazily streamed splits plus the fitted preprocessor and what tracking records."""

    datasets: dict[str, ray.data.Dataset]
    raw_splits: dict[str, ray.data.Dataset]
    preprocessor: FittedPreprocessor
    source: SourceInfo
    counts: dict[str, int]
    input_example: pd.DataFrame

    @property
    def input_schema(self) -> dict[str, str]:
        """Raw input column → dtype name, as requests must send them."""
        return {c: str(t) for c, t in self.input_example.dtypes.items()}


def schema_of(dataset: ray.data.Dataset) -> dict[str, object]:
    """Column name → type, reading as little data as the format allows."""
    schema = dataset.schema()
    if schema is None:
        return {}
    return dict(zip(schema.names, schema.types, strict=True))


def prepare(spec: PipelineSpec, storage_uri: str) -> PreparedData:
    """Prepare ``spec.data`` for training; raises :class:`SpecError` naming the field on bad data."""
    raw, source = read_source(spec.data, storage_uri)
    schema = schema_of(raw)
    if not schema:
        raise SpecError(f"{spec.data.source} has zero rows", field="data.source")
    features, steps = check_schema(spec, schema)
    label = spec.data.label
    raw = raw.select_columns([*features, label])
    assigned = assign_splits(raw, spec.data.split)
    counts = count_splits(assigned)
    if sum(counts.values()) == 0:
        raise SpecError(f"{spec.data.source} has zero rows", field="data.source")
    required = [name for name in SPLITS if name != "validation" or spec.data.split.validation > 0]
    for name in required:
        if counts[name] == 0:
            raise SpecError(f"the {name} split is empty ({counts}); add rows or change the fractions",
                            field="data.split")
    splits = {name: select_split(assigned, name) for name in SPLITS}
    preprocessor = FittedPreprocessor.fit(splits["train"], raw, steps, features, label, spec.data.task)
    example = splits["test"].take_batch(5, batch_format="pandas")[preprocessor.input_columns]
    datasets = {name: preprocessor.transform_dataset(ds) for name, ds in splits.items() if counts[name]}
    cache = spec.data.cache if spec.data.cache is not None else sum(counts.values()) <= CACHE_MAX_ROWS
    if cache:
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
    return PreparedData(
        datasets=datasets,
        raw_splits=splits,
        preprocessor=preprocessor,
        source=source,
        counts=counts,
        input_example=example,
    )
