"""Peer (a) and (b): what a user writes by hand. FastAPI + uvicorn, the torch module, numpy preprocessing.

    python bench/peers/plain_fastapi.py --model-dir DIR --port 8001 [--workers 2]
"""

from __future__ import annotations

import argparse
import os

import uvicorn
from fastapi import FastAPI, Request
from numpy_model import NumpyModel  # this script's folder is on sys.path, and so on its workers'


def create_app() -> FastAPI:
    """The app of one process: the model loaded once, ``POST /invocations`` answered on the event loop."""
    model = NumpyModel(os.environ["BENCH_MODEL_DIR"])
    app = FastAPI()

    @app.post("/invocations")
    async def invocations(request: Request) -> dict:
        return {"predictions": model.predict(model.block((await request.json())["dataframe_split"]))}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ["BENCH_MODEL_DIR"] = args.model_dir  # workers are new processes: they read it from here
    uvicorn.run("plain_fastapi:create_app", factory=True, host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", access_log=False)
