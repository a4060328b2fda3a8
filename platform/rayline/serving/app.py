"""The Ray Serve deployment: a FastAPI ingress speaking rayline v1, MLflow scoring and OIP v2.

A request's body becomes checked rows (one float64 block for numeric models), rows of concurrent requests share
one forward pass through ``@serve.batch``, and a lone request does not wait for company.

No ``from __future__ import annotations`` here: FastAPI must see real types (``Request``) on the
methods Serve's ingress re-binds.
"""

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from rayline.inference.loading import LoadedModel
from rayline.packaged import Predictions
from rayline.serving.auth import authorized
from rayline.serving.errors import InputError
from rayline.serving.metrics import EndpointMetrics
from rayline.serving.model_watch import AliasWatcher
from rayline.serving.oip import encode_infer_response, parse_infer_request
from rayline.serving.payloads import Rows, parse_json, rows_from_scoring, rows_from_tensors
from rayline.serving.server_config import ServerConfig
from rayline.spec import ModelUri

OIP_TYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "string": "BYTES",
             "boolean": "BOOL"}
BINARY_HEADER = "inference-header-content-length"

api = FastAPI(title="rayline model endpoint", description="rayline v1, MLflow scoring and Open Inference "
              "Protocol v2 over one registered model.", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(InputError)
async def _input_error(request: Request, error: InputError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(_strict_json(error.body()), status_code=error.status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": "invalid request", "detail": _strict_json(error.errors())}, status_code=422)


def _strict_json(value: Any) -> Any:
    """``value`` as strict JSON can carry it: what json cannot encode as text, and NaN or Infinity (which a
    client may have sent) as strings."""
    return json.loads(json.dumps(value, default=str), parse_constant=str)


Batch = Callable[[tuple[LoadedModel, Rows]], Awaitable[Predictions]]


class Route(NamedTuple):
    """The version chosen for one request and the batch queue that runs it."""

    model: LoadedModel
    batch: Batch


def _predict_rows(loaded: LoadedModel, parts: list[Rows]) -> Predictions:
    """One forward pass over the concatenated rows of several requests."""
    if isinstance(parts[0], np.ndarray):
        return loaded.model.predict_block(parts[0] if len(parts) == 1 else np.concatenate(parts))
    return loaded.model.predict_frame(parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True))


def _oip_values(values: np.ndarray) -> np.ndarray:
    """Labels travel as BYTES (their text); numbers as they are."""
    return np.array([str(v) for v in values], dtype=object) if values.dtype == object else values


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """One replica: loads the packaged model once, validates, batches and answers."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = EndpointMetrics(config.model.name)
        self.champion = self._watcher(config.model)
        self.challenger = self._watcher(config.canary) if config.canary else None
        self.queued = 0
        for batched in (self._champion_batch, self._challenger_batch):
            batched.set_max_batch_size(config.max_batch_size)
            batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    def _watcher(self, uri: ModelUri) -> AliasWatcher:
        """The loaded version of ``uri``, following its alias; a version that cannot be loaded fails the replica
        (Serve reports the deployment as failed)."""
        config = self.config
        return AliasWatcher(uri, config.tracking_uri, config.max_rows, config.reload_interval_s, self.metrics.swap)

    @property
    def loaded(self) -> LoadedModel:
        """The champion version answering now (swapped atomically when its alias moves)."""
        return self.champion.current

    def _route(self) -> Route:
        """Which arm answers this request: the challenger for ``canary_percent`` of them, else the champion."""
        if self.challenger is not None and random.random() * 100 < self.config.canary_percent:
            return Route(self.challenger.current, self._challenger_batch)
        return Route(self.champion.current, self._champion_batch)

    async def _predict(self, route: Route, rows: Rows) -> Predictions:
        """Queue ``rows`` for the route's next forward pass. The batch wait applies only while other requests
        are queued on this replica: a lone request goes at once."""
        self.queued += 1
        try:
            route.batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s if self.queued > 1 else 0.0)
            return await route.batch((route.model, rows))
        finally:
            self.queued -= 1

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _champion_batch(self, items: list[tuple[LoadedModel, Rows]]) -> list[Predictions]:
        return await self._forward(items)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _challenger_batch(self, items: list[tuple[LoadedModel, Rows]]) -> list[Predictions]:
        return await self._forward(items)

    async def _forward(self, items: list[tuple[LoadedModel, Rows]]) -> list[Predictions]:
        """One forward pass per model version over the rows of a batch of requests (a batch spans two versions
        only while an alias moves), each request's rows checked by that version's schema."""
        answers: list[Predictions | None] = [None] * len(items)
        for loaded in {id(loaded): loaded for loaded, _ in items}.values():
            positions = [i for i, (model, _) in enumerate(items) if model is loaded]
            parts = [items[i][1] for i in positions]
            predictions = await asyncio.to_thread(_predict_rows, loaded, parts)
            self.metrics.batch(len(predictions), loaded.version)
            start = 0
            for position, part in zip(positions, parts, strict=True):
                answers[position] = predictions.rows(start, start + len(part))
                start += len(part)
        return answers

    def _authorize(self, request: Request) -> None:
        if not authorized(request.headers.get("authorization"), self.config.key_digests):
            raise InputError(401, "missing or invalid API key")

    async def _body(self, request: Request) -> bytes:
        """The raw body after the size checks (413 above ``max_body_bytes``)."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise InputError(413, f"body over {limit} bytes", {"content_length": int(declared)})
        body = bytearray()
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        raise InputError(413, f"body over {limit} bytes")
        except TimeoutError:  # a slow or stalled sender (slowloris) must not hold the replica
            raise InputError(408, f"body not received within {self.config.body_timeout_s} s",
                             {"received_bytes": len(body)}) from None
        return bytes(body)

    @staticmethod
    def _require_json(request: Request, untyped: bool = False) -> None:
        """415 unless the body is declared JSON. ``untyped``: a body without a content type is read as JSON
        (OIP v2 clients such as tritonclient send none)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not (untyped and not content_type):
            raise InputError(415, "send the body as application/json", {"content_type": content_type or None})

    async def _json_body(self, request: Request) -> Any:
        self._require_json(request)
        return parse_json(await self._body(request))

    def _check_name(self, name: str) -> None:
        if name != self.loaded.name:
            raise InputError(404, f"no model named {name!r}", {"served": self.loaded.name})

    async def _score(self, payload: Any, route: Route) -> Predictions:
        return await self._predict(route, rows_from_scoring(payload, route.model.schema))

    @api.post("/v1/models/{name}/predict")
    async def predict(self, name: str, request: Request) -> dict[str, Any]:
        """``{"instances": [...]}`` or ``{"inputs": {column: [...]}}`` → predictions and the answering version."""
        route = self._route()
        with self.metrics.measure("v1", route.model.version):
            self._authorize(request)
            self._check_name(name)
            predictions = await self._score(await self._json_body(request), route)
        return JSONResponse({"model_name": route.model.name, "model_version": route.model.version,
                             "predictions": predictions.records()})

    @api.post("/invocations")
    async def invocations(self, request: Request) -> dict[str, Any]:
        """MLflow's scoring protocol (``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``)."""
        route = self._route()
        with self.metrics.measure("invocations", route.model.version):
            self._authorize(request)
            predictions = await self._score(await self._json_body(request), route)
        return JSONResponse({"predictions": predictions.records()})

    async def score(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``/invocations`` without HTTP, for Ray Serve handle calls: a scoring payload → predictions."""
        route = self._route()
        with self.metrics.measure("handle", route.model.version):
            predictions = await self._score(payload, route)
        return {"predictions": predictions.records()}

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> Response:
        """Open Inference Protocol v2 inference, JSON or binary tensors (Triton's binary data extension): one
        ``[N, F]`` tensor or one tensor per column in; ``prediction`` (and ``probability``) out."""
        route = self._route()
        with self.metrics.measure("v2", route.model.version):
            self._authorize(request)
            self._check_name(name)
            header = request.headers.get(BINARY_HEADER)
            if header is None:
                self._require_json(request, untyped=True)
            elif not header.strip().isdigit():
                raise InputError(400, f"{BINARY_HEADER} must be a non-negative integer", {"value": header})
            call = parse_infer_request(await self._body(request), None if header is None else int(header))
            predictions = await self._predict(route, rows_from_tensors(call.inputs, route.model.schema))
        outputs = {name: _oip_values(values) for name, values in predictions.columns().items()}
        body, headers = encode_infer_response(call, route.model.name, route.model.version, outputs)
        return Response(body, headers=headers)

    @api.get("/v2/models/{name}")
    async def metadata(self, name: str, request: Request) -> dict[str, Any]:
        """OIP v2 model metadata: one ``[-1, F]`` FP64 tensor for numeric models (columns in the tensor's
        ``parameters``), else one tensor per column."""
        self._authorize(request)
        self._check_name(name)
        loaded = self.loaded
        schema = loaded.schema
        if schema.numeric:
            inputs = [{"name": "input", "datatype": "FP64", "shape": [-1, len(schema.names)],
                       "parameters": {"columns": schema.names}}]
        else:
            inputs = [{"name": c, "datatype": OIP_TYPES.get(t, "BYTES"), "shape": [-1]}
                      for c, t in schema.columns.items()]
        classification = loaded.model.preprocessor.task == "classification"
        outputs = [{"name": "prediction", "datatype": "BYTES" if classification else "FP64", "shape": [-1]}]
        if classification:
            outputs.append({"name": "probability", "datatype": "FP64", "shape": [-1]})
        return {"name": loaded.name, "versions": [loaded.version], "platform": "rayline_pytorch",
                "inputs": inputs, "outputs": outputs}

    @api.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str, request: Request) -> dict[str, Any]:
        """OIP v2 model readiness."""
        self._authorize(request)
        self._check_name(name)
        return {"name": name, "ready": True}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse(api.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        self._authorize(request)
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
                                   title=api.title)

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
        """200 while a version answers; ``swap_failed`` (champion or canary) while the alias names a version
        that failed to load and the previous one still answers."""
        ready = {"status": "ready", "model": self.loaded.name, "version": self.loaded.version,
                 **self.champion.swap_status()}
        if self.challenger is not None:
            ready["canary"] = {"version": self.challenger.current.version,
                               "traffic_percent": self.config.canary_percent, **self.challenger.swap_status()}
        return ready

