"""The main job: data → train → evaluate → package → register."""

from rayline.pipeline.runner import PipelineResult, Progress, run

__all__ = ["PipelineResult", "Progress", "run"]
