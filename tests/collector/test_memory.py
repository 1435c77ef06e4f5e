"""Freed heap memory goes back to the operating system (collector/memory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from collector.memory import MemoryTrimmer

# 200 MiB in 2 KiB blocks from glibc's heap, all freed but the last (which keeps the heap's top,
# so the allocator cannot shrink it by itself): the RSS stays until the trimmer runs.
PROBE = textwrap.dedent("""
    import time
    from collector.memory import MemoryTrimmer

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

    clock = [0.0]
    trimmer = MemoryTrimmer(interval=30, clock=lambda: clock[0])
    blocks = [bytearray(2048) for _ in range(100_000)]
    keep = blocks[-1]
    del blocks
    held = rss_mib()
    early = (trimmer.due(), trimmer.maybe())  # within the interval: nothing
    clock[0] = 31.0
    due = trimmer.due()
    trimmed = trimmer.maybe()
    print(held, rss_mib(), *early, due, trimmed, trimmer.trims, trimmer.due())
""")


def test_the_trimmer_gives_freed_heap_back_at_most_once_per_interval() -> None:
    if not MemoryTrimmer().available:
        pytest.skip("not glibc: malloc_trim does not exist here")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    held, after = int(out[0]), int(out[1])
    assert out[2:] == ["False", "False", "True", "True", "1", "False"]
    assert held - after >= 150, (held, after)  # of the ~200 MiB freed
