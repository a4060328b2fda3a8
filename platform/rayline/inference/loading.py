"""Resolving a registry URI to one model version and loading its packaged model (in a replica or an actor)."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.models import Model

from rayline.inference.schema import InputSchema
from rayline.packaged import PackagedModel
from rayline.packaged.layout import package_dir
from rayline.spec import ModelUri


@dataclass(frozen=True)
class LoadedModel:
    """A packaged model with the registry version that answers and its input schema."""

    uri: ModelUri
    model: PackagedModel
    schema: InputSchema

    @property
    def name(self) -> str:
        return self.uri.name

    @property
    def version(self) -> str:
        return str(self.uri.version)


def resolve_version(client: MlflowClient, uri: ModelUri) -> ModelUri:
    """The fixed version ``uri`` names now (an alias is looked up in the registry)."""
    if uri.alias is None:
        return uri
    return ModelUri.of_version(uri.name, client.get_model_version_by_alias(uri.name, uri.alias).version)


def load_version(tracking_uri: str, uri: ModelUri, max_rows: int) -> LoadedModel:
    """Download one fixed version and load its packaged model (no pickle is read)."""
    mlflow.set_tracking_uri(tracking_uri)
    local = mlflow.artifacts.download_artifacts(str(uri))
    packaged = PackagedModel.load(package_dir(local))
    signature = Model.load(local).signature
    columns = {c: t.name for c, t in signature.inputs.input_types_dict().items()}
    schema = InputSchema(columns=columns, nullable=packaged.preprocessor.nullable_columns, max_rows=max_rows,
                         numeric_model=packaged.preprocessor.numeric_only)
    return LoadedModel(uri=uri, model=packaged, schema=schema)
