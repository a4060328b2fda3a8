"""What the cluster can hold: refuse resource requests it can never place, before any worker starts, and count
how many of a footprint fit at once."""

from __future__ import annotations

import math

import ray

from rayline import raycompat
from rayline.errors import SpecProblem, raise_problems
from rayline.spec import ScalingSpec


def worker_bundle(scaling: ScalingSpec) -> dict[str, float]:
    """What one Train worker reserves (Ray Train adds one GPU per worker when ``use_gpu`` and none is given)."""
    bundle = dict(scaling.resources_per_worker)
    if scaling.use_gpu:
        bundle.setdefault("GPU", 1.0)
    return {name: amount for name, amount in bundle.items() if amount > 0}


def _autoscales() -> bool:
    """Whether an autoscaler with node types of its own runs for this cluster (``ray up``, ``ray start
    --autoscaling-config``): Ray's monitor reports the node types it sees, and without a config (a plain ``ray
    start``) its read-only provider names each node's type after the node itself."""
    report = raycompat.autoscaler_report()
    if not report:
        return False
    types = {*report.get("active_nodes", {}), *(report.get("idle_nodes") or {}), *report.get("pending_launches", {})}
    return bool(types - {raycompat.readonly_node_type(node["NodeID"]) for node in ray.nodes()})


def possible_nodes(most_workers: int) -> list[dict[str, float]] | None:
    """The resources of every node the cluster has or may add: the alive nodes, and where the autoscaler publishes
    its node types (autoscaler v2, KubeRay), each type as many times as its maximum (``most_workers`` times when
    unbounded). None when an autoscaler runs without publishing them (Ray's v1 autoscaler, a cluster.yaml): what
    it may add is unknown here, as it is to Ray Train's own pre-placement check."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    config = raycompat.cluster_config()
    if config is not None and config.node_group_configs:
        for group in config.node_group_configs:
            count = most_workers if group.max_count < 0 else min(group.max_count, most_workers)
            nodes += [{name: float(amount) for name, amount in group.resources.items()}] * count
        return nodes
    return None if _autoscales() else nodes


def placement_problems(scaling: ScalingSpec, nodes: list[dict[str, float]] | None = None) -> list[SpecProblem]:
    """Why ``num_workers`` bundles (the minimum of a range) can never fit on the cluster's nodes
    (:func:`possible_nodes`, unless ``nodes`` is given); nothing where that is unknown."""
    if nodes is None:
        nodes = possible_nodes(scaling.max_workers)
        if nodes is None:
            return []
    bundle = worker_bundle(scaling)

    def fits(node: dict[str, float]) -> int:
        return min((math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in bundle.items()),
                   default=scaling.max_workers)

    per_node = [fits(node) for node in nodes]
    if not any(per_node):
        largest = {name: max((node.get(name, 0.0) for node in nodes), default=0.0) for name in bundle}
        short = [name for name in bundle if largest[name] < bundle[name]]
        gpu_only = scaling.use_gpu and short == ["GPU"]
        field = "train.scaling.use_gpu" if gpu_only else "train.scaling.resources_per_worker"
        return [SpecProblem(field, f"one worker asks for {bundle}, but no node has that much (largest: {largest})")]
    if sum(per_node) < scaling.min_workers:
        return [SpecProblem("train.scaling.num_workers", f"{scaling.min_workers} workers of {bundle} never fit: the "
                            f"cluster holds at most {sum(per_node)}")]
    return []


def check_placeable(scaling: ScalingSpec, nodes: list[dict[str, float]] | None = None) -> None:
    """Raise :class:`SpecError` with the :func:`placement_problems`, if any."""
    raise_problems(placement_problems(scaling, nodes))


def capacity() -> dict[str, float]:
    """The most the cluster can hold at once: the autoscaler's maximum (every node type at its ``max_workers``)
    where the cluster has one, else the alive nodes' total resources."""
    totals = ray.cluster_resources()
    most = raycompat.max_cluster_resources()
    return {name: max(totals.get(name, 0.0), float(most.get(name, 0.0))) for name in {*totals, *most}}


def how_many_fit(footprint: dict[str, float], available: dict[str, float]) -> int:
    """How many copies of ``footprint`` fit in ``available`` at once (by resource totals)."""
    return min((math.floor(available.get(name, 0.0) / amount + 1e-9) for name, amount in footprint.items()
                if amount > 0), default=0)

