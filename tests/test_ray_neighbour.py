"""Another Ray instance on the same machine (a user's own, another platform) does not confuse the platform's.

Ray code running inside the cluster that looks its cluster up by scanning the machine (Ray Train's
PlacementGroupCleaner calls the state API with no address) fails with "Found multiple active Ray instances" when
a second one runs; the cleaner's thread then dies, a finished run's placement group is never removed, and later
runs wait forever for its CPUs. The platform's processes carry ``RAY_ADDRESS``, so the lookup finds their own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

import rayline
from rayline.cluster.processes import free_port, stop_process_group

pytestmark = pytest.mark.slow


@pytest.fixture
def neighbour(tmp_path: Path) -> Iterator[str]:
    """A bare Ray head of its own on this machine, stopped by its process group (``ray stop`` would stop all).
    ``ray start`` records itself as the machine's current cluster: the record is put back afterwards."""
    record = Path("/tmp/ray/ray_current_cluster")
    recorded = record.read_text() if record.exists() else None
    port = free_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
               "--node-ip-address=127.0.0.1", "--num-cpus=0", "--include-dashboard=false", "--disable-usage-stats"]
    with open(tmp_path / "neighbour.log", "w") as log:
        starter = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert starter.wait(timeout=120) == 0, (tmp_path / "neighbour.log").read_text()
        yield f"127.0.0.1:{port}"
    finally:
        stop_process_group(starter.pid, "ray")
        if recorded is None:
            record.unlink(missing_ok=True)
        else:
            record.write_text(recorded)


def _listed_nodes_and_own_node() -> tuple[list[str], str]:
    """What the PlacementGroupCleaner does, the state API with no address, from inside the cluster: the nodes it
    lists, and the node this task runs on."""
    from ray.util.state import list_nodes

    return [node.node_id for node in list_nodes()], ray.get_runtime_context().get_node_id()


def test_in_cluster_state_lookups_find_their_own_cluster_beside_another_ray(platform: rayline.Platform,
                                                                            neighbour: str) -> None:
    platform.init_ray()
    lookup = ray.remote(_listed_nodes_and_own_node)
    listed, own = ray.get(lookup.options(num_cpus=0).remote(), timeout=120)
    assert listed == [own]  # the platform's one node, not the neighbour's
    # the premise: without the platform's RAY_ADDRESS, the same lookup fails while the neighbour runs (it finds
    # several clusters, or the one `ray start` recorded last: the neighbour's)
    unaddressed = lookup.options(num_cpus=0, runtime_env={"env_vars": {"RAY_ADDRESS": ""}})
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(unaddressed.remote(), timeout=120)
