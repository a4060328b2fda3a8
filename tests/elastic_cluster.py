"""Elastic training on a three-node Ray cluster (``ray.cluster_utils.Cluster``), run by ``test_elastic.py`` in a
process of its own: a driver joins one Ray cluster only, and the test session's is the platform's.

The head node has 1 CPU (the driver's Ray Data tasks and the Train controller). Each of the two worker nodes has
no CPU and one ``trainer`` slot, and each Train worker takes a slot and no CPU, so a worker node holds one Train
worker and nothing else (no data block is lost with it). The run asks for 1 to 2 workers. Once the 2-worker
group has checkpointed an epoch, a worker node is removed; once the 1-worker group has checkpointed an epoch, a
node with a slot is added back. The outcome (every epoch's worker count, where the run resumed, its test
accuracy) is printed as JSON on the last line.

    python tests/elastic_cluster.py WORKDIR
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import rayline  # noqa: F401  (first: it turns Ray's token authentication on before Ray is imported)
from local_cluster import slot_cluster
from rayline.data import prepare
from rayline.spec import load_spec
from rayline.train import TrainOutcome, fit

PIPELINES = Path(__file__).parents[1] / "pipelines"
SLOT = "trainer"
RUN = "elastic"
EPOCHS = 8
DEADLINE_S = 300


def _checkpointed_with(storage: Path, workers: int) -> bool:
    """Whether Ray Train has registered a checkpoint of an epoch trained by ``workers`` workers."""
    snapshot = storage / "train" / RUN / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return False  # not written yet, or being written
    return any(result["metrics"].get("workers") == workers for result in results)


def _wait(what: str, ready: Any, training: threading.Thread) -> None:
    until = time.monotonic() + DEADLINE_S
    while not ready():
        if not training.is_alive():
            raise RuntimeError(f"training ended before {what}")
        if time.monotonic() > until:
            raise TimeoutError(f"no {what} within {DEADLINE_S} s")
        time.sleep(0.2)


def main(workdir: Path) -> dict[str, Any]:
    with slot_cluster(2, cpus=0, slots={SLOT: 1}) as cluster:
        storage = workdir / "storage"
        spec = load_spec(PIPELINES / "digits.yaml", {
            "model": {"name": "fault_models:SlowMLP", "params": {"step_s": 0.15, "hidden": [64]}},
            "train.epochs": EPOCHS, "train.checkpoint_every": 1, "train.max_failures": 3,
            "train.scaling.num_workers": [1, 2], "train.scaling.elastic_resize_interval_s": 2,
            "train.scaling.resources_per_worker": {"CPU": 0, SLOT: 1},
            "tracking.experiment": RUN, "tracking.model_name": RUN,
        })
        prepared = prepare(spec, str(storage))
        outcome: dict[str, TrainOutcome | BaseException] = {}

        def train() -> None:
            try:
                outcome["result"] = fit(spec, prepared, str(storage), run_name=RUN)
            except BaseException as err:  # re-raised in the main thread
                outcome["error"] = err

        training = threading.Thread(target=train)
        training.start()
        _wait("a checkpoint of the 2-worker group", lambda: _checkpointed_with(storage, 2), training)
        cluster.remove_node(next(iter(cluster.worker_nodes)))
        _wait("a checkpoint of the 1-worker group", lambda: _checkpointed_with(storage, 1), training)
        cluster.add_node(num_cpus=0, resources={SLOT: 1})
        training.join(DEADLINE_S)
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        return {"workers": [epoch["workers"] for epoch in result.history],
                "resumed_from_epoch": result.resumed_from_epoch,
                "test_accuracy": result.test_metrics["test_accuracy"]}

if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
    sys.exit(0)
