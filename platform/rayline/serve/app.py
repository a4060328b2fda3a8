"""The Ray Serve deployment: a FastAPI ingress speaking rayline v1, MLflow scoring and OIP v2.

No ``from __future__ import annotations`` here: FastAPI must see real types (``Request``) on the
methods Serve's ingress re-binds.
"""

import asyncio
import itertools
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve

from rayline.serve.auth import authorized
from rayline.serve.errors import InputError
from rayline.serve.metrics import EndpointMetrics
from rayline.serve.model_source import AliasWatcher, LoadedModel
from rayline.serve.payloads import InferRequest, frame_from_infer, frame_from_scoring, infer_outputs

OIP_TYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "string": "BYTES",
             "boolean": "BOOL"}

api = FastAPI(title="rayline model endpoint", description="rayline v1, MLflow scoring and Open Inference "
              "Protocol v2 over one registered model.")


@api.exception_handler(InputError)
async def _input_error(request: Request, error: InputError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": "invalid request", "detail": json.loads(json.dumps(error.errors(), default=str))},
                        status_code=422)


class Route(NamedTuple):
    """The version chosen for one request and the batch queue that runs it."""

    model: LoadedModel
    batch: Callable[[pd.DataFrame], Awaitable[tuple[str, pd.DataFrame]]]


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """One replica: loads the packaged model once, validates, batches and answers."""

    def __init__(self, model_uri: str, tracking_uri: str, key_digests: list[str], max_rows: int,
                 max_body_bytes: int, max_batch_size: int, batch_wait_timeout_s: float,
                 reload_interval_s: float, canary_uri: str | None = None, canary_percent: float = 0.0) -> None:
        self.champion = AliasWatcher(model_uri, tracking_uri, max_rows, reload_interval_s)
        self.challenger = (AliasWatcher(canary_uri, tracking_uri, max_rows, reload_interval_s)
                           if canary_uri else None)
        self.canary_percent = canary_percent
        self.metrics = EndpointMetrics(self.loaded.name)
        self.key_digests = key_digests
        self.max_body_bytes = max_body_bytes
        for batched in (self._champion_batch, self._challenger_batch):
            batched.set_max_batch_size(max_batch_size)
            batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @property
    def loaded(self) -> LoadedModel:
        """The champion version answering now (swapped atomically when its alias moves)."""
        return self.champion.current

    def _route(self) -> Route:
        """Which arm answers this request: the challenger for ``canary_percent`` of them, else the champion."""
        if self.challenger is not None and random.random() * 100 < self.canary_percent:
            return Route(self.challenger.current, self._challenger_batch)
        return Route(self.champion.current, self._champion_batch)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _champion_batch(self, frames: list[pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
        return await self._forward(self.champion.current, frames)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _challenger_batch(self, frames: list[pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
        return await self._forward(self.challenger.current, frames)

    async def _forward(self, loaded: LoadedModel, frames: list[pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
        """One forward pass over the rows of a batch of requests; one version answers the whole batch."""
        rows = pd.concat(frames, ignore_index=True)
        self.metrics.batch(len(rows), loaded.version)
        predictions = await asyncio.to_thread(loaded.model.predict, rows)
        bounds = [0]
        for frame in frames:
            bounds.append(bounds[-1] + len(frame))
        return [(loaded.version, predictions.iloc[start:end].reset_index(drop=True))
                for start, end in itertools.pairwise(bounds)]

    async def _body(self, request: Request, untyped_json: bool = False) -> bytes:
        """The raw body after auth, content-type and size checks. ``untyped_json``: a body without a
        content type is read as JSON (OIP v2 clients such as tritonclient send none)."""
        if not authorized(request.headers.get("authorization"), self.key_digests):
            raise InputError(401, "missing or invalid API key")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if "inference-header-content-length" in request.headers:
            raise InputError(415, "the binary tensor extension is not supported: send JSON tensors "
                             "(tritonclient: binary_data=False)")
        if content_type != "application/json" and not (untyped_json and not content_type):
            raise InputError(415, "send the body as application/json", {"content_type": content_type or None})
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise InputError(413, f"body over {self.max_body_bytes} bytes", {"content_length": int(declared)})
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise InputError(413, f"body over {self.max_body_bytes} bytes")
        return bytes(body)

    async def _scoring(self, request: Request, route: Route) -> tuple[str, pd.DataFrame]:
        try:
            payload = json.loads(await self._body(request))
        except json.JSONDecodeError as err:
            raise InputError(400, "malformed JSON", str(err)) from None
        schema = route.model.schema
        return await route.batch(schema.check(frame_from_scoring(payload, list(schema.columns))))

    def _check_name(self, name: str) -> None:
        if name != self.loaded.name:
            raise InputError(404, f"no model named {name!r}", {"served": self.loaded.name})

    @api.post("/v1/models/{name}/predict")
    async def predict(self, name: str, request: Request) -> dict[str, Any]:
        """``{"instances": [...]}`` or ``{"inputs": {column: [...]}}`` → predictions and the answering version."""
        route = self._route()
        with self.metrics.measure("v1", route.model.version):
            self._check_name(name)
            version, predictions = await self._scoring(request, route)
        return {"model_name": self.loaded.name, "model_version": version,
                "predictions": predictions.to_dict(orient="records")}

    @api.post("/invocations")
    async def invocations(self, request: Request) -> dict[str, Any]:
        """MLflow's scoring protocol (``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``)."""
        route = self._route()
        with self.metrics.measure("invocations", route.model.version):
            _, predictions = await self._scoring(request, route)
        return {"predictions": predictions.to_dict(orient="records")}

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> dict[str, Any]:
        """Open Inference Protocol v2 inference: one input tensor per column."""
        route = self._route()
        with self.metrics.measure("v2", route.model.version):
            self._check_name(name)
            try:
                infer_request = InferRequest.model_validate_json(await self._body(request, untyped_json=True))
            except ValidationError as err:
                raise InputError(422, "invalid inference request", json.loads(err.json(include_url=False))) from None
            frame = route.model.schema.check(frame_from_infer(infer_request))
            version, predictions = await route.batch(frame)
        outputs = [output.model_dump() for output in infer_outputs(predictions)]
        return {"model_name": self.loaded.name, "model_version": version, "id": infer_request.id,
                "outputs": outputs}

    @api.get("/v2/models/{name}")
    async def metadata(self, name: str) -> dict[str, Any]:
        """OIP v2 model metadata."""
        self._check_name(name)
        inputs = [{"name": c, "datatype": OIP_TYPES.get(t, "BYTES"), "shape": [-1]}
                  for c, t in self.loaded.schema.columns.items()]
        classification = self.loaded.model.preprocessor.task == "classification"
        outputs = [{"name": "prediction", "datatype": "BYTES" if classification else "FP64", "shape": [-1]}]
        if classification:
            outputs.append({"name": "probability", "datatype": "FP64", "shape": [-1]})
        return {"name": self.loaded.name, "versions": [self.loaded.version], "platform": "rayline_pytorch",
                "inputs": inputs, "outputs": outputs}

    @api.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str) -> dict[str, Any]:
        """OIP v2 model readiness."""
        self._check_name(name)
        return {"name": name, "ready": True}

    @api.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict[str, Any]:
        ready = {"status": "ready", "model": self.loaded.name, "version": self.loaded.version}
        if self.challenger is not None:
            ready["canary"] = {"version": self.challenger.current.version,
                               "traffic_percent": self.canary_percent}
        return ready
