"""Run HAProxy with Ray Serve's generated config, its stats page and Prometheus exporter bound to loopback, and
a deadline for a request's headers.

Ray 2.60's template (``ray/serve/_private/haproxy_templates.py``) hard-codes every interface for both:
``frontend prometheus`` has ``bind :{{ config.metrics_port }}`` and ``listen stats`` has
``bind *:{{ config.stats_port }}``; no setting changes that. Serve starts HAProxy as
``$RAY_SERVE_HAPROXY_BINARY_PATH -db -f CONFIG ...`` (start and every reload). The embedded platform points that
variable at a script running this file, which rewrites those two binds in CONFIG to ``127.0.0.1`` under the lock
Serve writes CONFIG with, then execs the real binary in the same process: Serve still sees the pid it spawned
and the command line it checks. The HTTP frontend keeps the host the service asked for.

Ray's template also leaves ``timeout http-request`` unset (its config field has no setting either), so a client
trickling its headers (slowloris) holds a connection for ``timeout client``, an hour. The ``defaults`` section
gets ``timeout http-request 10s``: such a client gets HAProxy's 408. Slow bodies are the replica's to cut off.

Standalone (standard library only), so that it starts fast: ``python -I haproxy_loopback.py REAL_HAPROXY ARGS...``.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import sys

LOOPBACK = "127.0.0.1"
SECTIONS = ("frontend prometheus", "listen stats")
WILDCARD_BIND = re.compile(r"^(\s+bind\s+)\*?:(\d+)")
HEADER_DEADLINE = "    timeout http-request 10s\n"


def harden(config: str) -> str:
    """``config`` with the wildcard ``bind`` lines of the stats and Prometheus sections on loopback, and a header
    deadline in ``defaults`` unless the config sets one."""
    lines, section = [], ""
    deadline = "" if "timeout http-request" in config else HEADER_DEADLINE
    for line in config.splitlines(keepends=True):
        if line[:1].strip():  # a section header starts at column 0
            section = " ".join(line.split())
            if section == "defaults" and deadline:
                line, deadline = line + deadline, ""
        elif section in SECTIONS:
            line = WILDCARD_BIND.sub(rf"\g<1>{LOOPBACK}:\g<2>", line)
        lines.append(line)
    return "".join(lines)


def rewrite(path: str) -> None:
    """Rewrite the config file in place, holding the lock Serve takes to write it (``CONFIG.lock``)."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(path, "r+") as config:
            text = config.read()
            fixed = harden(text)
            if fixed != text:
                config.seek(0)
                config.write(fixed)
                config.truncate()


def main(argv: list[str]) -> None:
    """``argv``: the real HAProxy binary, then the arguments Serve passed (``-f CONFIG`` among them)."""
    binary, *arguments = argv
    for flag, value in itertools.pairwise(arguments):
        if flag == "-f":
            rewrite(value)
    os.execv(binary, [binary, *arguments])


if __name__ == "__main__":
    main(sys.argv[1:])
