"""The sweep spec's scheduler as Ray Tune's, fitted to trials that are whole Train jobs, and the stopper every
sweep runs with."""

from __future__ import annotations

import math
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

from rayline.spec import SweepSpec
from rayline.spec.sweep import AshaScheduler, PbtScheduler


class NonFiniteLoss(tune.Stopper):
    """Stop a trial whose training loss is NaN or infinite: it cannot recover, and must not hold workers."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return not math.isfinite(result.get("train_loss", 0.0))

    def stop_all(self) -> bool:
        return False


def scheduler_for(sweep: SweepSpec, epochs: int, concurrency: int) -> TrialScheduler:
    """Ray Tune's scheduler for ``sweep.scheduler``, over trials of ``epochs`` epochs, ``concurrency`` at once."""
    match sweep.scheduler:
        case AshaScheduler(grace_period=grace, reduction_factor=factor):
            # max_t one past the last epoch: a trial that reaches it runs its test evaluation instead of being
            # stopped at the budget (ASHA stops trials at max_t), and its rungs still end at the last epoch.
            return ASHAScheduler(time_attr="training_iteration", max_t=epochs + 1, grace_period=grace,
                                 reduction_factor=factor)
        case PbtScheduler(perturbation_interval=interval, hyperparam_mutations=paths):
            return PbtOverTrainJobs(
                epochs, concurrency, sweep.num_trials, time_attr="training_iteration", perturbation_interval=interval,
                hyperparam_mutations={path: sweep.search_space[path].to_tune() for path in paths or []})
    return FIFOScheduler()


class PbtOverTrainJobs(PopulationBasedTraining):
    """Ray's PBT, for trials whose every restart starts a Train job (about 20 s on 2 cores).

    A trial's last epoch is left alone: it goes on to its test evaluation, instead of being replaced by another
    trial's checkpoint with no epoch left to train. And when every trial of the sweep has a slot, a trial at a
    perturbation is not paused to let a pending one catch up (Ray's PBT pauses whenever another trial is pending
    or paused, as one being restarted by an exploit is): the pending one starts anyway."""

    def __init__(self, epochs: int, concurrency: int, num_trials: int, **options: Any) -> None:
        super().__init__(**options)
        self._epochs = epochs
        self._multiplexed = num_trials > concurrency

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get(self._time_attr, 0) >= self._epochs:
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE and not self._multiplexed else decision
