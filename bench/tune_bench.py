"""Sweep benchmark: the same seeded sample of configurations on digits, once with FIFO (every trial to the full
budget) and once with ASHA.

    .venv/bin/python bench/tune_bench.py                       # 16 trials each
    .venv/bin/python bench/tune_bench.py --samples 4 --epochs 4  # a quick look

Prints, per scheduler: total trial-epochs, wall time, best test accuracy (of the published trial), the trial-epochs
spent until some trial's validation accuracy came within 0.5 points of FIFO's best, the cluster's mean CPU use
(psutil, sampled every second over the sweep), and a trial's start-up time and per-epoch overhead: time to its first
report minus that epoch's own seconds, and the median gap between epochs beyond ``epoch_s``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
from pathlib import Path

import psutil
import yaml
from mlflow import MlflowClient

import rayline

ROOT = Path(__file__).resolve().parent.parent
SEARCH_SPACE = {"train.lr": "loguniform(3e-4, 3e-2)", "model.params.hidden": "choice([32, 64, 128])"}


def cpu_sampler(stop: threading.Event, samples: list[float]) -> None:
    psutil.cpu_percent()
    while not stop.wait(1.0):
        samples.append(psutil.cpu_percent())


def sweep(scheduler: dict, args: argparse.Namespace, platform: rayline.Platform, tag: str) -> dict:
    spec = Path(tempfile.mkdtemp()) / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": f"bench-{tag}", "pipeline": str(ROOT / "pipelines" / "digits.yaml"),
        "overrides": {"train.epochs": args.epochs, "train.scaling.num_workers": 1, "data.split.seed": 42,
                      "data.split.validation": args.validation,
                      "tracking.experiment": f"bench-tune-{tag}", "tracking.model_name": f"bench-tune-{tag}"},
        "search_space": SEARCH_SPACE, "scheduler": scheduler, "num_samples": args.samples,
        "seed": 0, "metric": "val_accuracy", "mode": "max"}))
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=cpu_sampler, args=(stop, samples), daemon=True)
    sampler.start()
    result = rayline.tune(spec, platform=platform)
    stop.set()
    client = MlflowClient(platform.tracking_uri)
    children = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    epochs = []  # (end time, val_accuracy) of every trial-epoch
    startups, overheads = [], []
    for run in children:
        history = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
        epoch_s = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch_s")}
        epochs += [(m.timestamp, m.value) for m in history]
        if history:
            startups.append((history[0].timestamp - run.info.start_time) / 1000 - epoch_s.get(0, 0.0))
            overheads += [(b.timestamp - a.timestamp) / 1000 - epoch_s.get(b.step, 0.0)
                          for a, b in itertools.pairwise(history)]
    return {"result": result, "epochs": sorted(epochs), "cpu": statistics.mean(samples) if samples else 0.0,
            "startup_s": statistics.median(startups), "overhead_s": statistics.median(overheads or [0.0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--validation", type=float, default=0.25,
                        help="validation share: digits' default 0.1 is 180 rows, where one error is 0.56 points")
    parser.add_argument("--state-dir", type=Path, default=ROOT / "bench" / ".state")
    args = parser.parse_args()
    platform = rayline.up(args.state_dir)
    try:
        fifo = sweep({"type": "fifo"}, args, platform, "fifo")
        tune_defaults = {"grace_period": 1, "reduction_factor": 4}
        asha = sweep({"type": "asha", **tune_defaults}, args, platform, "asha")
    finally:
        import ray

        ray.shutdown()
        rayline.down(args.state_dir)
    target = max(value for _, value in fifo["epochs"]) - 0.005
    print(f"\n{args.samples} trials of {args.epochs} epochs, 1 worker each; target val_accuracy {target:.4f}\n")
    print("| scheduler | trial-epochs | wall (s) | best test accuracy | trial-epochs to target | mean CPU % | "
          "trial start-up (s) | per-epoch overhead (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run in (("FIFO", fifo), ("ASHA", asha)):
        reached = next((i + 1 for i, (_, value) in enumerate(run["epochs"]) if value >= target), None)
        best = run["result"].best.metrics.get("test_accuracy", float("nan"))
        print(f"| {name} | {len(run['epochs'])} | {run['result'].wall_s:.0f} | {best:.4f} | "
              f"{reached if reached is not None else 'never'} | {run['cpu']:.0f} | {run['startup_s']:.1f} | "
              f"{run['overhead_s']:.2f} |")


if __name__ == "__main__":
    main()
