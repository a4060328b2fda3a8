"""A pipeline run on a three-node Ray cluster (``ray.cluster_utils.Cluster``), run by ``test_multinode.py`` in a
process of its own: a driver joins one Ray cluster only, and the test session's is the platform's.

The head node has 1 CPU and no ``trainer`` slot (the driver's Ray Data tasks and the Train controller). Each of the
two worker nodes has 2 CPUs and two slots, and each Train worker takes a CPU and a slot, so both workers would fit
on one worker node, where ``train.scaling.placement: pack`` (Ray's PACK, the default) puts them; the run asks for
``spread``, which puts them on two. The run is ``pipelines/digits.yaml``
through ``rayline.run``, sharded with FSDP so that each rank writes its own shards of every checkpoint, into a
storage directory all nodes share (they share the machine), and tracked on the MLflow server given by its URI.

Then a task pinned to each node loads the registered version from the registry, through that URI, and predicts.
Where everything ran (node ids, from Ray's state API and the tasks themselves), the checkpoints' files and the
predictions are printed as JSON on the last line.

    python tests/multinode_cluster.py WORKDIR TRACKING_URI NAME
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import rayline  # first: it turns Ray's token authentication on before Ray is imported
from local_cluster import slot_cluster
from rayline.cluster.processes import wait_until

PIPELINES = Path(__file__).parents[1] / "pipelines"
SLOT = "trainer"
WORKER_NODES = 2
EPOCHS = 2
ROWS = 100  # the raw rows each node's task predicts

def _predict_here(tracking_uri: str, model_uri: str, rows: list[dict[str, float]]) -> dict[str, Any]:
    """On the node this task was pinned to: the registered model, downloaded from the registry at
    ``tracking_uri``, and its labels for ``rows``."""
    import pandas as pd
    import ray

    from rayline.inference.loading import load_version
    from rayline.spec import ModelUri

    loaded = load_version(tracking_uri, ModelUri.parse(model_uri), max_rows=len(rows))
    labels = loaded.model.predict(pd.DataFrame(rows))["prediction"]
    return {"node": ray.get_runtime_context().get_node_id(), "labels": [int(label) for label in labels]}


def _actor_nodes(class_name: str, count: int) -> list[str]:
    """The nodes of the ``count`` actors of ``class_name`` that the run created (alive or since stopped)."""
    from ray.util.state import list_actors

    found: list[Any] = []

    def listed() -> bool:
        found[:] = list_actors(filters=[("class_name", "=", class_name)])
        return len(found) >= count

    wait_until(listed, 30, f"{count} {class_name} actor(s) in Ray's state API", lambda: f"found {found}")
    return [actor.node_id for actor in found]


def _checkpoint_files(storage: Path) -> dict[str, list[str]]:
    """Each checkpoint in storage (``<run>/<checkpoint>``) and the files in it."""
    return {f"{d.parent.name}/{d.name}": sorted(str(f.relative_to(d)) for f in d.rglob("*") if f.is_file())
            for d in sorted((storage / "train").glob("*/checkpoint_*")) if d.is_dir()}


def main(workdir: Path, tracking_uri: str, name: str) -> dict[str, Any]:
    """Train on the cluster, then load the registered model on every node; what happened where."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from sklearn.datasets import load_digits

    started = time.perf_counter()
    with slot_cluster(WORKER_NODES, cpus=2, slots={SLOT: 2}) as cluster:
        head = cluster.head_node.node_id
        workers = [node.node_id for node in cluster.worker_nodes]
        cluster_s = time.perf_counter() - started
        storage = workdir / "storage"  # one directory every node reaches: they share this machine's disk
        progress: list[str] = []
        result = rayline.run(PIPELINES / "digits.yaml", {
            "model": {"name": "mlp", "params": {"hidden": [64]}}, "train.epochs": EPOCHS,
            "train.checkpoint_every": 1, "train.strategy": "fsdp", "train.scaling.num_workers": WORKER_NODES,
            "train.scaling.resources_per_worker": {"CPU": 1, SLOT: 1}, "train.scaling.placement": "spread",
            "tracking.experiment": name, "tracking.model_name": name,
        }, platform=rayline.Platform(cluster.address, tracking_uri, str(storage)),
            progress=lambda stage, message: progress.append(f"{stage}: {message}"))
        pipeline_s = time.perf_counter() - started - cluster_s
        digits = load_digits(as_frame=True).frame.head(ROWS)
        rows = digits.drop(columns="target").to_dict("records")
        predict = ray.remote(num_cpus=0)(_predict_here)
        loaded = ray.get([predict.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                          .remote(tracking_uri, result.model_uri, rows) for node in [head, *workers]])
        return {
            "head": head, "worker_nodes": workers,
            "train_worker_nodes": _actor_nodes("RayTrainWorker", WORKER_NODES),
            "controller_nodes": _actor_nodes("TrainController", 1),
            "storage": str(storage), "checkpoints": _checkpoint_files(storage),
            "run_id": result.run_id, "model_uri": result.model_uri, "test_accuracy": result.metrics["test_accuracy"],
            "progress": progress, "loaded": loaded, "true_labels": digits["target"].tolist(),
            "seconds": {"cluster": cluster_s, "pipeline": pipeline_s,
                        "loads": time.perf_counter() - started - cluster_s - pipeline_s},
        }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])), flush=True)
    sys.exit(0)
