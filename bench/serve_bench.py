"""Serving benchmark: rayline's endpoint against what a user would run instead, with no rayline code on the
peers' request path.

    .venv/bin/python bench/serve_bench.py                      # about 20 minutes on 2 cores
    .venv/bin/python bench/serve_bench.py --models wide --duration 5 --concurrency 32

Needs wrk (``apt-get install wrk``) and the peers' own environment (``make bench-peers``): LitServe and BentoML
live in ``bench/.venv-peers``, out of rayline's dependencies, because BentoML pins OpenTelemetry to versions older
than the ones Ray and MLflow run with here.

Two registered models, each served by every server in turn, loaded by the same compiled generator (wrk) with the
same body: one row in MLflow's ``dataframe_split`` format POSTed to ``/invocations``. The models:

* ``digits``: ``pipelines/digits.yaml`` as shipped (a small CNN): per-request overhead dominates.
* ``wide``: ``pipelines/synthetic.yaml`` with a 3-layer 4096-wide MLP: compute-bound, where batching pays.

The servers:

* ``rayline``: ``serving/digits.yaml``'s settings (``wide`` batches up to 32 rows, waiting at most 10 ms while
  other requests are queued);
* ``plain`` (a) and ``plain-w2`` (b): ``bench/peers/plain_fastapi.py``, FastAPI + uvicorn with 1 or 2 workers;
* ``mlflow`` (c): ``mlflow models serve`` of the registered model;
* ``litserve`` (d): ``bench/peers/litserve_server.py``: 2 workers without batching for ``digits``, 1 worker
  batching up to 32 requests for at most 10 ms for ``wide`` (each the better of the two on 2 cores);
* ``bentoml`` (e): ``bench/peers/bentoml_service.py``, 2 workers, no adaptive batching (no faster, and 503s).

The peers (a, b, d, e) load the packaged model's weights with ``rayline.models.build_model`` and run its
preprocessing re-written in numpy (``bench/peers/numpy_model.py``). Also measured: one rayline replica's ceiling
without HTTP, a loop of Ray Serve handle calls (``ModelServer.score``) from the driver.
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

SERVERS = ("rayline", "plain", "plain-w2", "mlflow", "litserve", "bentoml")
PEER_PYTHON = BENCH / ".venv-peers" / "bin" / "python"
PEERS = BENCH / "peers"
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
# The peers' best settings on 2 cores where they differ from their defaults: LitServe batching (like rayline's
# wide service) is worth it only where the forward pass dominates.
PEER_OPTIONS = {"wide": {"litserve": ["--workers", "1", "--batch", "32", "--batch-timeout", "0.01"]}}
HANDLE_CONCURRENCY = (1, 32)


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
            result = rayline.run(ROOT / "pipelines" / pipeline, overrides, platform=platform)
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


def forward_ms(model_uri: str, row: pd.DataFrame, repeats: int = 200) -> dict[str, float]:
    """Median wall time (ms) of ``PackagedModel.predict`` on 1 and 32 rows in this process, one torch thread."""
    import mlflow
    import torch

    from rayline.packaged import PackagedModel
    from rayline.packaged.layout import package_dir

    torch.set_num_threads(1)
    model = PackagedModel.load(package_dir(mlflow.artifacts.download_artifacts(model_uri)))
    medians = {}
    for rows in (1, 32):
        frame = pd.concat([row] * rows, ignore_index=True)
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.predict(frame)
            timings.append((time.perf_counter() - started) * 1000)
        medians[f"{rows}"] = sorted(timings)[len(timings) // 2]
    return medians


def handle_ceiling(app_name: str, payload: dict, concurrency: int, duration_s: float) -> float | None:
    """Requests/s of Ray Serve handle calls (``ModelServer.score``) with ``concurrency`` outstanding; None when
    the deployment has no working ``score``."""
    from collections import deque

    from ray import serve

    handle = serve.get_app_handle(app_name)
    try:
        handle.score.remote(payload).result()
    except Exception as err:  # an older ModelServer without `score`: Serve says so only when the call fails
        print(f"[bench] handle calls skipped: {app_name}'s ModelServer.score failed ({type(err).__name__}: "
              f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''})", flush=True)
        return None
    outstanding: deque = deque()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration_s:
        while len(outstanding) < concurrency:
            outstanding.append(handle.score.remote(payload))
        outstanding.popleft().result()
        done += 1
    for response in outstanding:
        response.result()
    return done / (time.perf_counter() - started)


def handle_ceilings(app_name: str, payload: dict, duration_s: float) -> dict[int, float]:
    """:func:`handle_ceiling` at each of ``HANDLE_CONCURRENCY`` (none if ``score`` is missing)."""
    rates = {}
    for concurrency in HANDLE_CONCURRENCY:
        rate = handle_ceiling(app_name, payload, concurrency, duration_s)
        if rate is None:
            break
        rates[concurrency] = rate
        print(f"[bench] {app_name} handle calls c={concurrency}: {rate:.0f} req/s", flush=True)
    return rates


def _post(url: str, body: bytes) -> dict | None:
    """The JSON answer to one POST, or None if the server is not answering (yet) or fails."""
    import urllib.request

    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def child(command: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A server in a process group of its own, stopped with its children on exit."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})}, cwd=cwd)
    try:
        yield process
    finally:
        stop_process_group(process.pid, must_contain=Path(command[0]).name)


@contextlib.contextmanager
def serve_rayline(platform: rayline.Platform, model: str, model_uri: str, port: int) -> Iterator[str]:
    from rayline.serving import shutdown

    overrides = {"name": f"bench-{model}", "model": model_uri, "port": port, **SERVICE_OVERRIDES[model]}
    spec = rayline.load_service_spec(ROOT / "serving" / "digits.yaml", overrides)
    endpoint = rayline.serve(spec, platform=platform)
    try:
        yield endpoint.url
    finally:
        shutdown(platform)  # and wait until Serve is gone: the next model starts a new one on its own port


def peer_command(server: str, model: str, model_dir: Path, model_uri: str,
                 port: int) -> tuple[list[str], Path | None]:
    """The command line (and working directory) that starts a peer on ``port``."""
    common = ["--model-dir", str(model_dir), "--port", str(port), *PEER_OPTIONS.get(model, {}).get(server, [])]
    if server in ("plain", "plain-w2"):
        return [sys.executable, str(PEERS / "plain_fastapi.py"), *common,
                "--workers", "2" if server == "plain-w2" else "1"], None
    if server == "litserve":
        return [str(PEER_PYTHON), str(PEERS / "litserve_server.py"), *common], None
    if server == "bentoml":
        return [str(PEER_PYTHON.with_name("bentoml")), "serve", "bentoml_service:Peer", "--host", "127.0.0.1",
                "--port", str(port)], PEERS
    # mlflow models serve execs `uvicorn` from PATH: this environment's.
    return [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri, "--env-manager",
            "local", "--host", "127.0.0.1", "--port", str(port)], None


@contextlib.contextmanager
def serve_peer(server: str, platform: rayline.Platform, model: str, model_dir: Path, model_uri: str, port: int,
               logs: Path) -> Iterator[str]:
    command, cwd = peer_command(server, model, model_dir, model_uri, port)
    env = {"MLFLOW_TRACKING_URI": platform.tracking_uri, "BENCH_MODEL_DIR": str(model_dir),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with child(command, logs / f"{server}.log", env, cwd):
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
            logs: Path) -> tuple[list[Measurement], dict[int, float]]:
    """Every server in turn under wrk; for rayline also the handle-call ceiling."""
    import mlflow

    from rayline.packaged.layout import package_dir

    payload = {"dataframe_split": row.to_dict(orient="split", index=False)}
    body = json.dumps(payload).encode()
    body_file = logs / f"{model}-body.json"
    body_file.write_bytes(body)
    model_dir = package_dir(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(logs / f"{model}-model")))
    results, ceiling, labels = [], {}, {}
    for server in args.servers:
        port = free_port()
        print(f"[bench] {model}: starting {server}", flush=True)
        started = (serve_rayline(platform, model, model_uri, port) if server == "rayline" else
                   serve_peer(server, platform, model, model_dir, model_uri, port, logs))
        with started as base:
            url = f"{base}/invocations"
            wait_until(lambda url=url: _post(url, body) is not None, 300, f"{server} serving {model}")
            labels[server] = _post(url, body)["predictions"][0]["prediction"]
            # Warm up at the highest concurrency, so that Serve's autoscaling has settled before measuring.
            wrk(url, body_file, max(args.concurrency), args.warmup, args.client_cpus)
            for connections in args.concurrency:
                _post(url, body)  # returns once a single-process server has worked off the previous run's queue
                numbers = wrk(url, body_file, connections, args.duration, args.client_cpus)
                results.append(Measurement(model, server, connections, **numbers))
                print(f"[bench] {model} {server:8s} c={connections:<3d} {numbers['requests_per_s']:8.1f} req/s  "
                      f"p50 {numbers['p50_ms']:7.1f} ms  p99 {numbers['p99_ms']:7.1f} ms  "
                      f"errors {numbers['errors']}", flush=True)
            if server == "rayline":
                ceiling = handle_ceilings(f"bench-{model}", payload, args.duration)
    if len(set(map(str, labels.values()))) > 1:
        print(f"[bench] WARNING: the servers disagree on {model}'s row: {labels}", flush=True)
    return results, ceiling


def table(results: list[Measurement]) -> str:
    """Markdown: one row per model and concurrency, every server side by side, then rayline's ratio to each."""
    by = {(m.model, m.server, m.concurrency): m for m in results}
    peers = [s for s in SERVERS if s != "rayline"]
    lines = ["| model | c | " + " | ".join(SERVERS) + " | " + " | ".join(f"rayline/{p}" for p in peers) + " |",
             "|---|---|" + "---|" * (len(SERVERS) + len(peers))]
    for model, c in dict.fromkeys((m.model, m.concurrency) for m in results):
        cells = []
        for server in SERVERS:
            p = by.get((model, server, c))
            cells.append(f"{p.requests_per_s:.0f} ({p.p50_ms:.1f} / {p.p99_ms:.1f}, {p.errors})" if p else "—")
        mine = by.get((model, "rayline", c))
        ratios = [f"{mine.requests_per_s / by[(model, peer, c)].requests_per_s:.2f}x"
                  if mine and (model, peer, c) in by else "—" for peer in peers]
        lines.append(f"| {model} | {c} | " + " | ".join(cells + ratios) + " |")
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
    if {"litserve", "bentoml"} & set(args.servers) and not PEER_PYTHON.exists():
        parser.error(f"{PEER_PYTHON} is missing: run `make bench-peers`, or leave litserve and bentoml out of "
                     "--servers")
    if args.server_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.server_cpus.split(",")})  # every server inherits it
    platform = rayline.up(args.state_dir)
    ingress = rayline.status(args.state_dir)["serve_ingress"]
    ceilings: dict[str, dict[int, float]] = {}
    try:
        platform.init_ray(verbose=False)
        models = ensure_models(platform, args.state_dir, args.retrain)
        rows = {m: one_row(models[m], platform.tracking_uri) for m in args.models}
        predict_ms = {m: forward_ms(models[m], rows[m]) for m in args.models}
        logs = args.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        results = []
        for m in args.models:
            measured, ceilings[m] = measure(args, platform, m, models[m], rows[m], logs)
            results += measured
    finally:
        import ray

        ray.shutdown()
        rayline.down(args.state_dir)
    print(f"\nwrk -t1 pinned to CPU {args.client_cpus}; servers on CPUs {args.server_cpus or 'all'}; "
          f"{args.duration} s per cell; rayline ingress: {ingress}; cells: req/s (p50 / p99 ms, errors)\n")
    print(table(results))
    print("\n| model | PackagedModel.predict 1 row (ms) | 32 rows (ms) | handle calls c=1 (req/s) | c=32 (req/s) |")
    print("|---|---|---|---|---|")
    for m in args.models:
        print(f"| {m} | {predict_ms[m]['1']:.2f} | {predict_ms[m]['32']:.2f} | "
              f"{ceilings[m].get(1, float('nan')):.0f} | {ceilings[m].get(32, float('nan')):.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"results": [asdict(r) for r in results], "predict_ms": predict_ms,
                                         "handle_ceiling": ceilings}, indent=1))


if __name__ == "__main__":
    main()
