"""A started `collector run` settles its heap: what it loaded at start is out of the garbage
collector's sight, young collections run every 50,000 allocations, not every 700, and health
shows it with the process's figures (as a gateway reports its own)."""

from __future__ import annotations

import pytest

from citygate.rig import Broker, collector_health
from collector.memory import GC_THRESHOLDS
from hil_tests.conftest import Procs

pytestmark = pytest.mark.hil


def test_a_started_collector_has_frozen_its_start_up_heap(broker: Broker, procs: Procs) -> None:
    _proc, base = procs.collector(broker)
    health = collector_health(base)
    assert health is not None
    process = health["process"]
    assert process["gc_thresholds"] == list(GC_THRESHOLDS)
    assert process["gc_frozen"] > 100_000  # modules, schema, features: all of start-up
    assert len(process["gc_collections"]) == 3
    assert 30 * 2**20 < process["process_rss_bytes"] < 1024 * 2**20
