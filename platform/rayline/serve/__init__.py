"""Ray Serve: the registered model behind HTTP (rayline v1, MLflow scoring, OIP v2)."""

from rayline.serve.batch import BatchPrediction, predict_batch
from rayline.serve.deploy import Endpoint, app_builder, build_app, deploy, shutdown, status

__all__ = ["BatchPrediction", "Endpoint", "app_builder", "build_app", "deploy", "predict_batch", "shutdown", "status"]
