"""A trained checkpoint becomes a registered model version: packaged, logged to a run, registered, and offered
to the promotion gate. Pipelines and sweeps (for their best trial) publish through here."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from ray.train import Checkpoint

from rayline import tracking
from rayline.data import PreparedData
from rayline.packaged import PackagedModel, layout
from rayline.spec import PipelineSpec
from rayline.train import read_weights


def package(spec: PipelineSpec, prepared: PreparedData, checkpoint: Checkpoint, run_id: str) -> str:
    """Log the packaged model (weights + fitted preprocessing + model spec) to ``run_id``; return its model URI."""
    with TemporaryDirectory() as tmp:
        directory = PackagedModel.write(Path(tmp) / layout.ARTIFACT_KEY, read_weights(checkpoint),
                                        prepared.preprocessor.to_json(), spec.model)
        example = prepared.input_example
        output = PackagedModel.load(directory, own_code=True).predict(example)
        return tracking.log_pyfunc(run_id, layout.PYFUNC_ENTRY, {layout.ARTIFACT_KEY: str(directory)}, example,
                                   output, code_paths=layout.CODE_PATHS, pip_requirements=layout.pip_requirements())


def register(spec: PipelineSpec, tracking_uri: str, model_uri: str,
             metrics: dict[str, float]) -> tuple[str, tracking.PromotionDecision]:
    """Register ``model_uri`` under ``tracking.model_name`` and let the gate decide on the alias."""
    name = spec.tracking.model_name
    version = tracking.register(tracking_uri, model_uri, name)
    metric, mode = spec.promotion
    decision = tracking.promote_if_better(tracking_uri, name, version, spec.tracking.alias, metric, mode,
                                          metrics[metric])
    return version, decision
