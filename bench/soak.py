"""Soak: steady load on the digits endpoint at half its measured peak for ten minutes, with one of its two
replicas SIGKILLed in the middle.

    .venv/bin/python bench/soak.py                    # about 13 minutes on 2 cores
    .venv/bin/python bench/soak.py --minutes 2        # a quick look

Load is wrk (one thread, pinned to the last core) in back-to-back windows of ``--window`` seconds, each POSTing one
row in MLflow's ``dataframe_split`` format to ``/invocations``. Its connection count is the one whose throughput,
in a short probe, comes closest to half the peak (measured first, at 32 connections). wrk is a plain HTTP client: it
does not retry, so requests in flight on the killed replica fail; the goal is no errors outside the window of the
kill (and the one after it, while Serve replaces the replica), and replica memory (RSS) growing under 5% from the
first window to the last.

Prints one row per window (requests, errors, req/s, p50, p99, which replicas and their RSS) and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

import rayline  # sets RAY_AUTH_MODE before Ray is imported
from rayline.cluster.processes import free_port
from serve_bench import BENCH, ROOT, ensure_models, one_row, wrk

APP = "soak"
PEAK_CONNECTIONS = 32
PROBE_CONNECTIONS = (1, 2, 4, 8, 16)


def replicas(dashboard_url: str) -> dict[int, float]:
    """The pid of each live replica of the soak application and its resident memory (MiB)."""
    from ray.util.state import list_actors

    found = list_actors(address=dashboard_url, filters=[("class_name", "=", f"ServeReplica:{APP}:{APP}"),
                                                        ("state", "=", "ALIVE")])
    memory: dict[int, float] = {}
    for actor in found:
        try:
            memory[actor.pid] = psutil.Process(actor.pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:  # dying right now
            continue
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=10, help="seconds per wrk window")
    parser.add_argument("--client-cpus", default=str((os.cpu_count() or 1) - 1), help="wrk's cores (taskset)")
    parser.add_argument("--state-dir", type=Path, default=BENCH / ".state")
    parser.add_argument("--json", type=Path, help="also write the windows here")
    args = parser.parse_args()

    platform = rayline.up(args.state_dir)
    try:
        platform.init_ray(verbose=False)
        model_uri = ensure_models(platform, args.state_dir, retrain=False)["digits"]
        port = free_port()
        spec = rayline.load_service_spec(ROOT / "serving" / "digits.yaml", {
            "name": APP, "model": model_uri, "port": port,
            "autoscaling": {"min_replicas": 2, "max_replicas": 2}})
        endpoint = rayline.serve(spec, platform=platform)
        url = f"{endpoint.url}/invocations"
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as body:
            json.dump({"dataframe_split": one_row(model_uri, platform.tracking_uri).to_dict(orient="split")
                       | {"index": None}}, body)
        body_file = Path(body.name)

        def run(connections: int, seconds: int) -> dict[str, float]:
            return wrk(url, body_file, connections, seconds, args.client_cpus)

        run(PEAK_CONNECTIONS, 10)  # warm up
        peak = run(PEAK_CONNECTIONS, 10)["requests_per_s"]
        probes = {c: run(c, 5)["requests_per_s"] for c in PROBE_CONNECTIONS}
        connections = min(probes, key=lambda c: abs(probes[c] - peak / 2))
        print(f"[soak] peak {peak:.0f} req/s at c={PEAK_CONNECTIONS}; probes {probes}; steady load: "
              f"c={connections} (~{probes[connections]:.0f} req/s)", flush=True)

        windows = max(3, round(args.minutes * 60 / args.window))
        kill_at = windows // 2
        rows, killed = [], None
        print("| window | t (s) | requests | errors | req/s | p50 ms | p99 ms | replicas (pid: RSS MiB) |")
        print("|---|---|---|---|---|---|---|---|")
        started = time.monotonic()
        for index in range(windows):
            if index == kill_at:
                killed = next(iter(replicas(platform.dashboard_url)))
                os.kill(killed, signal.SIGKILL)
            result = run(connections, args.window)
            memory = replicas(platform.dashboard_url)
            rows.append({"window": index, "t_s": round(time.monotonic() - started), **result, "replicas": memory})
            marks = ", ".join(f"{pid}: {rss:.0f}" for pid, rss in memory.items())
            print(f"| {index}{' (kill)' if index == kill_at else ''} | {rows[-1]['t_s']} | {result['requests']} | "
                  f"{result['errors']} | {result['requests_per_s']:.0f} | {result['p50_ms']:.1f} | "
                  f"{result['p99_ms']:.1f} | {marks} |", flush=True)
    finally:
        import ray

        ray.shutdown()
        rayline.down(args.state_dir)

    kill_window = {kill_at, kill_at + 1}
    outside = sum(r["errors"] for r in rows if r["window"] not in kill_window)
    inside = sum(r["errors"] for r in rows if r["window"] in kill_window)
    survivor = next(pid for pid in rows[0]["replicas"] if pid != killed)
    first, last = rows[0]["replicas"][survivor], rows[-1]["replicas"].get(survivor, float("nan"))
    p99s = sorted(r["p99_ms"] for r in rows if r["window"] not in kill_window)
    print(f"\n[soak] {sum(r['requests'] for r in rows)} requests in {windows} windows of {args.window} s at "
          f"c={connections}; errors: {inside} in the kill windows {sorted(kill_window)}, {outside} outside them")
    print(f"[soak] p99 outside the kill windows: median {p99s[len(p99s) // 2]:.1f} ms, worst {p99s[-1]:.1f} ms")
    print(f"[soak] surviving replica {survivor}: RSS {first:.0f} MiB -> {last:.0f} MiB "
          f"({(last / first - 1) * 100:+.1f}%); killed replica {killed}")
    if args.json:
        args.json.write_text(json.dumps({"peak": peak, "connections": connections, "windows": rows}, indent=1))
    sys.exit(0 if outside == 0 and last / first < 1.05 else 1)


if __name__ == "__main__":
    main()
