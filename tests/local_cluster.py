"""A multi-node Ray cluster on this machine for the scripts that tests run in processes of their own
(``multinode_cluster.py``, ``elastic_cluster.py``): a driver joins one Ray cluster only, and the test session's is
the platform's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import rayline  # noqa: F401  (first: it turns Ray's token authentication on before Ray is imported)
from rayline.cluster.embedded import RAY_POINTER
from rayline.cluster.processes import free_port

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster


@contextmanager
def slot_cluster(worker_nodes: int, cpus: int, slots: dict[str, float]) -> Iterator[Cluster]:
    """A head node (1 CPU, dashboard on: Ray Train's state-API clients need it) and ``worker_nodes`` nodes with
    ``cpus`` CPUs and ``slots`` each; this process is connected to it. Ray's pointer to the latest cluster on the
    machine (the test session's platform) is put back afterwards."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util import get_node_ip_address

    pointer = RAY_POINTER.read_text() if RAY_POINTER.is_file() else None
    port = free_port()
    # The nodes' processes inherit the address: Ray Train's placement-group cleaner finds its cluster by it while
    # the test session's platform runs on the same machine.
    # (on the machine's address: Ray's nodes bind loopback only in single-node mode, which a cluster is not)
    os.environ["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
    cluster = Cluster(initialize_head=True, head_node_args={
        "gcs_server_port": port, "num_cpus": 1, "include_dashboard": True, "dashboard_port": free_port()})
    try:
        for _ in range(worker_nodes):
            cluster.add_node(num_cpus=cpus, resources=slots)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if pointer is None:  # what a plain ray.init() connects to: not this cluster, which is gone
            RAY_POINTER.unlink(missing_ok=True)
        else:
            RAY_POINTER.write_text(pointer)
