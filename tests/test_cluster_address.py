"""The platform's Ray processes know their own cluster's address.

Ray code running inside the cluster that looks its cluster up with no address (Ray Train's
PlacementGroupCleaner calls the state API so) scans the machine; with another Ray instance there (a user's own,
another platform) it fails with "Found multiple active Ray instances", or finds the other one. The cleaner's
thread then dies, a stopped trial's placement group is never removed, and later runs wait forever for its CPUs.
The embedded cluster's processes carry ``RAY_ADDRESS``, which that lookup reads first."""

from __future__ import annotations

import os

import ray

import rayline


def _address_and_listed_nodes() -> tuple[str | None, list[str]]:
    from ray.util.state import list_nodes

    return os.environ.get("RAY_ADDRESS"), [node.node_id for node in list_nodes(address=None)]


def test_the_clusters_processes_carry_its_address(platform: rayline.Platform) -> None:
    platform.init_ray()
    address, listed = ray.get(ray.remote(_address_and_listed_nodes).options(num_cpus=0).remote(), timeout=120)
    assert address == platform.ray_address
    assert listed == [ray.get_runtime_context().get_node_id()]  # the lookup with no address found this cluster
