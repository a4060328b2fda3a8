"""Sweeps: Ray Tune over the one training path, nested MLflow runs, the best model published."""

from rayline.tune.runner import BestTrial, SweepResult, run_sweep

__all__ = ["BestTrial", "SweepResult", "run_sweep"]
