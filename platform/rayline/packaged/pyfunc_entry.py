"""MLflow models-from-code entry: the pyfunc is this file plus artifacts, so loading it unpickles nothing."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from rayline.packaged.layout import ARTIFACT_KEY
from rayline.packaged.model import PackagedModel


class RaylinePyfunc(mlflow.pyfunc.PythonModel):
    """Loads the packaged-model directory logged as the ``model`` artifact."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = PackagedModel.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        return self.model.predict(pd.DataFrame(model_input))


mlflow.models.set_model(RaylinePyfunc())
