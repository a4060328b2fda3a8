"""Mistakes at the command line end in one line on stderr and exit code 2, never a traceback; and `down` leaves
the machine as `ray stop` does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import rayline
from conftest import ROOT, SERVE_MODEL, run_cli


def _one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_up_with_an_unknown_ingress_starts_nothing(tmp_path: Path) -> None:
    command = [str(Path(sys.executable).with_name("rayline")), "up", "--state-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "RAYLINE_SERVE_INGRESS": "nginx"})
    _one_line_error(done, "RAYLINE_SERVE_INGRESS='nginx'", "haproxy")
    assert not (tmp_path / "platform.json").exists()
    assert not (tmp_path / "mlflow.log").exists()  # refused before the MLflow server was started


@pytest.mark.parametrize("command", ["up", "status", "down"])
@pytest.mark.parametrize("content", ["{not json", '{"ray_port": 1}'])
def test_a_corrupt_platform_json_is_named(tmp_path: Path, command: str, content: str) -> None:
    (tmp_path / "platform.json").write_text(content)
    _one_line_error(run_cli(command, state_dir=tmp_path), "platform.json is corrupt")
    assert (tmp_path / "platform.json").read_text() == content  # nothing overwritten


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory: pytest.TempPathFactory, small_model: rayline.PipelineResult) -> Path:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.head(20)
    path = tmp_path_factory.mktemp("predict") / "rows.csv"
    frame.to_csv(path, index=False)
    return path


def test_predict_with_an_unknown_alias(rows_csv: Path, state_dir: Path, tmp_path: Path) -> None:
    done = run_cli("predict", "--model", f"models:/{SERVE_MODEL}@nobody", "--input", str(rows_csv),
                   "--output", str(tmp_path / "out"), state_dir=state_dir)
    _one_line_error(done, "--model", "nobody")
    assert not (tmp_path / "out").exists()


def test_predict_with_an_unknown_version(rows_csv: Path, state_dir: Path, tmp_path: Path) -> None:
    done = run_cli("predict", "--model", f"models:/{SERVE_MODEL}/999", "--input", str(rows_csv),
                   "--output", str(tmp_path / "out"), state_dir=state_dir)
    _one_line_error(done, "--model", "999")


def test_predict_with_input_lacking_a_column(rows_csv: Path, state_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial.csv"
    pd.read_csv(rows_csv).drop(columns=["pixel_0_3"]).to_csv(partial, index=False)
    done = run_cli("predict", "--model", f"models:/{SERVE_MODEL}@champion", "--input", str(partial),
                   "--output", str(tmp_path / "out"), state_dir=state_dir)
    _one_line_error(done, "--input", "'pixel_0_3'")
    assert not (tmp_path / "out").exists()


def test_predict_works_with_the_full_input(rows_csv: Path, state_dir: Path, tmp_path: Path) -> None:
    """The checks above refuse only what is wrong: the same call with every column predicts every row."""
    done = run_cli("predict", "--model", f"models:/{SERVE_MODEL}@champion", "--input", str(rows_csv),
                   "--output", str(tmp_path / "out"), state_dir=state_dir)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_parquet(tmp_path / "out")) == 20
