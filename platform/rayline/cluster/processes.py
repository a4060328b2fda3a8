"""Small process helpers for the embedded platform: free ports, waiting on health, stopping process trees."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if GET ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until(check: Callable[[], bool], deadline_s: float, what: str, on_fail: Callable[[], str] = str) -> None:
    """Poll ``check`` until it holds; after the deadline raise TimeoutError naming ``what`` and ``on_fail()``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} not ready after {deadline_s:.0f} s. {on_fail()}".strip())


def stop_process_group(group_id: int, must_contain: str, grace_s: float = 10.0) -> int:
    """Stop every process of the group started with ``start_new_session=True`` (its leader's pid is ``group_id``).

    Only acts when some member's command line contains ``must_contain`` (the pid may have been reused).
    Returns how many processes were in the group.
    """
    members = [p for p in psutil.process_iter(["cmdline"]) if _group_of(p) == group_id]
    if not any(must_contain in " ".join(p.info["cmdline"] or []) for p in members):
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group_id, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group_id, signal.SIGKILL)
    return len(members)


def _group_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None
