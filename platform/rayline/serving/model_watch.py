"""Following a registry alias in a replica: the loaded version is swapped when the alias moves.

A version that fails to load is recorded (which, why, when) while the old version keeps answering; it is tried
again only when the alias moves or after :data:`RETRY_FAILED_AFTER_S`, never on every poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient

from rayline.errors import RaylineError
from rayline.inference.loading import LoadedModel, load_version, resolve_version
from rayline.spec import ModelUri

logger = logging.getLogger("ray.serve")
RETRY_FAILED_AFTER_S = 60.0


class ModelLoadError(RaylineError):
    """A model version that cannot be loaded; the message names the version and the cause."""


@dataclass(frozen=True)
class SwapFailure:
    """The last hot swap that failed: the version the alias named, the error, and when (epoch seconds)."""

    version: str
    error: str
    at: float

    def body(self) -> dict[str, Any]:
        """The failure as ``/readyz`` shows it."""
        return {"version": self.version, "error": self.error,
                "at": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds")}


def load_model(tracking_uri: str, uri: ModelUri, max_rows: int) -> LoadedModel:
    """Load one fixed version; any failure (missing or damaged artifacts, registry errors) is a
    :class:`ModelLoadError` naming the version."""
    try:
        return load_version(tracking_uri, uri, max_rows)
    except Exception as err:
        raise ModelLoadError(f"{uri} cannot be loaded: {' '.join(str(err).split()) or type(err).__name__}") \
            from err


SwapListener = Callable[[ModelUri, "SwapFailure | None"], None]


class AliasWatcher:
    """Holds the loaded version; for an alias URI, a daemon thread polls the registry and swaps in the
    version the alias points to. Requests never wait on a load: the old version answers until the new
    one is ready, and for good if the new one fails (see :attr:`failure`).

    ``on_swap(uri, failure)`` hears the outcome of every load attempt after the first (``failure`` None: the
    alias's version is served), e.g. to export it as a metric."""

    def __init__(self, uri: ModelUri, tracking_uri: str, max_rows: int, interval_s: float,
                 on_swap: SwapListener | None = None, clock: Callable[[], float] = time.time) -> None:
        self.uri, self.tracking_uri, self.max_rows = uri, tracking_uri, max_rows
        self.on_swap, self.clock = on_swap, clock
        self.client = MlflowClient(tracking_uri)
        self.current = load_model(tracking_uri, resolve_version(self.client, uri), max_rows)
        self.failure: SwapFailure | None = None
        if interval_s > 0 and uri.alias is not None:
            threading.Thread(target=self._watch, args=(interval_s,), name="rayline-alias-watch", daemon=True).start()

    def swap_status(self) -> dict[str, Any]:
        """``{"swap_failed": {...}}`` while the alias names a version that failed to load, else nothing."""
        return {} if self.failure is None else {"swap_failed": self.failure.body()}

    def _watch(self, interval_s: float) -> None:
        while True:
            time.sleep(interval_s)
            self.check()

    def check(self) -> None:
        """Look at the alias once: swap to the version it names, unless that version failed to load less than
        :data:`RETRY_FAILED_AFTER_S` ago."""
        try:
            resolved = resolve_version(self.client, self.uri)
        except Exception:  # the registry may be briefly unreachable: keep serving the loaded version
            logger.exception("checking %s failed; still serving %s", self.uri, self.current.uri)
            return
        if resolved == self.current.uri:
            if self.failure is not None:  # the alias moved back to the version being served
                self._record(None)
            return
        failed = self.failure
        if failed and failed.version == str(resolved.version) and self.clock() - failed.at < RETRY_FAILED_AFTER_S:
            return
        try:
            self.current = load_model(self.tracking_uri, resolved, self.max_rows)
        except ModelLoadError as err:
            logger.error("hot swap failed: %s; still serving %s", err, self.current.uri)
            self._record(SwapFailure(str(resolved.version), str(err), self.clock()))
            return
        logger.info("now serving %s", resolved)
        self._record(None)

    def _record(self, failure: SwapFailure | None) -> None:
        self.failure = failure
        if self.on_swap is not None:
            self.on_swap(self.uri, failure)
