"""What the cluster can hold: refuse resource requests it can never place, before any worker starts, and count
how many of a footprint fit at once."""

from __future__ import annotations

import math

import ray

from rayline.errors import SpecError
from rayline.spec import ScalingSpec


def worker_bundle(scaling: ScalingSpec) -> dict[str, float]:
    """What one Train worker reserves (Ray Train adds one GPU per worker when ``use_gpu`` and none is given)."""
    bundle = dict(scaling.resources_per_worker)
    if scaling.use_gpu:
        bundle.setdefault("GPU", 1.0)
    return {name: amount for name, amount in bundle.items() if amount > 0}


def check_placeable(scaling: ScalingSpec, nodes: list[dict[str, float]] | None = None) -> None:
    """Raise :class:`SpecError` if ``num_workers`` bundles (the minimum of a range) cannot fit on the alive nodes'
    total resources."""
    if nodes is None:
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
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
        raise SpecError(f"one worker asks for {bundle}, but no node has that much (largest: {largest})", field=field)
    if sum(per_node) < scaling.min_workers:
        raise SpecError(f"{scaling.min_workers} workers of {bundle} never fit: the cluster holds at most "
                        f"{sum(per_node)}", field="train.scaling.num_workers")


def capacity() -> dict[str, float]:
    """The most the cluster can hold at once: the autoscaler's maximum (every node type at its ``max_workers``)
    where the cluster has one, else the alive nodes' total resources."""
    from ray._private.state import state  # as Ray Train's own pre-placement check reads the autoscaler's maximum

    totals = ray.cluster_resources()
    most = state.get_max_resources_from_cluster_config() or {}
    return {name: max(totals.get(name, 0.0), float(most.get(name, 0.0))) for name in {*totals, *most}}


def how_many_fit(footprint: dict[str, float], available: dict[str, float]) -> int:
    """How many copies of ``footprint`` fit in ``available`` at once (by resource totals)."""
    return min((math.floor(available.get(name, 0.0) / amount + 1e-9) for name, amount in footprint.items()
                if amount > 0), default=0)

