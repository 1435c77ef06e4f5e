"""Figures of the running process, the same on a gateway and a collector: CPU, resident
memory, threads, open files, bytes written (Linux /proc, with fallbacks elsewhere)."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from pathlib import Path


def process_figures() -> dict[str, float]:
    """CPU seconds, RSS, open files, threads and bytes written of this process."""
    t = os.times()
    out: dict[str, float] = {"process_cpu_s": round(t.user + t.system, 3),
                             "process_threads": threading.active_count()}
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        out["process_rss_bytes"] = pages * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        out["process_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with contextlib.suppress(OSError):
        out["process_open_fds"] = len(os.listdir("/proc/self/fd"))
    with contextlib.suppress(OSError, ValueError):
        io = dict(line.split(": ", 1) for line in
                  Path("/proc/self/io").read_text().splitlines() if ": " in line)
        out["process_write_bytes"] = int(io["write_bytes"])
    return out
