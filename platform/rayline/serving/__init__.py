"""Ray Serve: the registered model behind HTTP (rayline v1, MLflow scoring, OIP v2)."""

from rayline.serving.config import write_serve_config
from rayline.serving.deployment import Endpoint, app_builder, build_app, deploy, shutdown, status

__all__ = ["Endpoint", "app_builder", "build_app", "deploy", "shutdown", "status", "write_serve_config"]
