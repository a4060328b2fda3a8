"""Parallelism benchmark: rayline's FSDP, expert parallelism, MoE dispatch and bf16, each against its baseline.

Side by side in one run, on the same models, rows and seeds: FSDP against DDP and a hand-written ``torchrun``
FSDP script, expert parallelism against the same Mixture-of-Experts in one process, grouped against naive expert
dispatch, and bf16 against fp32.

    .venv/bin/python bench/parallel_bench.py                              # about 15 minutes on 2 cores
    .venv/bin/python bench/parallel_bench.py --sections dispatch --quick  # seconds, no platform
    .venv/bin/python bench/train_bench.py --parallel --sections fsdp      # the same, through train_bench

The sections (``--sections``, comma-separated; all by default):

* ``fsdp``: a model whose parameters dominate memory: ``pipelines/fsdp.yaml``'s digits MLP widened to 7 hidden
  layers of 4,096 (101M parameters: 0.4 GB of weights, 1.6 GB with gradients and Adam state, against the
  ~0.5 GB of an idle torch worker; ``--mlp-hidden`` changes it), fp32, 2 epochs of batches of 32 per worker.
  rayline DDP and FSDP (2 workers, 1 CPU each), then ``bench/torchrun_ddp.py --strategy fsdp`` (2 ranks, one
  torch thread each) on the rayline split's training rows. Samples/s are the mean of the epochs after the
  first. Peak memory per worker: every 0.2 s the resident set size and its high-water mark (``VmHWM``, what
  ``ru_maxrss`` reports for the torchrun ranks) of this platform's ``RayTrainWorker`` processes. "training" is
  the high-water mark when the next-to-last epoch was reported; "incl. checkpoint" includes the last epoch, which
  writes the checkpoint (DDP's rank 0 the full weights and Adam state, each FSDP rank its own shards); with one
  epoch (``--quick``) both are the same. "base" is a rayline worker's RSS when a scan (every second) first finds it,
  wherever its start-up then is (a rough baseline), and a torchrun rank's right before it builds the model.
* ``moe``: ``pipelines/moe.yaml`` (expert parallel, 2 workers; then 4 workers on a 2 x 2 (data x expert) mesh,
  half a CPU each) against the same MoEMLP trained in this process with 2 torch threads on the global batch
  (2 x 256), with the same seed, optimizer, epochs, auxiliary loss and training rows (scaled with numpy as the
  torchrun peer does). One row is one token: tokens/s.
* ``dispatch``: one MoELayer's forward and backward in this process (1 torch thread), grouped dispatch (one
  batched matmul over an ``(experts, capacity, dim)`` buffer) against a loop over the experts, same weights and
  tokens; the median of timed iterations after warm-up. Runs before the platform starts, without Ray.
* ``precision``: the ``fsdp`` section's wide MLP under DDP, ``train.precision`` bf16 against fp32 (the fp32 run
  is the ``fsdp`` section's when both run).
* ``checkpoint``: the same wide MLP under DDP with a checkpoint after every epoch (weights and Adam state: 1.2 GB
  from rank 0), one more epoch, ``train.checkpoint_upload`` sync against async: the run's ``epochs`` stage (every
  epoch's training, validation, report and checkpoint, on rank 0's clock) beside the training alone (samples/s).

Everything that needs Ray runs on an embedded platform of this script's own (``--state-dir``), stopped at the end.
Every section prints a markdown table and its ratios against the issue's goals; ``--json`` gets all of it.
``--quick`` shrinks every case (a 2 x 256 MLP, 4,000 MoE rows, 1 epoch, fewer timed iterations): a smoke test.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from train_bench import (
    BENCH,
    PREPROCESSING,
    ROOT,
    epoch_history,
    every,
    run_peer,
    run_rayline,
    steady,
    write_training_rows,
)

# isort: split
import rayline  # this checkout's: importing train_bench put its platform/ first on sys.path

SECTIONS = ("fsdp", "moe", "dispatch", "precision", "checkpoint")
WORKER = "RayTrainWorker"  # in the process title of Ray Train's worker actors
WIDE = {"full": [4096] * 7, "quick": [256, 256]}  # the wide MLP's hidden layers, unless --mlp-hidden
MOE_QUICK_SOURCE = "synthetic://mixture?rows=4000&features=16&classes=4&regimes=4&skew=70&seed=0"
DISPATCH_SIZES = [  # (dim, hidden, experts, top_k, tokens)
    (256, 512, 8, 2, 4096),  # the size
    (64, 128, 4, 2, 256),  # pipelines/moe.yaml's layer on one worker's batch
    (64, 128, 32, 2, 1024),  # many small experts: the naive loop's per-expert overhead dominates
]


@dataclass
class WorkerMemory:
    """Resident memory per worker, MiB, each the largest over the workers: the high-water mark while training
    (``peak_mb``) and over the whole run (``run_peak_mb``), the RSS at the start (``base_mb``), and the most one
    worker grew from its start to its training peak (``growth_mb``)."""

    peak_mb: float
    run_peak_mb: float
    base_mb: float
    growth_mb: float

    @classmethod
    def of(cls, peaks: Sequence[float], run_peaks: Sequence[float], bases: Sequence[float]) -> WorkerMemory:
        """From each worker's training peak, run peak and base, in the same worker order."""
        return cls(max(peaks), max(run_peaks), max(bases), max(p - b for p, b in zip(peaks, bases, strict=True)))


@dataclass
class TrainRun:
    """One training run: steady samples (tokens) per second, every epoch's, and what it took."""

    label: str
    samples_per_s: float
    epochs_samples_per_s: list[float]
    wall_s: float
    memory: WorkerMemory | None = None
    test_accuracy: float | None = None
    epochs_stage_s: float | None = None  # every epoch's training, validation, report and checkpoint


@dataclass
class DispatchResult:
    """Forward + backward throughput of one MoELayer size, grouped dispatch against the naive loop."""

    dim: int
    hidden: int
    experts: int
    top_k: int
    tokens: int
    grouped_tokens_per_s: float
    naive_tokens_per_s: float

    @property
    def size(self) -> str:
        return (f"dim {self.dim}, hidden {self.hidden}, {self.experts} experts, top-{self.top_k}, "
                f"{self.tokens:,} tokens")

    def ratio(self) -> Ratio:
        return ratio(f"grouped / naive dispatch, {self.size}", self.grouped_tokens_per_s, self.naive_tokens_per_s,
                     at_least=2.0)


@dataclass
class Ratio:
    """A ratio the report prints, with the issue's goal for it where there is one."""

    comparison: str
    value: float
    goal: str = ""
    met: bool | None = None


def ratio(comparison: str, numerator: float, denominator: float, at_least: float | None = None,
          at_most: float | None = None) -> Ratio:
    value = numerator / denominator
    if at_least is not None:
        return Ratio(comparison, value, f">= {at_least}", value >= at_least)
    if at_most is not None:
        return Ratio(comparison, value, f"<= {at_most}", value <= at_most)
    return Ratio(comparison, value)


@dataclass
class FsdpSection:
    ddp: TrainRun
    fsdp: TrainRun
    torchrun_fsdp: TrainRun

    def ratios(self) -> list[Ratio]:
        ratios = [ratio("rayline FSDP / torchrun FSDP, samples/s", self.fsdp.samples_per_s,
                        self.torchrun_fsdp.samples_per_s, at_least=0.95),
                  ratio("rayline FSDP / rayline DDP, samples/s", self.fsdp.samples_per_s, self.ddp.samples_per_s)]
        fsdp, ddp, peer = self.fsdp.memory, self.ddp.memory, self.torchrun_fsdp.memory
        if fsdp and ddp:
            ratios += [ratio("FSDP / DDP, peak memory per worker while training", fsdp.peak_mb, ddp.peak_mb,
                             at_most=0.6),
                       ratio("FSDP / DDP, peak - base per worker while training", fsdp.growth_mb, ddp.growth_mb),
                       ratio("FSDP / DDP, peak memory per worker incl. the last checkpoint", fsdp.run_peak_mb,
                             ddp.run_peak_mb)]
        if fsdp and peer:
            ratios += [ratio("rayline FSDP / torchrun FSDP, peak memory per worker while training", fsdp.peak_mb,
                             peer.peak_mb),
                       ratio("rayline FSDP / torchrun FSDP, peak - base per worker", fsdp.growth_mb,
                             peer.growth_mb)]
        return ratios


@dataclass
class MoESection:
    expert_parallel: TrainRun
    expert_parallel_2x2: TrainRun
    one_process: TrainRun

    def ratios(self) -> list[Ratio]:
        return [ratio(f"{run.label} / one process, tokens/s", run.samples_per_s, self.one_process.samples_per_s)
                for run in (self.expert_parallel, self.expert_parallel_2x2)]


@dataclass
class PrecisionSection:
    fp32: TrainRun
    bf16: TrainRun

    def ratios(self) -> list[Ratio]:
        return [ratio("bf16 / fp32, samples/s", self.bf16.samples_per_s, self.fp32.samples_per_s)]


@dataclass
class CheckpointSection:
    sync: TrainRun
    background: TrainRun

    def ratios(self) -> list[Ratio]:
        return [ratio("async / sync upload, the epochs stage (s)", self.background.epochs_stage_s or 0.0,
                      self.sync.epochs_stage_s or 1.0)]


@dataclass
class Results:
    fsdp: FsdpSection | None = None
    moe: MoESection | None = None
    dispatch: list[DispatchResult] = field(default_factory=list)
    precision: PrecisionSection | None = None
    checkpoint: CheckpointSection | None = None

    def ratios(self) -> list[Ratio]:
        sections = [s.ratios() for s in (self.fsdp, self.moe, self.precision, self.checkpoint) if s]
        return [*(d.ratio() for d in self.dispatch), *itertools.chain.from_iterable(sections)]


class Sample(NamedTuple):
    at: float
    rss_mb: float
    hwm_mb: float


def memory_mb(pid: int) -> Sample | None:
    """The RSS and its high-water mark of ``pid`` now, from /proc (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if line.startswith(("VmRSS:", "VmHWM:")))
    if len(fields) < 2:  # a zombie has no memory
        return None
    return Sample(time.time(), *(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")))


@contextmanager
def sampled_workers(ray_group: int, interval_s: float = 0.2, scan_every: int = 5) -> Iterator[dict[int, list[Sample]]]:
    """While the block runs, the memory of the Ray Train workers of the platform whose Ray session is
    ``ray_group`` every ``interval_s``, by pid; workers are looked for every ``scan_every`` samples (a scan of
    every process costs more than a sample)."""
    from rayline.cluster.processes import session_members

    samples: dict[int, list[Sample]] = {}
    ticks = itertools.count()

    def sample() -> None:
        if next(ticks) % scan_every == 0:
            for process in session_members(ray_group):
                if WORKER in " ".join(process.info["cmdline"] or []):
                    samples.setdefault(process.pid, [])
        for pid, series in samples.items():
            if (now := memory_mb(pid)) is not None:
                series.append(now)

    sample()  # the first sample as the block starts, then every interval_s
    with every(interval_s, sample):
        yield samples


def worker_memory(samples: dict[int, list[Sample]], training_until: float) -> WorkerMemory | None:
    """Per-worker memory from :func:`sampled_workers`; training is what was sampled until ``training_until``."""
    workers = [series for series in samples.values() if series]
    if not workers:
        return None
    peaks = [max((s.hwm_mb for s in series if s.at <= training_until), default=series[-1].hwm_mb)
             for series in workers]
    run_peaks = [max(s.hwm_mb for s in series) for series in workers]
    return WorkerMemory.of(peaks, run_peaks, [series[0].rss_mb for series in workers])


def training_until(platform: rayline.Platform, run_id: str, epochs: int) -> float:
    """When the next-to-last epoch was reported (Unix time): the epochs before the last write no checkpoint.
    Infinity with one epoch."""
    from mlflow import MlflowClient

    if epochs < 2:
        return math.inf
    history = MlflowClient(platform.tracking_uri).get_metric_history(run_id, "samples_per_s")
    return max(m.timestamp for m in history if m.step <= epochs - 2) / 1000


@contextmanager
def peer_strategy(strategy: str) -> Iterator[None]:
    """``bench/torchrun_ddp.py`` launched in the block (by train_bench's ``run_peer``) uses ``strategy``."""
    os.environ["RAYLINE_BENCH_STRATEGY"] = strategy
    try:
        yield
    finally:
        del os.environ["RAYLINE_BENCH_STRATEGY"]


class Bench:
    """The platform the sections share, and the rayline runs made so far: a section reuses another's run of the
    same label."""

    def __init__(self, platform: rayline.Platform, state_dir: Path, workdir: Path, quick: bool,
                 mlp_hidden: list[int]) -> None:
        from rayline.cluster.embedded import read_state

        self.platform, self.workdir, self.quick, self.mlp_hidden = platform, workdir, quick, mlp_hidden
        self.ray_group = read_state(state_dir).ray_group
        self.runs: dict[str, TrainRun] = {}

    def spec(self, pipeline: str, label: str, overrides: dict[str, Any]) -> rayline.PipelineSpec:
        """``pipelines/<pipeline>`` with ``overrides``, tracked in its own experiment and registered model."""
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        return rayline.load_spec(ROOT / "pipelines" / pipeline, {**overrides, "tracking.experiment": "bench-parallel",
                                                                 "tracking.model_name": f"bench-parallel-{slug}"})

    def wide_mlp(self, strategy: str, precision: str = "fp32", upload: str = "async",
                 every_epoch: bool = False) -> dict[str, Any]:
        """Overrides of ``pipelines/fsdp.yaml`` for the wide MLP (one batch per step: the peer does not
        accumulate); a checkpoint after the last epoch, or after ``every_epoch`` (then one more epoch)."""
        epochs = (1 if self.quick else 2) + every_epoch
        return {"model.params": {"hidden": self.mlp_hidden}, "train.strategy": strategy,
                "train.precision": precision, "train.grad_accum_steps": 1, "train.epochs": epochs,
                "train.checkpoint_every": 1 if every_epoch else epochs, "train.checkpoint_upload": upload}

    def moe(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Overrides of ``pipelines/moe.yaml``: none but ``extra``, unless quick."""
        quick = {"data.source": MOE_QUICK_SOURCE, "train.epochs": 1} if self.quick else {}
        return {**quick, **(extra or {})}

    def rayline(self, label: str, pipeline: str, overrides: dict[str, Any]) -> TrainRun:
        """A rayline run of ``pipeline`` with ``overrides``, its workers' memory sampled throughout."""
        if label in self.runs:
            return self.runs[label]
        spec = self.spec(pipeline, label, overrides)
        print(f"[bench] {label}", flush=True)
        with sampled_workers(self.ray_group) as samples:
            result, wall = run_rayline(self.platform, spec)
        rates = epoch_history(self.platform, result.run_id, "samples_per_s")
        memory = worker_memory(samples, training_until(self.platform, result.run_id, spec.train.epochs))
        self.runs[label] = TrainRun(label, steady(rates), rates, wall, memory, result.metrics.get("test_accuracy"),
                                    result.stages.get("epochs"))
        return self.runs[label]

    def training_rows(self, spec: rayline.PipelineSpec) -> Path:
        """The rows rayline trains ``spec`` on, as Parquet (written once per data spec)."""
        target = self.workdir / f"rows-{hashlib.sha256(spec.data.model_dump_json().encode()).hexdigest()[:12]}"
        if not target.exists():
            write_training_rows(self.platform, spec, target)
        return target

    def torchrun(self, label: str, spec: rayline.PipelineSpec, strategy: str) -> TrainRun:
        """``bench/torchrun_ddp.py --strategy <strategy>`` on ``spec``'s model, hyper-parameters and rows."""
        print(f"[bench] {label}", flush=True)
        rows = self.training_rows(spec)
        try:
            with peer_strategy(strategy):
                peer, wall = run_peer(spec, rows, self.workdir / "peer.json")
        except subprocess.CalledProcessError as err:
            print(err.stderr[-4000:], file=sys.stderr)
            raise
        rates = [e["samples_per_s"] for e in peer["epochs"]]
        peaks = peer["peak_rss_mb_per_rank"]
        return TrainRun(label, steady(rates), rates, wall, WorkerMemory.of(peaks, peaks, peer["base_rss_mb_per_rank"]))


def bench_fsdp(bench: Bench) -> FsdpSection:
    ddp = bench.rayline("wide MLP, rayline DDP, fp32", "fsdp.yaml", bench.wide_mlp("ddp"))
    fsdp = bench.rayline("wide MLP, rayline FSDP, fp32", "fsdp.yaml", bench.wide_mlp("fsdp"))
    peer = bench.torchrun("wide MLP, torchrun FSDP, fp32", bench.spec("fsdp.yaml", fsdp.label, bench.wide_mlp("fsdp")),
                          "fsdp")
    return FsdpSection(ddp, fsdp, peer)


def train_in_process(spec: rayline.PipelineSpec, rows: Path, threads: int) -> TrainRun:
    """``spec``'s model trained in this process with ``threads`` torch threads on the global batch (every
    worker's batch at once): rayline's optimizer and auxiliary loss, the peer's loading and scaling of ``rows``."""
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import torchrun_ddp as peer
    from rayline.models import build_model
    from rayline.train.loop import _optimizer  # the loop's own choice of optimizer, not a copy of it
    from rayline.train.routing import RoutingMeter

    started = time.perf_counter()
    [step] = spec.preprocess
    x, y = peer.load(str(rows), spec.data.label)
    dataset = TensorDataset(torch.from_numpy(peer.preprocess(x, PREPROCESSING[step.type]).astype(np.float32)),
                            torch.from_numpy(y))
    loader = DataLoader(dataset, batch_size=spec.train.batch_size * spec.train.scaling.num_workers)
    torch.manual_seed(spec.train.seed)
    model = build_model(spec.model, x.shape[1], len(np.unique(y)))
    optimizer, loss_fn = _optimizer(spec.train, model), nn.CrossEntropyLoss()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rates = []
    try:
        for _ in range(spec.train.epochs):
            model.train()
            routing = RoutingMeter(model, torch.device("cpu"))
            begin = time.perf_counter()
            for features, labels in loader:
                loss = loss_fn(model(features), labels) + routing.aux_loss()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            rates.append(len(dataset) / (time.perf_counter() - begin))
    finally:
        torch.set_num_threads(previous)
    return TrainRun(f"MoE, one process ({threads} threads)", steady(rates), rates, time.perf_counter() - started)


def bench_moe(bench: Bench) -> MoESection:
    two = bench.rayline("MoE, rayline expert parallel, 2 workers", "moe.yaml", bench.moe())
    four = bench.rayline("MoE, rayline expert parallel, 4 workers (2 x 2 mesh)", "moe.yaml", bench.moe({
        "train.scaling.num_workers": 4, "train.scaling.resources_per_worker": {"CPU": 0.5},
        "train.mesh": {"data": 2, "expert": 2}}))
    print("[bench] MoE, one process", flush=True)
    spec = bench.spec("moe.yaml", two.label, bench.moe())
    return MoESection(two, four, train_in_process(spec, bench.training_rows(spec), threads=2))


def seconds_per_step(layer: Any, tokens: Any, warmup: int, iterations: int) -> float:
    """The median time of one forward + backward of ``layer`` (an MoELayer) on ``tokens``, after ``warmup``."""
    times = []
    for _ in range(warmup + iterations):
        started = time.perf_counter()
        output = layer(tokens)
        (output.square().mean() + layer.routing.aux_loss).backward()
        times.append(time.perf_counter() - started)
        layer.zero_grad(set_to_none=True)
    return statistics.median(times[warmup:])


def bench_dispatch(quick: bool) -> list[DispatchResult]:
    """Grouped against naive dispatch at each of :data:`DISPATCH_SIZES`, one torch thread."""
    import torch

    from rayline.models.moe import MoELayer

    warmup, iterations = (1, 3) if quick else (3, 15)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    results = []
    try:
        for dim, hidden, experts, top_k, count in DISPATCH_SIZES:
            print(f"[bench] dispatch: dim {dim}, hidden {hidden}, {experts} experts, {count} tokens", flush=True)
            torch.manual_seed(0)
            grouped = MoELayer(dim, hidden, experts, top_k, dispatch="grouped")
            naive = MoELayer(dim, hidden, experts, top_k, dispatch="naive")
            naive.load_state_dict(grouped.state_dict())
            tokens = torch.randn(count, dim)
            torch.testing.assert_close(grouped(tokens), naive(tokens))  # the same computation, dispatched two ways
            rates = [count / seconds_per_step(layer, tokens, warmup, iterations) for layer in (grouped, naive)]
            results.append(DispatchResult(dim, hidden, experts, top_k, count, *rates))
    finally:
        torch.set_num_threads(previous)
    return results


def bench_precision(bench: Bench) -> PrecisionSection:
    return PrecisionSection(*(bench.rayline(f"wide MLP, rayline DDP, {precision}", "fsdp.yaml",
                                            bench.wide_mlp("ddp", precision)) for precision in ("fp32", "bf16")))


def bench_checkpoint(bench: Bench) -> CheckpointSection:
    return CheckpointSection(*(bench.rayline(f"wide MLP, rayline DDP, checkpoint every epoch, {upload} upload",
                                             "fsdp.yaml", bench.wide_mlp("ddp", upload=upload, every_epoch=True))
                               for upload in ("sync", "async")))


def epoch_table(runs: Sequence[TrainRun]) -> list[str]:
    return ["| run | epochs stage (s) | samples/s (training only) | run s |", "|---|---|---|---|",
            *(f"| {run.label} | {run.epochs_stage_s or 0.0:.1f} | {run.samples_per_s:,.0f} | {run.wall_s:.1f} |"
              for run in runs)]


def run_table(runs: Sequence[TrainRun], unit: str = "samples/s") -> list[str]:
    lines = [f"| run | {unit} | per epoch | peak RSS per worker, training (MiB) | incl. checkpoint (MiB) | "
             "base (MiB) | peak - base (MiB) | test accuracy | run s |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        memory = (f"{run.memory.peak_mb:,.0f} | {run.memory.run_peak_mb:,.0f} | {run.memory.base_mb:,.0f} | "
                  f"{run.memory.growth_mb:,.0f}") if run.memory else "- | - | - | -"
        accuracy = "-" if run.test_accuracy is None else f"{run.test_accuracy:.4f}"
        epochs = ", ".join(f"{rate:,.0f}" for rate in run.epochs_samples_per_s)
        lines.append(f"| {run.label} | {run.samples_per_s:,.0f} | {epochs} | {memory} | {accuracy} | "
                     f"{run.wall_s:.1f} |")
    return lines


def ratio_table(ratios: Sequence[Ratio]) -> list[str]:
    return ["| comparison | ratio | goal |", "|---|---|---|",
            *(f"| {r.comparison} | {r.value:.2f}x | {goal(r)} |" for r in ratios)]


def goal(r: Ratio) -> str:
    return f"{r.goal} ({'met' if r.met else 'NOT met'})" if r.goal else "-"


def report(results: Results) -> str:
    lines: list[str] = []
    if results.fsdp:
        section = results.fsdp
        lines += ["## FSDP vs DDP vs torchrun FSDP", "", *run_table([section.ddp, section.fsdp, section.torchrun_fsdp]),
                  "", *ratio_table(section.ratios()), ""]
    if results.moe:
        section = results.moe
        lines += ["## MoE: expert parallelism vs one process", "",
                  *run_table([section.expert_parallel, section.expert_parallel_2x2, section.one_process], "tokens/s"),
                  "", *ratio_table(section.ratios()), ""]
    if results.dispatch:
        lines += ["## MoE dispatch: grouped vs naive loop (forward + backward, 1 thread)", "",
                  "| layer | grouped tokens/s | naive tokens/s | grouped / naive | goal |", "|---|---|---|---|---|"]
        for d in results.dispatch:
            lines.append(f"| {d.size} | {d.grouped_tokens_per_s:,.0f} | {d.naive_tokens_per_s:,.0f} | "
                         f"{d.ratio().value:.2f}x | {goal(d.ratio())} |")
        lines.append("")
    if results.precision:
        section = results.precision
        lines += ["## bf16 vs fp32", "", *run_table([section.fp32, section.bf16]), "",
                  *ratio_table(section.ratios()), ""]
    if results.checkpoint:
        section = results.checkpoint
        lines += ["## Checkpoint upload: async vs sync", "", *epoch_table([section.sync, section.background]), "",
                  *ratio_table(section.ratios()), ""]
    return "\n".join(lines)


def run_sections(sections: Sequence[str], state_dir: Path, quick: bool, mlp_hidden: list[int],
                 results: Results) -> None:
    """Fill ``results`` section by section: dispatch first (no platform), then the rest on the platform."""
    if "dispatch" in sections:
        results.dispatch = bench_dispatch(quick)
    if not set(sections) - {"dispatch"}:
        return
    platform = rayline.up(state_dir)
    try:
        platform.init_ray(verbose=False)
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(platform, state_dir, Path(tmp), quick, mlp_hidden)
            if "fsdp" in sections:
                results.fsdp = bench_fsdp(bench)
            if "moe" in sections:
                results.moe = bench_moe(bench)
            if "precision" in sections:
                results.precision = bench_precision(bench)
            if "checkpoint" in sections:
                results.checkpoint = bench_checkpoint(bench)
    finally:
        import ray

        ray.shutdown()
        rayline.down(state_dir)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=lambda text: text.split(","), default=list(SECTIONS),
                        help=f"comma-separated, of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 epoch: a smoke test")
    parser.add_argument("--mlp-hidden", type=int, nargs="+", metavar="WIDTH",
                        help=f"the wide MLP's hidden layers (default: {len(WIDE['full'])} x {WIDE['full'][0]}, "
                             f"--quick: {' '.join(map(str, WIDE['quick']))})")
    parser.add_argument("--state-dir", type=Path, default=BENCH / ".state", help="the embedded platform's state")
    parser.add_argument("--json", type=Path, default=BENCH / ".state" / "parallel.json",
                        help="every measurement and ratio, as JSON")
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {','.join(SECTIONS)}")
    results = Results()
    try:
        mlp_hidden = args.mlp_hidden or WIDE["quick" if args.quick else "full"]
        run_sections(args.sections, args.state_dir, args.quick, mlp_hidden, results)
    finally:  # what finished is reported even when a later section failed
        print()
        print(report(results))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**asdict(results), "ratios": [asdict(r) for r in results.ratios()]},
                                        indent=1))
        print(f"\n[bench] wrote {args.json}")


if __name__ == "__main__":
    main()
