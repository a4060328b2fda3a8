"""Work repeated in the background while a block runs: a daemon thread calls it every few seconds."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def every(seconds: float, action: Callable[[], None], name: str) -> Iterator[None]:
    """Call ``action`` every ``seconds`` from a daemon thread named ``name`` while the block runs (first after
    ``seconds``). An exception from ``action`` skips that call only: the work is best effort. On leaving, the thread
    gets up to ``seconds`` to finish a call in progress; one stuck on an unreachable server is left to end alone."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                action()
            except Exception:  # best effort: what the block does reports real failures
                continue

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=seconds)
