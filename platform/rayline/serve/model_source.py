"""Resolving a registry URI to one model version and loading its packaged model in a replica."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.models import Model

from rayline.packaged import PackagedModel
from rayline.serve.validation import InputSchema
from rayline.spec.service import MODEL_URI

logger = logging.getLogger("ray.serve")


@dataclass
class LoadedModel:
    """A packaged model with the registry coordinates that answered and its input schema."""

    name: str
    version: str
    model: PackagedModel
    schema: InputSchema


def resolve_version(client: MlflowClient, model_uri: str) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/3`` → (name, version)."""
    parts = MODEL_URI.match(model_uri)
    if parts is None:
        raise ValueError(f"not a registry model URI: {model_uri!r}")
    if parts["alias"]:
        return parts["name"], client.get_model_version_by_alias(parts["name"], parts["alias"]).version
    return parts["name"], parts["version"]


def load_version(tracking_uri: str, name: str, version: str, max_rows: int) -> LoadedModel:
    """Download ``models:/name/version`` and load the packaged model (no pickle is read)."""
    mlflow.set_tracking_uri(tracking_uri)
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}")
    packaged = PackagedModel.load(f"{local}/artifacts/model")
    signature = Model.load(local).signature
    columns = {c: t.name for c, t in signature.inputs.input_types_dict().items()}
    schema = InputSchema(columns=columns, nullable=packaged.preprocessor.imputed_columns, max_rows=max_rows)
    return LoadedModel(name=name, version=version, model=packaged, schema=schema)


class AliasWatcher:
    """Holds the loaded version; for an alias URI, a daemon thread polls the registry and swaps in the
    version the alias points to. Requests never wait on a load: the old version answers until the new
    one is ready."""

    def __init__(self, model_uri: str, tracking_uri: str, max_rows: int, interval_s: float) -> None:
        self.model_uri, self.tracking_uri, self.max_rows = model_uri, tracking_uri, max_rows
        self.client = MlflowClient(tracking_uri)
        name, version = resolve_version(self.client, model_uri)
        self.current = load_version(tracking_uri, name, version, max_rows)
        if interval_s > 0 and MODEL_URI.match(model_uri)["alias"]:
            threading.Thread(target=self._watch, args=(interval_s,), name="rayline-alias-watch", daemon=True).start()

    def _watch(self, interval_s: float) -> None:
        while True:
            time.sleep(interval_s)
            try:
                name, version = resolve_version(self.client, self.model_uri)
                if version != self.current.version:
                    self.current = load_version(self.tracking_uri, name, version, self.max_rows)
                    logger.info("now serving %s version %s", name, version)
            except Exception:  # the registry may be briefly unreachable: keep serving the loaded version
                logger.exception("checking %s failed; still serving version %s", self.model_uri,
                                 self.current.version)
