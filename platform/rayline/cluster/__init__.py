"""The embedded platform (local Ray + MLflow server) and connecting to existing ones."""

from rayline.cluster.platform import DEFAULT_STATE_DIR, Platform, connect, down, status, up
from rayline.cluster.resources import check_placeable, placement_problems

__all__ = ["DEFAULT_STATE_DIR", "Platform", "check_placeable", "connect", "down", "placement_problems", "status",
           "up"]
