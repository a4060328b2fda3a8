"""Peer (e): BentoML serving the same torch module with the same numpy preprocessing.

    cd bench/peers && BENCH_MODEL_DIR=DIR BENCH_WORKERS=2 ../.venv-peers/bin/bentoml serve \\
        bentoml_service:Peer --host 127.0.0.1 --port 8003

2 workers, no adaptive batching: batching (a batchable service behind this one, the body being one JSON object)
answered 503s under load at 32 connections and took 5x longer at 1.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
from numpy_model import NumpyModel  # `bentoml serve` runs in this folder and puts it on sys.path


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "2")), traffic={"timeout": 60})
class Peer:
    """``POST /invocations`` with ``{"dataframe_split": {...}}``."""

    def __init__(self) -> None:
        self.model = NumpyModel(os.environ["BENCH_MODEL_DIR"])

    @bentoml.api(route="/invocations")
    def invocations(self, dataframe_split: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": self.model.predict(self.model.block(dataframe_split))}
