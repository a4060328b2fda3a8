"""User models for tests, loaded through the public ``module:factory`` model path."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import ray.train
import torch

from rayline.models import MLP


def _rank() -> int:
    try:
        return ray.train.get_context().get_world_rank()
    except Exception:  # outside a Train worker (e.g. loading the packaged model)
        return -1


class FaultOnceMLP(MLP):
    """An MLP whose rank-1 worker meets ``fault`` once, at its first training step of epoch ``at_epoch``, as soon
    as Ray Train has registered the checkpoint of epoch ``at_epoch - 1`` (so the epoch to restore is known).

    ``kill``: the process SIGKILLs itself. ``hang``: it blocks forever, so rank 0 waits in the gradient
    all-reduce. ``corrupt``: it truncates that checkpoint's weights, then SIGKILLs itself. ``upload``: rank 0 (the
    rank that uploads a DDP checkpoint) SIGKILLs itself as soon as the upload of epoch ``at_epoch``'s checkpoint
    has begun, in the middle of it. Checkpoints are found under ``storage`` (the platform's storage URI, a local
    path). ``marker`` records that the fault happened (and for ``upload``, the bytes that had reached storage),
    so it happens once.
    """

    def __init__(self, num_features: int, num_outputs: int, marker: str, at_epoch: int, fault: str, storage: str,
                 **params) -> None:
        super().__init__(num_features, num_outputs, **params)
        self.marker, self.at_epoch, self.fault, self.storage = Path(marker), at_epoch, fault, Path(storage)
        self.epoch = -1  # the train loop calls .train() once at the start of every epoch

    def train(self, mode: bool = True) -> FaultOnceMLP:
        if mode:
            self.epoch += 1
        return super().train(mode)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        faulty_rank = 0 if self.fault == "upload" else 1
        if self.training and self.epoch == self.at_epoch and _rank() == faulty_rank and not self.marker.exists():
            if self.fault == "upload":
                self._kill_mid_upload()
                return super().forward(features)
            checkpoint = self._registered_checkpoint(self.at_epoch - 1)
            self.marker.write_text(f"{self.fault} {checkpoint}")
            if self.fault == "hang":
                threading.Event().wait()
            if self.fault == "corrupt":
                weights = checkpoint / "model.safetensors"
                weights.write_bytes(weights.read_bytes()[:100])
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(features)

    def _kill_mid_upload(self) -> None:
        """From a thread, while training goes on: once the previous epoch's checkpoint is registered, wait for the
        next checkpoint directory to appear in storage (this epoch's upload starting), note how many bytes it
        holds against the previous (whole) checkpoint, and SIGKILL this process."""
        self.marker.write_text("upload pending")
        previous = self._registered_checkpoint(self.at_epoch - 1)
        run = previous.parent
        existing = set(run.glob("checkpoint_*"))

        def watch() -> None:
            until = time.monotonic() + 120
            while time.monotonic() < until:
                started = set(run.glob("checkpoint_*")) - existing
                if started:
                    partial = started.pop()
                    present = sum(_size(path) for path in partial.rglob("*"))
                    whole = sum(_size(path) for path in previous.rglob("*"))  # a whole checkpoint's size
                    self.marker.write_text(json.dumps({"fault": "upload", "partial": str(partial),
                                                       "bytes": present, "whole": whole}))
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.0005)

        threading.Thread(target=watch, daemon=True).start()

    def _registered_checkpoint(self, epoch: int, deadline_s: float = 60) -> Path:
        """The directory of epoch ``epoch``'s checkpoint, once this run's checkpoint manager lists it (the
        storage holds other runs' snapshots too: earlier tests', a sweep's earlier trials')."""
        run = self.storage / "train" / ray.train.get_context().get_experiment_name()
        until = time.monotonic() + deadline_s
        while time.monotonic() < until:
            try:
                registered = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
            except (OSError, ValueError, KeyError):
                registered = []  # not written yet, or being written
            for result in registered:
                if result["metrics"].get("epoch") == epoch:
                    return run / result["checkpoint_dir_name"]
            time.sleep(0.05)
        raise TimeoutError(f"no registered checkpoint of epoch {epoch} under {run}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:  # gone between listing and stat
        return 0


class SlowMLP(MLP):
    """An MLP whose training steps take at least ``step_s`` seconds: epochs long enough to act between."""

    def __init__(self, num_features: int, num_outputs: int, step_s: float, **params) -> None:
        super().__init__(num_features, num_outputs, **params)
        self.step_s = step_s

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(self.step_s)
        return super().forward(features)


class TogetherMLP(SlowMLP):
    """A SlowMLP whose Train workers wait, at their first training step, until ``parties`` of them have got there
    (files in the ``barrier`` directory): concurrent trials train side by side, however long each took to start.
    Workers started later (a trial restarted from a checkpoint) find the barrier passed."""

    def __init__(self, num_features: int, num_outputs: int, barrier: str, parties: int, **params) -> None:
        super().__init__(num_features, num_outputs, **params)
        self.barrier, self.parties, self.arrived = Path(barrier), parties, False

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training and not self.arrived:
            self.barrier.mkdir(parents=True, exist_ok=True)
            (self.barrier / f"{os.getpid()}-{time.monotonic_ns()}").touch()
            until = time.monotonic() + 300
            while len(list(self.barrier.iterdir())) < self.parties and time.monotonic() < until:
                time.sleep(0.05)
            self.arrived = True
        return super().forward(features)


class NanFromEpochMLP(MLP):
    """An MLP whose outputs turn NaN from its ``nan_from_epoch``-th training epoch on (counted as FaultOnceMLP does)."""

    def __init__(self, num_features: int, num_outputs: int, nan_from_epoch: int, **params) -> None:
        super().__init__(num_features, num_outputs, **params)
        self.nan_from_epoch = nan_from_epoch
        self.epoch = -1

    def train(self, mode: bool = True) -> NanFromEpochMLP:
        if mode:
            self.epoch += 1
        return super().train(mode)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        outputs = super().forward(features)
        return outputs * float("nan") if self.training and self.epoch >= self.nan_from_epoch else outputs


class FailsAtTestMLP(MLP):
    """With ``fail_at_test``, an MLP that learns and then fails in its test evaluation (the evaluation after its last
    epoch's validation: more evaluations than training epochs); without it, one that learns nothing (its inputs are
    zeroed). A sweep over both has its best validation accuracy in the trial that never finishes."""

    def __init__(self, num_features: int, num_outputs: int, fail_at_test: int, **params) -> None:
        super().__init__(num_features, num_outputs, **params)
        self.fail_at_test = bool(fail_at_test)
        self.epochs = self.evaluations = 0

    def train(self, mode: bool = True) -> FailsAtTestMLP:
        if mode:
            self.epochs += 1
        else:
            self.evaluations += 1
        return super().train(mode)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.fail_at_test:
            return super().forward(features * 0)
        if not self.training and self.evaluations > self.epochs:
            raise RuntimeError("FailsAtTestMLP: failing in the test evaluation, as asked")
        return super().forward(features)
