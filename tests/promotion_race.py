"""Versions offered to the promotion gate at the same moment from several processes (as runs that finish together
do), and what the registry must show afterwards. Used against the sqlite and the PostgreSQL tracking servers.

Run as a script, it is one of those processes: ``python promotion_race.py URI GO_DIR NAME:VERSION:VALUE ...``
offers each version to the gate once ``GO_DIR/<name>`` exists, and prints each decision as a JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

METRIC = "test_accuracy"
START_DEADLINE_S = 120


def register_versions(client, name: str, values: list[float]) -> list[str]:
    """One finished run per value (its ``test_accuracy``), each registered as a version of ``name``."""
    experiment = client.create_experiment(name)
    client.create_registered_model(name)
    versions = []
    for value in values:
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, METRIC, value)
        client.log_text(run.info.run_id, "weights", "model/weights.txt")
        client.set_terminated(run.info.run_id)
        versions.append(client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version)
    return versions


def race(tracking_uri: str, rounds: dict[str, dict[str, float]], work: Path, env: dict[str, str] | None = None
         ) -> dict[str, list[dict]]:
    """For each model name in ``rounds``, its versions (registered already; version → metric value) offered to the
    gate at once, one process per version; each round's decisions."""
    names = list(rounds)
    offers = [list(rounds[name].items()) for name in names]
    processes = []
    for slot in range(max(len(round_) for round_ in offers)):
        mine = [f"{name}:{round_[slot][0]}:{round_[slot][1]}" for name, round_ in zip(names, offers, strict=True)
                if slot < len(round_)]
        processes.append(subprocess.Popen([sys.executable, __file__, tracking_uri, str(work), *mine],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, **(env or {})}))
    for name in names:
        ready = [work / f"ready-{name}-{process.pid}" for process in processes]
        until = time.monotonic() + START_DEADLINE_S
        while not all(path.exists() for path in ready):
            assert time.monotonic() < until and all(p.poll() is None for p in processes), \
                [p.communicate() for p in processes if p.poll() is not None]
            time.sleep(0.02)
        (work / name).touch()
    decisions: dict[str, list[dict]] = {name: [] for name in names}
    for process in processes:
        stdout, stderr = process.communicate(timeout=START_DEADLINE_S)
        assert process.returncode == 0, stderr[-3000:]
        for line in stdout.splitlines():
            decision = json.loads(line)
            decisions[decision.pop("name")].append(decision)
    return decisions


def offered(values: list[float]) -> dict[str, float]:
    """Versions 1, 2, ... with ``values``."""
    return {str(version): value for version, value in enumerate(values, start=1)}


def check(client, name: str, values: list[float], decisions: list[dict]) -> None:
    """The best version holds the alias; the alias history lists every move, in the order the moves were made (each
    promoted version names the one before it as the holder it beat); every version's decision was recorded."""
    best = str(values.index(max(values)) + 1)
    assert client.get_model_version_by_alias(name, "champion").version == best
    moves = {d["previous_version"]: d["version"] for d in decisions if d["promoted"]}
    assert len(moves) == sum(d["promoted"] for d in decisions), f"two moves from the same holder: {decisions}"
    chain, holder = [], None
    while holder in moves:
        holder = moves[holder]
        chain.append(holder)
    history = client.get_registered_model(name).tags["rayline.alias_history.champion"].split(",")
    assert history == chain and chain[-1] == best, (history, decisions)
    assert [values[int(v) - 1] for v in chain] == sorted(values[int(v) - 1] for v in chain)
    for version in map(str, range(1, len(values) + 1)):
        assert client.get_model_version(name, version).tags.get("rayline.promotion"), version


ROUNDS = [[0.70, 0.95, 0.80, 0.90], [0.90, 0.80, 0.70, 0.95], [0.80, 0.70, 0.95, 0.90]]


def race_and_check(client, tracking_uri: str, prefix: str, work: Path, rounds: int = len(ROUNDS)
                   ) -> dict[str, list[float]]:
    """``rounds`` models of four versions each (:data:`ROUNDS`), every model's versions offered at once, then each
    model checked (:func:`check`); returns the models' names with their versions' values."""
    rounds = {f"{prefix}-{index}": values for index, values in enumerate(ROUNDS[:rounds])}
    for name, values in rounds.items():
        register_versions(client, name, values)
    decisions = race(tracking_uri, {name: offered(values) for name, values in rounds.items()}, work)
    for name, values in rounds.items():
        check(client, name, values, decisions[name])
    return rounds


def _offer(tracking_uri: str, work: Path, offers: list[str]) -> None:
    import rayline  # noqa: F401  (the environment it sets up)
    from rayline.tracking import promote_if_better

    for offer in offers:
        name, version, value = offer.rsplit(":", 2)
        (work / f"ready-{name}-{os.getpid()}").touch()
        while not (work / name).exists():
            time.sleep(0.005)
        decision = promote_if_better(tracking_uri, name, version, "champion", METRIC, "max", float(value))
        print(json.dumps({"name": name, **asdict(decision)}), flush=True)


if __name__ == "__main__":
    _offer(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
