"""Small process helpers for the embedded platform: free ports, waiting on health, stopping process trees."""

from __future__ import annotations

import contextlib
import ipaddress
import os
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


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``); False for anything else,
    host names included."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


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
    """Stop every process started under the session of ``start_new_session=True`` (its leader's pid is
    ``group_id``): its process group, and the processes that moved to groups of their own inside that session
    (Ray's workers, and the HAProxy a Serve actor starts).

    Only acts when some member's command line contains ``must_contain`` (the pid may have been reused).
    Returns how many processes there were.
    """
    members = session_members(group_id)
    if not any(must_contain in _command_line(p) for p in members):
        return 0
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    return len(members)


def session_members(session_id: int) -> list[psutil.Process]:
    """The live processes (zombies excepted) whose process group or session is ``session_id``."""
    return [p for p in psutil.process_iter(["status", "cmdline"])
            if p.info["status"] != psutil.STATUS_ZOMBIE and session_id in _group_and_session(p)]


def _command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _group_and_session(process: psutil.Process) -> tuple[int | None, int | None]:
    try:
        return os.getpgid(process.pid), os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None, None
