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


# The whole collector app started (every feature, lifespan included) on an empty store.
NO_OUTLINES = textwrap.dedent("""
    import asyncio, sys, tempfile
    from pathlib import Path
    from fastapi.testclient import TestClient
    from citygate.rig import free_port
    from collector.config import CollectorConfig
    from collector.features import build_hub, open_store
    from collector.hub import BrokerLink

    d = tempfile.mkdtemp()
    store = open_store(f"sqlite:///{d}/hub.db")
    hub = build_hub(store, CollectorConfig(), ingest_stats=dict,
                    broker=BrokerLink(f"mqtt://127.0.0.1:{free_port()}"),
                    admin_token_file=Path(d) / "admin-token")
    with TestClient(hub.app) as client:
        status = client.get("/api/v1/health").status_code
    asyncio.run(hub.close())
    store.close()
    print(status, "shapely" in sys.modules, "numpy" in sys.modules)
""")


def test_a_collector_without_outlines_or_sources_does_not_load_shapely() -> None:
    """shapely with numpy is ~22 MiB resident; it comes with the first outline or source."""
    out = subprocess.run([sys.executable, "-c", NO_OUTLINES], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == ["200", "False", "False"], out
