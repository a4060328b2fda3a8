"""The logged model needs nothing of the platform: no Ray in its requirements, and it loads and predicts in a
process where ``import ray`` fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from sklearn.datasets import load_digits

import rayline

WITHOUT_RAY = """
import sys

class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is not installed here")

sys.meta_path.insert(0, NoRay())
import json
import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model(sys.argv[1])
rows = pd.read_json(sys.argv[2], orient="split").astype("float64")
predictions = model.predict(rows)
print(json.dumps({"predictions": predictions["prediction"].tolist(),
                  "ray_loaded": any(m == "ray" or m.startswith("ray.") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def downloaded(small_model: rayline.PipelineResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(mlflow.artifacts.download_artifacts(small_model.model_uri,
                                                    dst_path=str(tmp_path_factory.mktemp("model"))))


def test_requirements_name_no_ray(downloaded: Path) -> None:
    requirements = (downloaded / "requirements.txt").read_text().split()
    names = {line.split("==")[0].lower() for line in requirements}
    assert {"torch", "numpy", "pandas", "safetensors", "mlflow"} <= names
    assert not any(name.startswith("ray") for name in names), requirements


def test_loads_and_predicts_where_ray_cannot_be_imported(downloaded: Path, small_model: rayline.PipelineResult,
                                                          tmp_path: Path) -> None:
    rows = load_digits(as_frame=True).frame.drop(columns=["target"]).sample(25, random_state=3)
    rows = rows.reset_index(drop=True).astype("float64")
    rows.to_json(tmp_path / "rows.json", orient="split", index=False)
    done = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(downloaded), str(tmp_path / "rows.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["ray_loaded"] is False
    expected = mlflow.pyfunc.load_model(small_model.model_uri).predict(rows)["prediction"].tolist()
    assert answer["predictions"] == expected
    assert len(set(expected)) > 1  # a real model, not a constant


def test_predictions_agree_with_the_training_time_transform(small_model: rayline.PipelineResult,
                                                            downloaded: Path) -> None:
    """The compiled preprocessing (served) and Ray Data's (training) give the model the same features."""
    import numpy as np

    from rayline.data import FittedPreprocessor
    from rayline.packaged.layout import PREPROCESSOR, package_dir

    fitted = FittedPreprocessor.from_json((package_dir(downloaded) / PREPROCESSOR).read_text())
    rows = load_digits(as_frame=True).frame.drop(columns=["target"]).head(40).astype("float64")
    compiled = fitted.compile()
    np.testing.assert_allclose(compiled.transform_frame(rows), fitted.transform_frame(pd.DataFrame(rows)),
                               rtol=1e-6, atol=1e-7)
