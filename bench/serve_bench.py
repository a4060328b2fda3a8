"""Serving benchmark: rayline's endpoint against `mlflow models serve` and a plain FastAPI + uvicorn process.

    .venv/bin/python bench/serve_bench.py                      # about 20 minutes on 2 cores
    .venv/bin/python bench/serve_bench.py --models wide --duration 5 --concurrency 32

Two registered models, each served three ways, one server at a time, loaded by the same compiled generator
(wrk) with the same body: one row in MLflow's ``dataframe_split`` format POSTed to ``/invocations``, a route
all three servers answer. The models:

* ``digits``: ``pipelines/digits.yaml`` as shipped (a small CNN): per-request overhead dominates.
* ``wide``: ``pipelines/synthetic.yaml`` with a 3-layer 4096-wide MLP: compute-bound, where batching pays.

rayline serves each with ``serving/digits.yaml``'s settings (the model URI and port replaced; ``wide`` also
batches up to 32 rows for at most 10 ms). Everything runs in this process tree: an embedded platform of its own
(state in ``bench/.state``; the trained models are kept there for the next run), the MLflow model server and
the FastAPI script as child processes. wrk runs pinned with ``taskset`` to ``--client-cpus``; the servers
run on ``--server-cpus`` (by default every core: Ray's proxy and replicas are several processes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "platform"))

import rayline  # noqa: E402  (sets RAY_AUTH_MODE before Ray is imported)
from rayline.cluster.processes import free_port, stop_process_group, wait_until  # noqa: E402

SERVERS = ("rayline", "mlflow", "fastapi")
WIDE_HIDDEN = [4096, 4096, 4096]
PIPELINES = {
    "digits": ("digits.yaml", {"tracking.experiment": "bench", "tracking.model_name": "bench-digits"}),
    "wide": ("synthetic.yaml", {
        "data.source": "synthetic://classification?rows=4000&features=32&classes=4&seed=0",
        "model.params.hidden": WIDE_HIDDEN, "train.epochs": 1, "train.batch_size": 256,
        "train.scaling.num_workers": 1, "tracking.experiment": "bench", "tracking.model_name": "bench-wide"}),
}
SERVICE_OVERRIDES = {
    "digits": {},
    "wide": {"batching.max_batch_size": 32, "batching.batch_wait_timeout_s": 0.01},
}


@dataclass
class Measurement:
    model: str
    server: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def ensure_models(platform: rayline.Platform, state_dir: Path, retrain: bool) -> dict[str, str]:
    """Train and register both models once; later runs reuse the versions recorded in the state dir."""
    record = state_dir / "bench-models.json"
    models = {} if retrain or not record.exists() else json.loads(record.read_text())
    for name, (pipeline, overrides) in PIPELINES.items():
        if name not in models:
            print(f"[bench] training the {name} model ({pipeline})", flush=True)
            result = rayline.run(ROOT / "pipelines" / pipeline, overrides, ray_address=platform.ray_address,
                                 tracking_uri=platform.tracking_uri, storage_uri=platform.storage_uri)
            models[name] = result.model_uri
    record.write_text(json.dumps(models, indent=1))
    return models


def one_row(model_uri: str, tracking_uri: str) -> pd.DataFrame:
    """A single input row matching the model's signature (its column names and types)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    types = mlflow.models.get_model_info(model_uri).signature.inputs.input_types_dict()
    if "pixel_0_0" in types:
        from sklearn.datasets import load_digits

        row = load_digits(as_frame=True).frame[list(types)].head(1)
    else:
        row = pd.DataFrame([[0.5] * len(types)], columns=list(types))
    return row.astype({column: kind.to_numpy() for column, kind in types.items()})


def forward_ms(model_uri: str, row: pd.DataFrame, repeats: int = 50) -> float:
    """Median wall time of one 1-row ``predict`` (preprocessing and forward) in this process, one torch thread."""
    import mlflow
    import torch

    torch.set_num_threads(1)
    model = mlflow.pyfunc.load_model(model_uri)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(row)
        timings.append((time.perf_counter() - started) * 1000)
    return sorted(timings)[len(timings) // 2]


def _post_ok(url: str, body: bytes) -> bool:
    import urllib.request

    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def child(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A server in a process group of its own, stopped with its children on exit."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})})
    try:
        yield process
    finally:
        stop_process_group(process.pid, must_contain=Path(command[0]).name)


@contextlib.contextmanager
def serve_rayline(platform: rayline.Platform, model: str, model_uri: str, port: int) -> Iterator[str]:
    from rayline.serving import shutdown

    overrides = {"name": f"bench-{model}", "model": model_uri, "port": port, **SERVICE_OVERRIDES[model]}
    spec = rayline.load_service_spec(ROOT / "serving" / "digits.yaml", overrides)
    endpoint = rayline.serve(spec, ray_address=platform.ray_address, tracking_uri=platform.tracking_uri)
    try:
        yield endpoint.url
    finally:
        shutdown(platform)  # and wait until Serve is gone: the next model starts a new one on its own port


@contextlib.contextmanager
def serve_mlflow(platform: rayline.Platform, model_uri: str, port: int, logs: Path) -> Iterator[str]:
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri, "--env-manager",
               "local", "--host", "127.0.0.1", "--port", str(port)]
    # It execs `uvicorn` from PATH: this environment's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with child(command, logs / "mlflow-models-serve.log", {"MLFLOW_TRACKING_URI": platform.tracking_uri,
                                                           "PATH": path}):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def serve_fastapi(platform: rayline.Platform, model_uri: str, port: int, logs: Path) -> Iterator[str]:
    command = [sys.executable, str(BENCH / "fastapi_server.py"), "--model-uri", model_uri, "--port", str(port)]
    with child(command, logs / "fastapi.log", {"MLFLOW_TRACKING_URI": platform.tracking_uri}):
        yield f"http://127.0.0.1:{port}"


LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, body_file: Path, connections: int, duration_s: int, client_cpus: str) -> dict[str, float]:
    """One wrk run (one thread, ``connections`` open connections): throughput, p50, p99 and errors."""
    command = ["taskset", "-c", client_cpus, "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency",
               "--timeout", "10s", "-s", str(BENCH / "wrk_post.lua"), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True,
                         env={**os.environ, "BODY_FILE": str(body_file)}).stdout
    latency = {p: float(v) * UNIT_MS[unit] for p, v, unit in LATENCY.findall(out)}
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50_ms": latency.get("50", float("nan")), "p99_ms": latency.get("99", float("nan")),
        "errors": (sum(int(n) for n in socket_errors.groups()) if socket_errors else 0)
        + (int(non_2xx[1]) if non_2xx else 0),
        "requests": int(re.search(r"(\d+) requests in", out)[1]),
    }


def measure(args: argparse.Namespace, platform: rayline.Platform, model: str, model_uri: str, row: pd.DataFrame,
            logs: Path) -> list[Measurement]:
    body = json.dumps({"dataframe_split": row.to_dict(orient="split", index=False)}).encode()
    body_file = logs / f"{model}-body.json"
    body_file.write_bytes(body)
    results = []
    for server in args.servers:
        port = free_port()
        print(f"[bench] {model}: starting {server}", flush=True)
        started = (serve_rayline(platform, model, model_uri, port) if server == "rayline" else
                   serve_mlflow(platform, model_uri, port, logs) if server == "mlflow" else
                   serve_fastapi(platform, model_uri, port, logs))
        with started as base:
            url = f"{base}/invocations"
            wait_until(lambda url=url: _post_ok(url, body), 300, f"{server} serving {model}")
            # Warm up at the highest concurrency, so that Serve's autoscaling has settled before measuring.
            wrk(url, body_file, max(args.concurrency), args.warmup, args.client_cpus)
            for connections in args.concurrency:
                _post_ok(url, body)  # returns once a single-process server has worked off the previous run's queue
                numbers = wrk(url, body_file, connections, args.duration, args.client_cpus)
                results.append(Measurement(model, server, connections, **numbers))
                print(f"[bench] {model} {server:8s} c={connections:<3d} {numbers['requests_per_s']:8.1f} req/s  "
                      f"p50 {numbers['p50_ms']:7.1f} ms  p99 {numbers['p99_ms']:7.1f} ms  "
                      f"errors {numbers['errors']}", flush=True)
    return results


def table(results: list[Measurement], forward: dict[str, float]) -> str:
    """Markdown: one row per model and concurrency, the three servers side by side, then the ratios."""
    by = {(m.model, m.server, m.concurrency): m for m in results}
    lines = ["| model (1-row predict) | c | rayline req/s (p50 / p99 ms, errors) | mlflow models serve "
             "| plain FastAPI | rayline/mlflow | rayline/FastAPI |", "|---|---|---|---|---|---|---|"]
    for (model, server, c), m in by.items():
        if server != "rayline":
            continue
        cells = []
        for peer in SERVERS:
            p = by.get((model, peer, c))
            cells.append(f"{p.requests_per_s:.0f} ({p.p50_ms:.1f} / {p.p99_ms:.1f}, {p.errors})" if p else "—")
        ratios = [f"{m.requests_per_s / by[(model, peer, c)].requests_per_s:.2f}x"
                  if (model, peer, c) in by else "—" for peer in ("mlflow", "fastapi")]
        lines.append(f"| {model} ({forward[model]:.1f} ms) | {c} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=20, help="seconds of load before each server's runs")
    parser.add_argument("--client-cpus", default=str((os.cpu_count() or 1) - 1), help="wrk's cores (taskset)")
    parser.add_argument("--server-cpus", default=None, help="the servers' cores (default: all)")
    parser.add_argument("--state-dir", type=Path, default=BENCH / ".state")
    parser.add_argument("--retrain", action="store_true", help="train and register the models again")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    if args.server_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.server_cpus.split(",")})  # every server inherits it
    platform = rayline.up(args.state_dir)
    ingress = rayline.status(args.state_dir)["serve_ingress"]
    try:
        platform.init_ray(verbose=False)
        models = ensure_models(platform, args.state_dir, args.retrain)
        rows = {m: one_row(models[m], platform.tracking_uri) for m in args.models}
        forward = {m: forward_ms(models[m], rows[m]) for m in args.models}
        logs = args.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        results = [r for m in args.models for r in measure(args, platform, m, models[m], rows[m], logs)]
    finally:
        import ray

        ray.shutdown()
        rayline.down(args.state_dir)
    print(f"\nwrk -t1 pinned to CPU {args.client_cpus}; servers on CPUs {args.server_cpus or 'all'}; "
          f"{args.duration} s per cell; rayline ingress: {ingress}\n")
    print(table(results, forward))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
