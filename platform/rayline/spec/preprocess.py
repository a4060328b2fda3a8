"""Pydantic models of a pipeline's preprocessing steps (``preprocess:`` in ``pipelines/*.yaml``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from rayline.spec.base import Strict


class _Step(Strict):
    """A preprocessing step. The steps of ``preprocess`` are applied in order, each fitted on the training split
    only (so nothing about the validation or test rows leaks into the model), and then applied to every split
    with the fitted state. After the steps, all kept features are concatenated into a single float32 vector per
    row. Every non-numeric feature must be covered by a ``one_hot``, ``hash`` or ``drop`` step."""

    columns: list[str] = Field(
        min_length=1, description="the feature columns the step applies to; an entry may be a glob pattern over the "
        "feature columns (``pixel_*``, ``*_mm``), and each pattern must match at least one column")


class StandardScale(_Step):
    """Subtract the training mean, divide by the training (population) std."""

    type: Literal["standard_scale"] = Field(description="selects this step")


class MinMaxScale(_Step):
    """Scale to [0, 1] with the training min and max. Values outside the training range (when serving) leave
    [0, 1]."""

    type: Literal["min_max_scale"] = Field(description="selects this step")


class OneHot(_Step):
    """One column per category seen in training; unseen (and missing) categories encode as all zeros."""

    type: Literal["one_hot"] = Field(description="selects this step")
    max_categories: int | None = Field(
        None, ge=1, description="keep only this many categories per column, the most frequent in training (the "
        "others encode as all zeros); none: every category seen")


class Impute(_Step):
    """Fill in missing values (null, NaN) with a statistic of the training split or a constant."""

    type: Literal["impute"] = Field(description="selects this step")
    strategy: Literal["mean", "most_frequent", "constant"] = Field(
        "mean", description="what fills a gap: the column's training mean, its most frequent training value, or "
        "``fill_value``")
    fill_value: float | str | None = Field(None, description="the value that fills gaps; required with "
                                           "``strategy: constant``")

    @model_validator(mode="after")
    def _constant_has_value(self) -> Impute:
        if self.strategy == "constant" and self.fill_value is None:
            raise ValueError("strategy 'constant' needs fill_value")
        return self


class Drop(_Step):
    """Remove sensitive or useless columns before anything else sees them. No raw value of a dropped column is
    written anywhere."""

    type: Literal["drop"] = Field(description="selects this step")


class Hash(_Step):
    """Replace each value by a one-hot of its keyed BLAKE2 hash bucket: the raw value never reaches the model.

    Every value is first given one canonical form, so that a value falls in the same bucket in training, behind
    HTTP, in the MLflow pyfunc and in batch inference: values equal in Python share a bucket (``3``, ``3.0``,
    ``True`` and ``1``), missing values (null, NaN) share one, and strings stay apart from numbers.

    The hash is keyed with a secret from ``RAYLINE_HASH_KEY`` (or the file that ``RAYLINE_HASH_KEY_FILE`` names),
    so that a dictionary of likely values (names, zip codes) cannot reverse the buckets: a run without the key is
    refused unless the step says ``keyed: false``. The key must be in the environment wherever the model is loaded
    too (start ``rayline up`` with it, so that Serve replicas inherit it); the model and the run record only its
    fingerprint (tag ``rayline.hash_key_fingerprint``). No raw value of a hashed column is written anywhere: the
    model's input example holds placeholders in hashed columns.
    """

    type: Literal["hash"] = Field(description="selects this step")
    num_buckets: int = Field(16, ge=2, le=4096, description="hash buckets per column, each one position of "
                             "the one-hot; fewer buckets put more distinct values together")
    keyed: bool = Field(
        True, description="hash with the secret key in ``RAYLINE_HASH_KEY`` (or the file named by "
        "``RAYLINE_HASH_KEY_FILE``), which training and serving both need; the model records only its "
        "fingerprint. false: an unkeyed hash, whose buckets a dictionary of likely values (names, zip codes) can "
        "reverse")


PreprocessStep = Annotated[
    StandardScale | MinMaxScale | OneHot | Impute | Drop | Hash, Field(discriminator="type")
]
