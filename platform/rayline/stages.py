"""Wall time per stage of a run, in the order the stages ran: what ``rayline run`` prints and logs."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class StageClock:
    """Accumulates seconds per named stage; ``with clock.stage("data"): ...`` times a block."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add({name: time.perf_counter() - started})

    def add(self, seconds: Mapping[str, float]) -> None:
        """Add measured seconds per stage (for stages timed elsewhere, such as on a worker)."""
        for name, value in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value
