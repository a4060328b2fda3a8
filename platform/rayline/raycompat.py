"""Every use of Ray's private modules and protected methods, in one place, each saying why no public API serves.

A Ray upgrade that moves one of these breaks here, and ``tests/test_raycompat.py`` checks each of them against
the installed Ray, whose version must be :data:`CHECKED_RAY_VERSION`. Imports are inside the functions: most
callers need one of them, and ``ray.serve`` alone takes seconds to import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHECKED_RAY_VERSION = "2.60.0"


def keep_loopback_addresses() -> None:
    """Let this process join a cluster that listens on loopback only. Ray rewrites a loopback address to the
    machine's own (``services.resolve_ip_for_localhost``) unless its single-machine mode is on, which it reads from
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import: only the private constant can turn it on later."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def autoscaler_report() -> dict[str, Any] | None:
    """The autoscaler's last status report, as ``ray status`` prints it (no public API exposes it)."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    return json.loads(status).get("autoscaler_report") if status else None


def readonly_node_type(node_id: str) -> str:
    """The node type a plain ``ray start`` cluster's read-only autoscaler reports for a node."""
    from ray.autoscaler._private.util import format_readonly_node_type

    return format_readonly_node_type(node_id)


def cluster_config() -> Any:
    """The autoscaler's node groups (autoscaler v2, KubeRay), read as Ray Train's own pre-placement check reads
    them; None without one."""
    from ray._private.state import state

    return state.get_cluster_config()


def max_cluster_resources() -> dict[str, float]:
    """The most resources the autoscaler may add up to, as Ray Train's pre-placement check reads them."""
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config() or {}


def upload_limit_bytes() -> int:
    """The largest working directory a Ray job may upload (the GCS's message size)."""
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    return GCS_STORAGE_MAX_SIZE


def pack_working_dir(directory: Path, package: Path, excludes: list[str]) -> None:
    """Zip ``directory`` as Ray packs a job's working directory (its ``.gitignore`` and default excludes applied,
    plus ``excludes``): the size checked before submitting is the size Ray would upload."""
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import create_package

    create_package(str(directory), package, include_gitignore=True,
                   excludes=[*get_runtime_env_default_excludes(), *excludes])


def serve_controller() -> Any:
    """Serve's controller actor (a ValueError when Serve is not running): its HTTP options and instance details are
    what ``serve status`` reads, and no public call returns the HTTP options in effect."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def preprocessor_state(preprocessor: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fitted Ray preprocessor's fields and statistics: what Ray's own ``serialize()`` writes, but as data rather
    than through cloudpickle, so that loading a model never unpickles."""
    return preprocessor._get_serializable_fields(), preprocessor._get_stats()


def restore_preprocessor(cls: type, fields: dict[str, Any], stats: dict[str, Any], version: int) -> Any:
    """A fitted preprocessor of ``cls`` rebuilt from :func:`preprocessor_state`'s output, as Ray's deserializer
    does."""
    from ray.data.preprocessors.utils import StatComputationPlan

    preprocessor = cls.__new__(cls)
    preprocessor._stat_computation_plan = StatComputationPlan()
    preprocessor._set_serializable_fields(fields=fields, version=version)
    preprocessor._set_stats(stats=stats)
    return preprocessor


def missing() -> list[str]:
    """The private names above that the installed Ray lacks (empty when all resolve)."""
    import importlib

    names = {
        "ray._private.ray_constants": ["ENABLE_RAY_CLUSTER", "DEBUG_AUTOSCALING_STATUS",
                                       "get_runtime_env_default_excludes"],
        "ray.experimental.internal_kv": ["_internal_kv_get"],
        "ray.autoscaler._private.util": ["format_readonly_node_type"],
        "ray._private.state": ["state"],
        "ray._private.runtime_env.packaging": ["GCS_STORAGE_MAX_SIZE", "create_package"],
        "ray.serve._private.constants": ["SERVE_CONTROLLER_NAME", "SERVE_NAMESPACE"],
        "ray.data.preprocessors.utils": ["StatComputationPlan"],
        "ray.data.preprocessor": ["SerializablePreprocessorBase"],
    }
    gone = [f"{module}.{name}" for module, attributes in names.items()
            for name in attributes if not hasattr(importlib.import_module(module), name)]
    from ray._private.state import state
    from ray.data.preprocessor import SerializablePreprocessorBase

    gone += [f"state.{name}" for name in ("get_cluster_config", "get_max_resources_from_cluster_config")
             if not hasattr(state, name)]
    gone += [f"SerializablePreprocessorBase.{name}" for name in ("_get_serializable_fields", "_get_stats",
                                                                 "_set_serializable_fields", "_set_stats")
             if not hasattr(SerializablePreprocessorBase, name)]
    return gone
