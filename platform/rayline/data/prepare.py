"""Read → validate → split → fit → transform once: everything training needs, before any worker starts.

Each source row is split and transformed once per run, never per epoch. Where the data fits in Ray's object
store the prepared splits are materialized there; otherwise they are written once as Parquet (a float32
``features`` tensor column and the encoded label) under the run's storage, and every epoch streams those files.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.fs as pafs
import ray
import ray.data
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from ray.data.dataset import MaterializedDataset

from rayline.data import profile
from rayline.data.fitted import FEATURES, FittedPreprocessor
from rayline.data.sources import SourceInfo, data_files, read_parquet, read_source
from rayline.data.split import SPLIT_COLUMN, SPLITS, assign_splits, labelled_rows, select_split
from rayline.data.validate import check_schema
from rayline.errors import SpecError, SpecProblem, raise_problems
from rayline.spec import PipelineSpec, PreprocessStep
from rayline.stages import StageClock

CACHE_MAX_STORE_FRACTION = 0.2  # by default, cache when the raw rows take at most this share of the object store
BYTES_PER_VALUE = 8
PREPARED_FILE_BYTES = 16 * 2**20  # the transformed rows written to each prepared file: one streamed block


@dataclass
class PreparedData:
    """Preprocessed splits (materialized, or streamed from prepared Parquet), the fitted preprocessor, and
    what tracking records."""

    datasets: dict[str, ray.data.Dataset]
    raw_splits: dict[str, ray.data.Dataset]
    preprocessor: FittedPreprocessor
    source: SourceInfo
    counts: dict[str, int]
    input_example: pd.DataFrame
    materialized: frozenset[str]
    location: str | None = None
    dropped_null_labels: int = 0
    missing_classes: list[str] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """What the run should say about its data: rows dropped, classes an evaluation split lacks."""
        dropped = [f"{self.dropped_null_labels} rows whose label is null were dropped (data.drop_null_labels)"]
        return [*(dropped if self.dropped_null_labels else []), *self.missing_classes]

    @property
    def cached(self) -> bool:
        """Whether every split is held in the object store (nothing is streamed from prepared Parquet)."""
        return self.materialized == frozenset(self.datasets)

    @property
    def input_schema(self) -> dict[str, str]:
        """Raw input column → dtype name, as requests must send them."""
        return {c: str(t) for c, t in self.input_example.dtypes.items()}

    def release(self) -> None:
        """Delete the prepared Parquet files, if any (the run's storage keeps only checkpoints)."""
        if self.location is not None:
            _delete_dir(self.location)
            self.location = None


def schema_of(dataset: ray.data.Dataset) -> dict[str, object]:
    """Column name → type, reading as little data as the format allows."""
    schema = dataset.schema()
    if schema is None:
        return {}
    return dict(zip(schema.names, schema.types, strict=True))


def fits_in_store(rows: int, columns: int) -> bool:
    """Whether ``rows`` times ``columns`` values fit comfortably in the cluster's object store."""
    store = ray.cluster_resources().get("object_store_memory", 0.0)
    return rows * columns * BYTES_PER_VALUE <= CACHE_MAX_STORE_FRACTION * store


def prepare(spec: PipelineSpec, storage_uri: str, clock: StageClock | None = None,
            earlier: Sequence[SpecProblem] = ()) -> PreparedData:
    """Prepare ``spec.data`` for training; raises :class:`SpecError` naming every bad field, ``earlier`` problems
    (found before the data was opened) included.

    ``clock`` receives the time spent in ``data`` (read, validate, split, the data gate's pass), ``preprocess_fit``
    and ``preprocess_apply`` (every row transformed once, into the object store or into prepared Parquet)."""
    clock = clock or StageClock()
    with clock.stage("data"):
        try:
            raw, source = read_source(spec.data, storage_uri)
        except SpecError as err:
            raise_problems([*earlier, *err.problems])
            raise
        schema = schema_of(raw)
        if not schema:
            raise SpecError(f"{spec.data.source} has zero rows", field="data.source", more=earlier)
        features, steps = check_schema(spec, schema, earlier)
        label = spec.data.label
        raw = raw.select_columns([*features, label])
        cache = spec.data.cache if spec.data.cache is not None else fits_in_store(raw.count(), len(features) + 1)
        assigned = assign_splits(raw, spec.data.split, label)
        if cache:
            assigned = assigned.materialize()  # the source is read and split once; later passes are in memory
        found = profile.profile(assigned, label, profile.checked_columns(features, steps),
                                spec.data.task == "classification")
        missing_classes = profile.check(spec, found, steps)
        counts = found.counts
        labelled = labelled_rows(assigned)
        splits = {name: select_split(assigned, name) for name in SPLITS}
    with clock.stage("preprocess_fit"):
        preprocessor = FittedPreprocessor.fit(splits["train"], labelled, steps, features, label, spec.data.task)
        example = _masked(splits["test"].take_batch(5, batch_format="pandas")[preprocessor.input_columns], steps)
    present = [name for name in SPLITS if counts[name]]
    location = None
    with clock.stage("preprocess_apply"):
        if cache:
            datasets = {name: preprocessor.transform_dataset(splits[name]).materialize() for name in present}
        else:
            location = f"{storage_uri.rstrip('/')}/prepared/{spec.name}-{uuid.uuid4().hex[:12]}"
            try:
                datasets = _write_prepared(labelled, preprocessor, location, present)
                # Evaluation splits are read once into the object store where they fit: only training streams.
                width = preprocessor.num_features + 1
                for name in present:
                    if name != "train" and fits_in_store(counts[name], width):
                        datasets[name] = datasets[name].materialize()
            except BaseException:
                _delete_dir(location)
                raise
        materialized = frozenset(name for name, ds in datasets.items() if isinstance(ds, MaterializedDataset))
    return PreparedData(
        datasets=datasets,
        raw_splits=splits,
        preprocessor=preprocessor,
        source=source,
        counts=counts,
        input_example=example,
        materialized=materialized,
        location=location,
        dropped_null_labels=found.unlabelled,
        missing_classes=missing_classes,
    )


def _masked(example: pd.DataFrame, steps: Sequence[PreprocessStep]) -> pd.DataFrame:
    """``example`` with every value of a hashed column replaced by a placeholder of its type: the input example is
    stored with the model, and a hashed column's raw values must be written nowhere."""
    masked = example.copy()
    for column in {c for step in steps if step.type == "hash" for c in step.columns} & set(example.columns):
        values = example[column]
        if is_bool_dtype(values):
            masked[column] = False
        elif is_numeric_dtype(values):
            masked[column] = values.dtype.type(0)
        else:
            masked[column] = "hashed"
    return masked


def _delete_dir(uri: str) -> None:
    filesystem, path = pafs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        filesystem.delete_dir(path)


def _write_prepared(labelled: ray.data.Dataset, preprocessor: FittedPreprocessor, location: str,
                    present: list[str]) -> dict[str, ray.data.Dataset]:
    """Transform every labelled row once, write the splits as Parquet partitions of bounded files, and open each
    split for streaming."""
    transformed = preprocessor.transform_dataset(labelled, keep=[SPLIT_COLUMN])
    # Blocks are combined up to the file size before each write: otherwise every source block writes a small file
    # of its own, and each epoch streams that many blocks.
    transformed.write_parquet(location, partition_cols=[SPLIT_COLUMN], min_bytes_per_file=PREPARED_FILE_BYTES)
    columns = [FEATURES, preprocessor.label]
    return {name: _read_prepared(f"{location}/{SPLIT_COLUMN}={name}").select_columns(columns) for name in present}


def _read_prepared(uri: str) -> ray.data.Dataset:
    """The prepared files of one split, each read as one block. Ray Data's cost of streaming a pass grows with
    its blocks, not its rows, and by default it cuts files into more blocks to reach ``read_op_min_num_blocks``:
    one block per file streams the same rows several times faster (BENCHMARKS.md)."""
    filesystem, path = pafs.FileSystem.from_uri(uri)
    files = data_files(filesystem, filesystem.get_file_info(path), "parquet")
    return read_parquet(uri, partitioning=None, override_num_blocks=max(1, len(files)))
