"""Training benchmark: rayline's DDP path against a hand-written ``torchrun`` DDP script, on the same rows.

    .venv/bin/python bench/train_bench.py                     # about 10 minutes on 2 cores
    .venv/bin/python bench/train_bench.py --cases digits --skip-memory

Each case runs one rayline pipeline (2 Ray Train workers, 1 CPU each) and then the peer,
``bench/torchrun_ddp.py`` under ``torchrun --nproc_per_node 2`` (gloo, one torch thread per rank, like a Ray
worker that reserves one CPU), on the same model, hyper-parameters, seed and training rows (the rayline split's
training rows, written once as Parquet for the peer, which scales them with numpy and feeds a TensorDataset
through a DataLoader). The cases:

* ``synthetic-streamed``: ``pipelines/synthetic.yaml`` as shipped (``cache: false``: prepared once as Parquet,
  streamed every epoch);
* ``synthetic-cached``: the same with ``data.cache=true`` (prepared once into Ray's object store);
* ``digits``: ``pipelines/digits.yaml`` as shipped.

Then Ray Data ingest alone (``iter_torch_batches`` over the prepared training split, cached and streamed)
against a DataLoader over a TensorDataset of the same rows, in this process; and the peak memory of the
platform's processes (Ray's, MLflow's and this driver, as proportional set size) during a streamed run at 1x and
10x the synthetic size. Everything runs on an embedded platform of this script's own (``bench/.state``).

FSDP, expert parallelism, MoE dispatch and bf16 have their own benchmark, ``bench/parallel_bench.py`` (which
reuses this one's helpers); ``--parallel [ITS ARGUMENTS]`` here runs it instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "platform"))

import rayline  # noqa: E402  (sets RAY_AUTH_MODE before Ray is imported)

SYNTHETIC = "synthetic://classification?rows={rows}&features=32&classes=4&seed=0"
CASES = {
    "synthetic-streamed": ("synthetic.yaml", {}),
    "synthetic-cached": ("synthetic.yaml", {"data.cache": True}),
    "digits": ("digits.yaml", {}),
}
PREPROCESSING = {"standard_scale": "standard_scale", "min_max_scale": "min_max_scale"}


@dataclass
class CaseResult:
    case: str
    rayline_samples_per_s: float
    peer_samples_per_s: float
    rayline_epoch_s: float
    rayline_train_pass_s: float
    peer_epoch_s: float
    rayline_wall_s: float
    peer_wall_s: float
    rayline_stages: dict[str, float]
    peer_phases: dict[str, float]
    test_accuracy: float


@dataclass
class IngestResult:
    source: str
    rows_per_s: float


@dataclass
class MemoryResult:
    rows: int
    peak_mb: float
    idle_mb: float
    epochs_samples_per_s: list[float] = field(default_factory=list)


def load(case: str, extra: dict[str, object] | None = None) -> rayline.PipelineSpec:
    pipeline, overrides = CASES[case]
    return rayline.load_spec(ROOT / "pipelines" / pipeline,
                             {**overrides, **(extra or {}), "tracking.experiment": "bench-train",
                              "tracking.model_name": f"bench-train-{case}"})


def steady(values: list[float]) -> float:
    """Mean over the epochs after the first (the first pays the warm-up); the only epoch if there is one."""
    rest = values[1:] or values
    return sum(rest) / len(rest)


def epoch_history(platform: rayline.Platform, run_id: str, metric: str) -> list[float]:
    from mlflow import MlflowClient

    history = MlflowClient(platform.tracking_uri).get_metric_history(run_id, metric)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def run_rayline(platform: rayline.Platform, spec: rayline.PipelineSpec) -> tuple[rayline.PipelineResult, float]:
    started = time.perf_counter()
    result = rayline.run(spec, platform=platform)
    return result, time.perf_counter() - started


def write_training_rows(platform: rayline.Platform, spec: rayline.PipelineSpec, target: Path) -> None:
    """The rows rayline trains on (its split's training rows, raw) as Parquet, for the peer."""
    from rayline.data.sources import read_source
    from rayline.data.split import assign_splits, select_split

    raw, _ = read_source(spec.data, platform.storage_uri)
    select_split(assign_splits(raw, spec.data.split, spec.data.label), "train").write_parquet(str(target))


def run_peer(spec: rayline.PipelineSpec, rows: Path, out: Path) -> tuple[dict[str, object], float]:
    """``torchrun --nproc_per_node 2 bench/torchrun_ddp.py`` on ``rows``; returns its JSON and process wall time."""
    [step] = spec.preprocess
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node",
        str(spec.train.scaling.num_workers), str(BENCH / "torchrun_ddp.py"), "--data", str(rows),
        "--label", spec.data.label, "--model-json", json.dumps(spec.model.model_dump()),
        "--epochs", str(spec.train.epochs), "--batch-size", str(spec.train.batch_size), "--lr", str(spec.train.lr),
        "--preprocess", PREPROCESSING[step.type], "--seed", str(spec.train.seed), "--json", str(out),
    ]
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYLINE_BENCH_T0": repr(started)}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return json.loads(out.read_text()), time.time() - started


def bench_case(platform: rayline.Platform, case: str, workdir: Path) -> CaseResult:
    spec = load(case)
    print(f"[bench] {case}: rayline", flush=True)
    result, wall = run_rayline(platform, spec)
    samples = epoch_history(platform, result.run_id, "samples_per_s")
    epoch_s = epoch_history(platform, result.run_id, "epoch_s")
    train_pass_s = epoch_history(platform, result.run_id, "epoch_train_s")
    print(f"[bench] {case}: torchrun peer", flush=True)
    rows = workdir / f"{case}-train"
    write_training_rows(platform, spec, rows)
    peer, peer_wall = run_peer(spec, rows, workdir / f"{case}-peer.json")
    epochs = peer["epochs"]
    return CaseResult(
        case=case,
        rayline_samples_per_s=steady(samples),
        peer_samples_per_s=steady([e["samples_per_s"] for e in epochs]),
        rayline_epoch_s=steady(epoch_s),
        rayline_train_pass_s=steady(train_pass_s),
        peer_epoch_s=steady([e["seconds"] for e in epochs]),
        rayline_wall_s=wall,
        peer_wall_s=peer_wall,
        rayline_stages=result.stages,
        peer_phases={k: peer[k] for k in ("startup_s", "data_s", "epochs_s")},
        test_accuracy=result.metrics["test_accuracy"],
    )


def best_rows_per_s(labels: Callable[[], Iterable[Any]], passes: int) -> float:
    """The fastest of ``passes`` full passes, in rows/s; ``labels()`` yields each batch's label tensor."""
    best = 0.0
    for _ in range(passes):
        started = time.perf_counter()
        rows = sum(len(label) for label in labels())
        best = max(best, rows / (time.perf_counter() - started))
    return best


def bench_ingest(platform: rayline.Platform, batch_size: int, passes: int = 3) -> list[IngestResult]:
    """Rows/s of one pass over the synthetic training split: Ray Data (cached, streamed) and a DataLoader over
    the same rows (taken from the cached split)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from rayline.data import FEATURES, prepare

    results = []
    for case in ("synthetic-cached", "synthetic-streamed"):
        spec = load(case)
        label = spec.data.label
        prepared = prepare(spec, platform.storage_uri)
        try:
            train = prepared.datasets["train"]
            dtypes = {FEATURES: torch.float32, label: torch.long}
            rate = best_rows_per_s(lambda train=train, label=label, dtypes=dtypes: (
                b[label] for b in train.iter_torch_batches(batch_size=batch_size, dtypes=dtypes)), passes)
            results.append(IngestResult(f"Ray Data iter_torch_batches, {case.split('-')[1]}", rate))
            if prepared.cached:
                frame = train.to_pandas()
                rows = TensorDataset(torch.from_numpy(np.stack(frame[FEATURES].to_numpy()).astype(np.float32)),
                                     torch.from_numpy(frame[label].to_numpy()))
        finally:
            prepared.release()
    loader = DataLoader(rows, batch_size=batch_size, shuffle=False)
    rate = best_rows_per_s(lambda: (labels for _, labels in loader), passes)
    results.append(IngestResult("torch DataLoader over a TensorDataset", rate))
    return results


def platform_pss_mb() -> float:
    """Proportional set size of the platform's processes: Ray's, MLflow's and this driver's."""
    from rayline.cluster.embedded import read_state
    from rayline.cluster.processes import session_members

    embedded = read_state(BENCH / ".state")
    members = {p.pid: p for group in (embedded.ray_group, embedded.mlflow_pid) for p in session_members(group)}
    members[os.getpid()] = psutil.Process()
    total = 0
    for process in members.values():
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total / 2**20


@contextmanager
def every(interval_s: float, step: Callable[[], None]) -> Iterator[None]:
    """Calls ``step`` in a background thread every ``interval_s`` while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            step()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def peak_memory(interval_s: float = 1.0) -> Iterator[list[float]]:
    """Samples :func:`platform_pss_mb` while the block runs; yields the list the samples go to."""
    samples: list[float] = []
    with every(interval_s, lambda: samples.append(platform_pss_mb())):
        yield samples


def bench_memory(platform: rayline.Platform, rows: int) -> MemoryResult:
    """Peak platform memory during a streamed synthetic run of ``rows`` rows (the data generated beforehand)."""
    spec = load("synthetic-streamed", {"data.source": SYNTHETIC.format(rows=rows)})
    from rayline.data.sources import read_source

    read_source(spec.data, platform.storage_uri)  # generates the Parquet source once, outside the measurement
    idle = platform_pss_mb()
    print(f"[bench] memory: streamed run of {rows:,} rows", flush=True)
    with peak_memory() as samples:
        result, _ = run_rayline(platform, spec)
    return MemoryResult(rows, max(samples), idle, epoch_history(platform, result.run_id, "samples_per_s"))


def report(cases: list[CaseResult], ingest: list[IngestResult], memory: list[MemoryResult]) -> str:
    lines = ["| case | rayline samples/s | torchrun samples/s | ratio | rayline epoch s (training pass) | "
             "torchrun epoch s | rayline run s | torchrun process s | test accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c.case} | {c.rayline_samples_per_s:,.0f} | {c.peer_samples_per_s:,.0f} | "
                     f"{c.rayline_samples_per_s / c.peer_samples_per_s:.2f}x | {c.rayline_epoch_s:.3f} "
                     f"({c.rayline_train_pass_s:.3f}) | "
                     f"{c.peer_epoch_s:.3f} | {c.rayline_wall_s:.1f} | {c.peer_wall_s:.1f} | "
                     f"{c.test_accuracy:.4f} |")
    lines.append("")
    for c in cases:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in c.rayline_stages.items())
        phases = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in c.peer_phases.items())
        lines.append(f"- {c.case}: rayline stages (s): {stages}; torchrun phases (s): {phases}")
    if ingest:
        loader = ingest[-1].rows_per_s
        lines += ["", "| ingest (one pass over the training split, batch 512) | rows/s | vs DataLoader |",
                  "|---|---|---|"]
        lines += [f"| {i.source} | {i.rows_per_s:,.0f} | {i.rows_per_s / loader:.2f}x |" for i in ingest]
    if memory:
        lines += ["", "| streamed rows | platform PSS idle (MB) | peak (MB) | peak - idle (MB) | samples/s per epoch |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m.rows:,} | {m.idle_mb:,.0f} | {m.peak_mb:,.0f} | {m.peak_mb - m.idle_mb:,.0f} | "
                  f"{', '.join(f'{s:,.0f}' for s in m.epochs_samples_per_s)} |" for m in memory]
        if len(memory) == 2:
            lines.append(f"\npeak at {memory[1].rows:,} rows / peak at {memory[0].rows:,} rows: "
                         f"{memory[1].peak_mb / memory[0].peak_mb:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-rows", nargs=2, type=int, default=[200_000, 2_000_000])
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--parallel", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="run bench/parallel_bench.py instead, with the arguments that follow")
    args = parser.parse_args()
    if args.parallel is not None:
        from parallel_bench import main as parallel_bench

        parallel_bench(args.parallel)
        return
    platform = rayline.up(BENCH / ".state")
    try:
        platform.init_ray(verbose=False)
        with tempfile.TemporaryDirectory() as tmp:
            cases = [bench_case(platform, case, Path(tmp)) for case in args.cases]
        ingest = [] if args.skip_ingest else bench_ingest(platform, load("synthetic-streamed").train.batch_size)
        memory = [] if args.skip_memory else [bench_memory(platform, rows) for rows in args.memory_rows]
    finally:
        import ray

        ray.shutdown()
        rayline.down(BENCH / ".state")
    print()
    print(report(cases, ingest, memory))
    if args.json:
        args.json.write_text(json.dumps({"cases": [asdict(c) for c in cases], "ingest": [asdict(i) for i in ingest],
                                         "memory": [asdict(m) for m in memory]}, indent=1))


if __name__ == "__main__":
    main()
