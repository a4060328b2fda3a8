"""The data gate: one pass over the split rows, before anything is fitted, refusing data that would train a wrong
model while the run reports success (nulls no step handles, infinite values, a null or single-class label), every
problem in one error, and noting what the run should say (rows dropped, classes missing from an evaluation split)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import ray.data
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from rayline.data.split import SPLIT_COLUMN, SPLITS, UNLABELLED
from rayline.errors import SpecProblem, raise_problems
from rayline.spec import PipelineSpec, PreprocessStep

EVALUATION_SPLITS = ("validation", "test")


@dataclass
class DataProfile:
    """What one pass over the assigned rows found. ``nulls`` and ``infinite`` count the labelled rows' values of
    each column that is not hashed or dropped; ``classes`` counts each label value per split (classification)."""

    counts: dict[str, int]
    unlabelled: int = 0
    nulls: Counter[str] = field(default_factory=Counter)
    infinite: Counter[str] = field(default_factory=Counter)
    classes: dict[str, Counter[Any]] = field(default_factory=lambda: {name: Counter() for name in SPLITS})


def _plain(value: Any) -> Any:
    """A label value as JSON can carry it."""
    value = value.item() if isinstance(value, np.generic) else value
    return value if isinstance(value, str | int | float | bool) else str(value)


def _profile_block(batch: pd.DataFrame, label: str, columns: list[str], classification: bool) -> pd.DataFrame:
    splits = batch[SPLIT_COLUMN]
    labelled = batch[splits != UNLABELLED]
    found: dict[str, Any] = {
        "rows": {str(k): int(v) for k, v in splits.value_counts().items()},
        "nulls": {c: int(labelled[c].isna().sum()) for c in columns},
        "infinite": {c: int(np.isinf(labelled[c].to_numpy()).sum()) for c in columns
                     if is_numeric_dtype(labelled[c]) and not is_bool_dtype(labelled[c])},
    }
    if classification:
        counts = labelled.groupby([SPLIT_COLUMN, label], sort=False, dropna=True).size()
        found["classes"] = [[split, _plain(value), int(n)] for (split, value), n in counts.items()]
    return pd.DataFrame({"profile": [json.dumps(found)]})


def profile(assigned: ray.data.Dataset, label: str, columns: list[str], classification: bool) -> DataProfile:
    """Count, in one pass (one summary per block, merged here: no shuffle), the rows per split, the rows without a
    label, the nulls and infinite values of ``columns`` and, for ``classification``, each split's label values."""
    summaries = assigned.map_batches(_profile_block, batch_format="pandas", batch_size=None, fn_kwargs={
        "label": label, "columns": columns, "classification": classification}).to_pandas()["profile"]
    rows: Counter[str] = Counter()
    found = DataProfile(counts={})
    for summary in map(json.loads, summaries):
        rows.update(summary["rows"])
        found.nulls.update(summary["nulls"])
        found.infinite.update(summary["infinite"])
        for split, value, count in summary.get("classes", []):
            found.classes[split][value] += count
    found.counts = {name: rows[name] for name in SPLITS}
    found.unlabelled = rows[UNLABELLED]
    return found


def checked_columns(features: Sequence[str], steps: Sequence[PreprocessStep]) -> list[str]:
    """The features whose values reach a step that cannot take nulls or infinities: all but hashed and dropped."""
    handled = {c for step in steps if step.type in ("hash", "drop") for c in step.columns}
    return [c for c in features if c not in handled]


def check(spec: PipelineSpec, found: DataProfile, steps: Sequence[PreprocessStep]) -> list[str]:
    """Raise one :class:`SpecError` with every problem of ``found``; return what the run reports of classes of the
    training split that an evaluation split lacks (one line per set of splits lacking some)."""
    data, label = spec.data, spec.data.label
    total = sum(found.counts.values()) + found.unlabelled
    if total and found.unlabelled == total:
        raise_problems([SpecProblem("data.label", f"label column {label!r} is entirely null ({total} rows)")])
    problems = []
    if found.unlabelled and not data.drop_null_labels:
        problems.append(SpecProblem("data.label", f"label column {label!r} has {found.unlabelled} null values (of "
                                    f"{total} rows): fill them in, or set data.drop_null_labels: true to drop those "
                                    "rows"))
    problems += _value_problems(found, steps)
    if data.task == "classification":
        problems += _class_problems(label, found)
    problems += _count_problems(spec, found.counts)
    raise_problems(problems)
    return _missing_classes(found) if data.task == "classification" else []


def _value_problems(found: DataProfile, steps: Sequence[PreprocessStep]) -> list[SpecProblem]:
    imputed = {c for step in steps if step.type == "impute" for c in step.columns}
    described = []
    for column in dict.fromkeys([*found.nulls, *found.infinite]):
        parts = []
        if found.nulls[column] and column not in imputed:
            parts.append(f"{found.nulls[column]} null{'s' if found.nulls[column] > 1 else ''}")
        if found.infinite[column]:
            parts.append(f"{found.infinite[column]} infinite")
        if parts:
            described.append(f"{column!r} ({', '.join(parts)})")
    if not described:
        return []
    return [SpecProblem("data.features", f"feature columns hold values training cannot use: {', '.join(described)}; "
                                         "add an impute step for the nulls (or hash the column), and remove infinite "
                                         "values")]


def _class_problems(label: str, found: DataProfile) -> list[SpecProblem]:
    seen = [value for value, n in found.classes["train"].items() if n]
    if not found.counts["train"] or len(seen) >= 2:
        return []
    return [SpecProblem("data.label", f"classification needs at least 2 classes in the training split; label "
                                      f"{label!r} has only 1 ({seen[0]!r})")]


def _missing_classes(found: DataProfile) -> list[str]:
    """One note per set of evaluation splits that lack some classes of the training split."""
    absent: dict[tuple[str, ...], list[Any]] = {}
    for value, n in found.classes["train"].items():
        lacking = tuple(name for name in EVALUATION_SPLITS if found.counts[name] and not found.classes[name][value])
        if n and lacking:
            absent.setdefault(lacking, []).append(value)
    return [f"{'class' if len(values) == 1 else 'classes'} {', '.join(map(repr, values))} "
            f"{'is' if len(values) == 1 else 'are'} in the training split but not in {', '.join(splits)}"
            for splits, values in absent.items()]


def _count_problems(spec: PipelineSpec, counts: dict[str, int]) -> list[SpecProblem]:
    if sum(counts.values()) == 0:
        return [SpecProblem("data.source", f"{spec.data.source} has zero rows")]
    required = [name for name in SPLITS if name != "validation" or spec.data.split.validation > 0]
    return [SpecProblem("data.split", f"the {name} split is empty ({counts}); add rows or change the fractions")
            for name in required if counts[name] == 0]
