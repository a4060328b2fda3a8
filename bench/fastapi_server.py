"""The plain peer of the serving benchmark: one process, FastAPI + uvicorn, MLflow's scoring route.

    python bench/fastapi_server.py --model-uri models:/digits/1 --port 8001

It loads the same logged model with ``mlflow.pyfunc.load_model`` and answers ``POST /invocations`` with
``{"dataframe_split": ...}`` bodies: no validation, batching, auth or metrics.
"""

from __future__ import annotations

import argparse

import mlflow
import pandas as pd
import uvicorn
from fastapi import FastAPI, Request


def build(model_uri: str) -> FastAPI:
    model = mlflow.pyfunc.load_model(model_uri)
    types = {c: t.to_numpy() for c, t in model.metadata.get_input_schema().input_types_dict().items()}
    app = FastAPI()

    @app.get("/ping")
    def ping() -> str:
        return "ok"

    @app.post("/invocations")
    async def invocations(request: Request) -> dict:
        split = (await request.json())["dataframe_split"]
        frame = pd.DataFrame(split["data"], columns=split["columns"]).astype(types)  # JSON numbers are float64
        return {"predictions": model.predict(frame).to_dict(orient="records")}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.model_uri), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
