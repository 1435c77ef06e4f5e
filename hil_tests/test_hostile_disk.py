"""The gateway on a hostile disk, as a real process: its data directory on a small tmpfs that
another process fills during a broker outage, and an outbox truncated to 0 bytes while the
gateway is stopped. Exact accounting per device: every reading the lifts gave is stored at the
collector or reported lost by the gateway (`data_gap`), and the gateway never crashes or hangs.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import Broker, http_json, wait_for
from hil_tests.chaos import UNITS, ChaosCity, hold
from tests.edge.smalldisk import free_bytes, small_disk

pytestmark = pytest.mark.hil

# Evictions by the byte cap happen during the outage, so the gaps are not all zero; the free
# space floor is below what the filler leaves, so the disk-low policy runs too.
OUTBOX = 'max_bytes = "3KB"\nmin_free_disk = "512KB"\nbacklog_rate = 500'


@pytest.fixture
def gw_disk(tmp_path: Path) -> Iterator[Path]:
    """The gateway's data directory (ChaosCity puts it at <root>/gw) on an 8 MB tmpfs."""
    with small_disk(tmp_path / "gw", "8m") as disk:
        yield disk


def per_device(city: ChaosCity) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """Produced, stored and reported lost per device, and duplicates."""
    served = city.served()
    produced: Counter[str] = Counter()
    stored: Counter[str] = Counter()
    dups = 0
    for u in UNITS:
        values = Counter(city.stored(u))
        produced[f"c{u}"] = len(served[u])
        stored[f"c{u}"] = sum(1 for _, v in served[u] if v in values)
        dups += sum(c - 1 for c in values.values())
    return produced, stored, Counter(city.gaps_reported()), dups


def settle(city: ChaosCity, timeout: float = 90) -> tuple[Counter[str], Counter[str],
                                                          Counter[str], int]:
    """Stop the lifts and wait until every reading is stored or reported lost."""
    assert city.sim is not None
    city.sim.stop()

    def accounted() -> bool:
        produced, stored, lost, _ = per_device(city)
        return stored + lost == produced

    try:
        wait_for(accounted, timeout, "every reading stored or reported lost", interval=1.0)
    except TimeoutError:
        pass  # the assertions show the exact numbers
    return per_device(city)


def filler(disk: Path) -> subprocess.CompletedProcess[bytes]:
    """Another process writing to the gateway's disk until it is full."""
    return subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler.bin'}", "bs=64k"],
                          capture_output=True, check=False, timeout=60)


def test_disk_full_during_an_outage_loses_nothing_unreported(
        tmp_path: Path, broker: Broker, procs: Any, gw_disk: Path) -> None:
    city = ChaosCity(tmp_path, procs, broker, outbox=OUTBOX).start()
    gateway = city.gateway
    assert gateway is not None
    hold(2)
    broker.stop()
    hold(3)
    done = filler(gw_disk)
    assert b"No space left on device" in done.stderr, done.stderr
    assert free_bytes(gw_disk) < 64 * 1024
    hold(5)  # polling on with the disk full: commits and evictions fail
    broker.start()  # delivered messages cannot even be deleted yet
    hold(3)
    (gw_disk / "filler.bin").unlink()
    produced, stored, lost, dups = settle(city)
    log = gateway.tail(400)
    assert gateway.alive, log
    assert "Traceback" not in log and "cannot rollback" not in log, log
    assert "outbox write failed" in log, "the disk never filled up for the gateway"
    assert dups == 0
    assert sum(produced.values()) > 0
    # Exact, per device: what the lifts gave is stored at the hub or reported lost.
    assert stored + lost == produced, (produced, stored, lost)
    assert sum(lost.values()) > 0, "no eviction happened: the quota was never exceeded"
    assert not list(gw_disk.glob("outbox.sqlite.corrupt-*")), "a healthy outbox moved aside"
    seq = http_json(f"{city.base}/api/v1/gateways/gw-chaos/sequence")
    assert seq["lost_by_device"] == dict(lost)
    assert seq["lost_readings"] == sum(lost.values())
    reasons = {g["evidence"]["reason"] for g in seq["reported_gaps"]}
    assert reasons <= {"quota", "min_free_disk", "disk_full"}, reasons


@pytest.mark.slow  # the unit test tests/edge/test_outbox_disk.py covers it in `make test`
def test_outbox_truncated_while_stopped_reports_the_exact_gap(
        tmp_path: Path, broker: Broker, procs: Any) -> None:
    city = ChaosCity(tmp_path, procs, broker).start()
    gateway = city.gateway
    assert gateway is not None
    hold(2)
    broker.stop()
    hold(4)  # the readings of these seconds wait in the outbox
    assert gateway.stop() == 0
    outbox = tmp_path / "gw" / "outbox.sqlite"
    assert outbox.stat().st_size > 0
    with open(outbox, "r+b") as fh:
        fh.truncate(0)
    broker.start()
    assert city.collector is not None
    gateway.start()
    produced, stored, lost, dups = settle(city)
    assert dups == 0
    assert sum(lost.values()) > 0, "nothing was waiting in the outbox"
    assert stored + lost == produced, (produced, stored, lost)
    gaps = http_json(f"{city.base}/api/v1/events?kind=data_gap&limit=10000")
    assert {g["evidence"]["reason"] for g in gaps} == {"outbox_lost"}
    seq = http_json(f"{city.base}/api/v1/gateways/gw-chaos/sequence")
    assert seq["lost_by_device"] == dict(lost)
    assert "lost" in gateway.tail(400) and gateway.alive
