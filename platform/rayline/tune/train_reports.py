"""A trial's Train job reports to Ray Tune with its checkpoints.

Ray's ``TuneReportCallback`` forwards rank 0's metrics and only the checkpoint's path, so Tune holds no trial
checkpoint: PBT has nothing to copy from a better trial and a resumed sweep nothing to restore. Here the Train
controller hands each report (metrics and checkpoint) to the trial's actor, which reports both to Tune."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ray import tune
from ray.train import Checkpoint, UserCallback
from ray.util.queue import Queue

CHECKPOINT_PATH = "checkpoint_path"  # the Train checkpoint's path, in the metrics as Ray's callback puts it

T = TypeVar("T")


class _Forward(UserCallback):
    """In Train's controller: each report's rank-0 metrics and checkpoint, onto the trial's queue."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        self._queue.put((metrics[0], checkpoint))


def report_to_tune(train: Callable[[UserCallback], T]) -> T:
    """Run ``train`` (given the callback to add to Ray Train's) in a thread; meanwhile report each of its Train
    reports to Tune, with the checkpoint when there is one. Returns what ``train`` returns, or raises what it
    raised."""
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = train(_Forward(queue))
        except BaseException as err:  # re-raised in the trial's thread
            outcome["error"] = err
        finally:
            queue.put(None)

    thread = threading.Thread(target=work, name="rayline-trial-train", daemon=True)
    thread.start()
    while (item := queue.get()) is not None:
        metrics, checkpoint = item
        if checkpoint is None:
            tune.report(metrics)
        else:
            tune.report({**metrics, CHECKPOINT_PATH: checkpoint.path},
                        checkpoint=tune.Checkpoint(checkpoint.path, checkpoint.filesystem))
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
