"""Following a registry alias in a replica: the loaded version is swapped when the alias moves."""

from __future__ import annotations

import logging
import threading
import time

from mlflow import MlflowClient

from rayline.inference.loading import load_version, resolve_version
from rayline.spec import ModelUri

logger = logging.getLogger("ray.serve")


class AliasWatcher:
    """Holds the loaded version; for an alias URI, a daemon thread polls the registry and swaps in the
    version the alias points to. Requests never wait on a load: the old version answers until the new
    one is ready."""

    def __init__(self, uri: ModelUri, tracking_uri: str, max_rows: int, interval_s: float) -> None:
        self.uri, self.tracking_uri, self.max_rows = uri, tracking_uri, max_rows
        self.client = MlflowClient(tracking_uri)
        self.current = load_version(tracking_uri, resolve_version(self.client, uri), max_rows)
        if interval_s > 0 and uri.alias is not None:
            threading.Thread(target=self._watch, args=(interval_s,), name="rayline-alias-watch", daemon=True).start()

    def _watch(self, interval_s: float) -> None:
        while True:
            time.sleep(interval_s)
            try:
                resolved = resolve_version(self.client, self.uri)
                if resolved != self.current.uri:
                    self.current = load_version(self.tracking_uri, resolved, self.max_rows)
                    logger.info("now serving %s", resolved)
            except Exception:  # the registry may be briefly unreachable: keep serving the loaded version
                logger.exception("checking %s failed; still serving %s", self.uri, self.current.uri)
