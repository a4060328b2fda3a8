"""Peer (e): BentoML serving the same torch module with the same numpy preprocessing.

    cd bench/peers && BENCH_MODEL_DIR=DIR BENCH_WORKERS=2 ../.venv-peers/bin/bentoml serve \\
        bentoml_service:Peer --host 127.0.0.1 --port 8003
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import bentoml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_model import NumpyModel


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "2")), traffic={"timeout": 60})
class Peer:
    """``POST /invocations`` with ``{"dataframe_split": {...}}``."""

    def __init__(self) -> None:
        self.model = NumpyModel(os.environ["BENCH_MODEL_DIR"])

    @bentoml.api(route="/invocations")
    def invocations(self, dataframe_split: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": self.model.predict(self.model.block(dataframe_split))}
