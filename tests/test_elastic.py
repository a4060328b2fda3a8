"""Elastic training (``train.scaling.num_workers: [min, max]``) on a real three-node Ray cluster: a run that loses
a worker node goes on with fewer workers from its latest checkpoint, grows back when a node returns, and
finishes. The cluster runs in a process of its own (``elastic_cluster.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cluster_script
from elastic_cluster import EPOCHS

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("elastic_cluster.py")


def test_a_run_that_loses_a_node_goes_on_with_fewer_workers_and_grows_back(tmp_path: Path) -> None:
    outcome = run_cluster_script(SCRIPT, str(tmp_path))
    workers = outcome["workers"]
    print(f"workers per epoch: {workers}, resumed from epoch {outcome['resumed_from_epoch']}")
    assert len(workers) == EPOCHS  # every epoch once: each restart resumed from its latest checkpoint
    shrunk = workers.index(1)  # the node was lost: the run went on with the worker that remained
    assert workers[0] == 2 and shrunk > 0
    assert 2 in workers[shrunk:]  # and grew back once a node with a slot returned
    assert outcome["resumed_from_epoch"] is not None
    assert outcome["test_accuracy"] > 0.8
