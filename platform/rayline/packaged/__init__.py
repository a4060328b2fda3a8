"""The one packaged model (weights + fitted preprocessor + model spec) and its MLflow pyfunc entry."""

from pathlib import Path

from rayline.packaged.model import PackagedModel

PYFUNC_ENTRY = str(Path(__file__).with_name("pyfunc_entry.py"))

__all__ = ["PYFUNC_ENTRY", "PackagedModel"]
