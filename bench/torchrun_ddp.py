"""The training benchmarks' peer: the plain DDP (or FSDP) script a user would write by hand instead of using rayline.

    OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc_per_node 2 bench/torchrun_ddp.py \\
        --data sklearn:digits --label target --preprocess min_max_scale --epochs 3 --batch-size 32 --lr 0.003 \\
        --model-json '{"name": "cnn", "params": {"input_shape": [1, 8, 8]}}' --json /tmp/peer.json

Each rank loads the whole data set itself (Parquet files or ``sklearn:digits``), scales the features with numpy,
and trains on its DistributedSampler shard through a TensorDataset + DataLoader, with gloo on CPU and
``--threads`` torch threads per rank. The MLP and CNN match rayline's architectures layer for layer. Rank 0
writes the timings to ``--json``; they are measured from ``RAYLINE_BENCH_T0`` (set by the parent right before
it launches torchrun) or else from this process's start. Nothing here imports rayline.
"""

from __future__ import annotations

import os
import time

T0 = float(os.environ.get("RAYLINE_BENCH_T0") or time.time())

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402


class MLP(nn.Module):
    def __init__(self, num_features: int, num_outputs: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class CNN(nn.Module):
    def __init__(self, num_features: int, num_outputs: int, input_shape: Sequence[int] = (1, 8, 8),
                 channels: Sequence[int] = (16, 32), hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.input_shape = tuple(input_shape)
        layers: list[nn.Module] = []
        in_channels = input_shape[0]
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(in_channels * 4, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_outputs))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        images = features.reshape(features.shape[0], *self.input_shape)
        return self.head(self.features(images))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def load(data: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    """All rows of the data set as (float64 features, int64 labels); features are every column but ``label``."""
    if data == "sklearn:digits":
        from sklearn.datasets import load_digits

        frame = load_digits(as_frame=True).frame
    else:
        import pyarrow.dataset as ds

        frame = ds.dataset(data, format="parquet").to_table().to_pandas()
    return frame.drop(columns=[label]).to_numpy(np.float64), frame[label].to_numpy(np.int64, copy=True)


def preprocess(x: np.ndarray, method: str) -> np.ndarray:
    if method == "standard_scale":
        center, scale = x.mean(axis=0), x.std(axis=0)
    else:
        center, scale = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
    return (x - center) / np.where(scale == 0, 1.0, scale)


def wrap(module: nn.Module, strategy: str) -> nn.Module:
    """DistributedDataParallel, or FSDP2 as rayline wraps it: every module that owns parameters is a unit."""
    if strategy == "ddp":
        return DistributedDataParallel(module)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for child in list(module.modules())[1:]:
        if any(True for _ in child.parameters(recurse=False)):
            fully_shard(child, mesh=mesh)
    return fully_shard(module, mesh=mesh)


def rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def gathered(values: list[float]) -> list[list[float]]:
    """``values`` of every rank, in rank order (every rank calls it)."""
    mine = torch.tensor(values, dtype=torch.float64)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return [rank.tolist() for rank in every]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Parquet file or directory, or sklearn:digits")
    parser.add_argument("--label", required=True)
    parser.add_argument("--model-json", required=True, help='e.g. {"name": "mlp", "params": {"hidden": [256]}}')
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--preprocess", choices=["standard_scale", "min_max_scale"], default="standard_scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], default=os.environ.get("RAYLINE_BENCH_STRATEGY", "ddp"))
    parser.add_argument("--json", help="rank 0 writes the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    started = time.time()

    x, y = load(args.data, args.label)
    features = torch.from_numpy(preprocess(x, args.preprocess).astype(np.float32))
    labels = torch.from_numpy(y)
    dataset = TensorDataset(features, labels)
    sampler = DistributedSampler(dataset, shuffle=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=0)
    data_s = time.time() - started

    spec = json.loads(args.model_json)
    torch.manual_seed(args.seed)
    base_rss_mb = rss_mb()
    module = MODELS[spec["name"]](features.shape[1], len(np.unique(y)), **spec.get("params", {}))
    num_params = sum(p.numel() for p in module.parameters())  # before FSDP leaves each rank its shard
    model = wrap(module, args.strategy)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    epochs = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        rows, loss_sum = 0, 0.0
        begin = time.perf_counter()
        for batch_x, batch_y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch_x), batch_y)
            loss.backward()
            optimizer.step()
            rows += len(batch_y)
            loss_sum += loss.item() * len(batch_y)
        seconds = torch.tensor([time.perf_counter() - begin], dtype=torch.float64)
        totals = torch.tensor([rows, loss_sum], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        epochs.append({"epoch": epoch, "seconds": seconds.item(), "samples_per_s": totals[0].item() / seconds.item(),
                       "loss": totals[1].item() / totals[0].item()})

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    base_rss, peak_rss = zip(*gathered([base_rss_mb, peak_rss_mb]), strict=True)
    if rank == 0 and args.json:
        result = {"epochs": epochs, "startup_s": started - T0, "data_s": data_s,
                  "epochs_s": sum(e["seconds"] for e in epochs), "total_s": time.time() - T0, "rows": len(y),
                  "world_size": world_size, "num_features": features.shape[1],
                  "num_params": num_params, "strategy": args.strategy,
                  "base_rss_mb_per_rank": list(base_rss), "peak_rss_mb_per_rank": list(peak_rss)}
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    dist.destroy_process_group()
    # Everything is done and written: skip the interpreter's teardown, which a background C++ thread aborts now and
    # then ("terminate called without an active exception": 2 runs in 10 here, the rank's exit status -6 failing
    # the whole torchrun).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
