"""Soak: the reference load for an hour with the broker restarted every ten minutes.

`make soak` runs it (SOAK_SECONDS=3600, SOAK_RESTART_EVERY=600); shorter runs for a quick
look: SOAK_SECONDS=300 SOAK_RESTART_EVERY=60. The gateway polls 100 lifts x 20 points at 1 Hz
on four Modbus TCP connections, plus the three counting lifts of hil_tests/chaos.py whose every
reading is accounted for exactly. Its RSS, open files and asyncio tasks are scraped from its
own metrics endpoint (independent of the broker being restarted); the slopes are printed and
must stay flat, and no reading may be lost.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import Broker, Proc, free_port, port_open, wait_for
from hil_tests.chaos import ChaosCity, hold

SECONDS = float(os.environ.get("SOAK_SECONDS", "3600"))
pytestmark = [pytest.mark.hil, pytest.mark.slow, pytest.mark.soak,
              pytest.mark.timeout(SECONDS + 900)]  # the soak itself, then settling
RESTART_EVERY = float(os.environ.get("SOAK_RESTART_EVERY", "600"))
SAMPLE_EVERY = 10.0
LIFTS, BUSES = 100, 4


def load_tables(modbus_port: int) -> str:
    """[[buses]] and [[devices]] tables of the reference load (TOML allows them interleaved)."""
    lines: list[str] = []
    for b in range(BUSES):
        lines += ["[[buses]]", f'name = "load{b}"', 'type = "modbus-tcp"',
                  'host = "127.0.0.1"', f"port = {modbus_port}"]
    for u in range(1, LIFTS + 1):
        lines += ["[[devices]]", f'id = "lift-{u:03d}"', f'bus = "load{u % BUSES}"',
                  'profile = "elevator-gbt24476"', f"unit = {u}", 'poll = "1s"']
    return "\n".join(lines)


def scrape(port: int) -> dict[str, float]:
    """The gateway's own figures from its metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for name in ("process_resident_memory_bytes", "process_open_fds", "citygate_asyncio_tasks",
                 "citygate_uplink_connects_total"):
        m = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)
        if m:
            out[name] = float(m.group(1))
    return out


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return 3600 * sum((t - mt) * (v - mv) for t, v in samples) / var if var else 0.0


def test_soak_reference_load_with_broker_restarts(tmp_path: Path, broker: Broker,
                                                  procs: Any) -> None:
    load_port, metrics_port = free_port(), free_port()
    load = procs.start("load-sim", "sim", "elevators", "--tcp", f"127.0.0.1:{load_port}",
                       "--units", f"1-{LIFTS}")
    wait_for(lambda: port_open(load_port), 20, "the load simulator")
    extra = (f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n{load_tables(load_port)}\n')
    city = ChaosCity(tmp_path, procs, broker, outbox=extra).start()
    wait_for(lambda: scrape(metrics_port), 30, "the gateway's metrics")
    samples: dict[str, list[tuple[float, float]]] = {}
    t0 = time.monotonic()
    next_restart = t0 + RESTART_EVERY
    restarts = 0
    while (now := time.monotonic()) - t0 < SECONDS:
        for k, v in scrape(metrics_port).items():
            samples.setdefault(k, []).append((now - t0, v))
        if now >= next_restart:
            broker.restart()
            restarts += 1
            next_restart += RESTART_EVERY
        hold(SAMPLE_EVERY)
    assert isinstance(load, Proc) and load.alive
    warm = [(t, v) for t, v in samples["process_resident_memory_bytes"] if t > SECONDS * 0.2]
    figures: dict[str, Any] = {
        "rss_mb_first": samples["process_resident_memory_bytes"][0][1] / 1e6,
        "rss_mb_last": samples["process_resident_memory_bytes"][-1][1] / 1e6,
        "rss_mb_per_hour_after_warmup": slope_per_hour([(t, v / 1e6) for t, v in warm]),
        "open_fds_per_hour": slope_per_hour(samples["process_open_fds"]),
        "asyncio_tasks_per_hour": slope_per_hour(samples["citygate_asyncio_tasks"]),
        "open_fds_first_last": (samples["process_open_fds"][0][1],
                                samples["process_open_fds"][-1][1]),
        "tasks_first_last": (samples["citygate_asyncio_tasks"][0][1],
                             samples["citygate_asyncio_tasks"][-1][1]),
        "uplink_connects": samples["citygate_uplink_connects_total"][-1][1],
        "broker_restarts": restarts,
    }
    hold(3)
    acc = city.finish(timeout=180)
    print(f"\nsoak {SECONDS:g} s, broker restart every {RESTART_EVERY:g} s: {figures}\n{acc}")
    assert (acc.duplicates, acc.lost) == (0, 0), acc
    assert acc.stored == acc.produced, acc
    assert figures["uplink_connects"] >= restarts + 1
    assert samples["process_open_fds"][-1][1] - samples["process_open_fds"][0][1] <= 5, figures
    assert samples["citygate_asyncio_tasks"][-1][1] - \
        samples["citygate_asyncio_tasks"][0][1] <= 5, figures
    assert figures["rss_mb_per_hour_after_warmup"] < 10, figures
