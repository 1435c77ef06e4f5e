"""The C heap of a long-running agent: glibc's mmap threshold fixed above asyncio's read size.

asyncio reads a socket into a fresh 256 KiB buffer and shrinks it to what arrived. glibc serves
allocations above its mmap threshold (128 KiB to begin with) with a private mapping, so every
read of the Modbus TCP connection costs mmap + mremap + munmap: about 80 system calls a second
at the reference load (bench/bench_idle.py), measurable in the agent's CPU time. glibc raises
the threshold by itself only after a large mapped block is freed, which the agent's start-up
may or may not do. Fixing it at 512 KiB, with as much kept free at the top of the heap, serves
those buffers from the heap for the life of the process.

Only on glibc, and not when the operator set MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_
(glibc's own environment variables, which then decide); never an error.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, glibc <malloc.h>
M_MMAP_THRESHOLD = -3
THRESHOLD = 512 * 1024  # bytes: above asyncio's 256 KiB read buffer (selector transports)


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds for the agent; True if they were set."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only: its mallopt semantics
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, THRESHOLD))
