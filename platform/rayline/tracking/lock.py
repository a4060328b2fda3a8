"""A per-model lock held through the tracking server, so that promotions of one model happen one at a time from
any process on any node, whatever the server's backend store (sqlite, PostgreSQL, ...).

MLflow has no compare-and-set on aliases or tags, but creating a registered model is atomic: its name is the
primary key of the backend store's table, and a second creation fails with ``RESOURCE_ALREADY_EXISTS``. The lock is
a registered model named after the model with a suffix rayline refuses in model names (so it names no real model),
created to acquire and deleted to release. It carries a lease: a holder that died (a killed driver) leaves a lock
that others remove once the lease has run out. Two waiters that both find the same lock stale could, in a window of
one request, both remove it and then both hold a new one; that needs a dead holder and two promotions of the same
model racing within that window.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rayline.errors import RaylineError

LOCK_SUFFIX = " (rayline promotion lock)"  # spaces and parentheses: never in a name rayline registers
OWNER_TAG = "rayline.lock_owner"
EXPIRES_TAG = "rayline.lock_expires"
LEASE_S = 60.0  # a promotion takes a few requests; a lock older than this was left by a holder that died
WAIT_S = 180.0


def _lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


@contextmanager
def promotion_lock(client: MlflowClient, name: str, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold the promotion lock of registered model ``name`` for the block; waits up to ``wait_s`` for it."""
    lock, owner = _lock_name(name), uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while not _acquire(client, lock, owner):
        if time.monotonic() > deadline:
            raise RaylineError(f"promotion stopped: {name!r}'s promotion lock ({lock!r} in the registry) stayed held "
                               f"for {wait_s:.0f} s; the alias was not moved")
        _remove_if_stale(client, lock)
        time.sleep(random.uniform(0.02, 0.1))  # jitter: waiters do not retry in step
    try:
        yield
    finally:
        _release(client, lock, owner)


def _acquire(client: MlflowClient, lock: str, owner: str) -> bool:
    try:
        client.create_registered_model(lock, tags={OWNER_TAG: owner, EXPIRES_TAG: f"{time.time() + LEASE_S:.3f}"},
                                       description="held while rayline promotes a version of the model; "
                                                   f"safe to delete once {EXPIRES_TAG} has passed")
    except MlflowException as err:
        # held by another; or released while the server looked up the holder it had collided with
        if err.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            return False
        raise RaylineError(f"promotion stopped: could not take the promotion lock {lock!r} ({err.error_code}: "
                           f"{err.message[:200]}); the alias was not moved") from err
    return True


def _holder(client: MlflowClient, lock: str) -> dict[str, str] | None:
    try:
        return client.get_registered_model(lock).tags
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _remove_if_stale(client: MlflowClient, lock: str) -> None:
    tags = _holder(client, lock)
    if tags is not None and float(tags.get(EXPIRES_TAG, "0")) < time.time():
        _release(client, lock, tags.get(OWNER_TAG, ""))


def _release(client: MlflowClient, lock: str, owner: str) -> None:
    """Delete the lock if ``owner`` still holds it."""
    tags = _holder(client, lock)
    if tags is not None and tags.get(OWNER_TAG) == owner:
        with suppress(MlflowException):  # removed meanwhile: stale, and taken away by a waiter
            client.delete_registered_model(lock)
