"""Per-device health: offline after N failures, back online, probe backoff, counters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.health import DeviceHealth


def test_starts_online_at_poll_rate() -> None:
    h = DeviceHealth(poll=1.0)
    assert h.online
    assert h.next_interval() == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_offline_after_n_failures_exactly_once(n: int) -> None:
    h = DeviceHealth(poll=1.0, offline_after=n)
    went_offline = [h.failure("timeout") for _ in range(n + 10)]
    assert went_offline == [False] * (n - 1) + [True] + [False] * 10
    assert not h.online
    assert h.failures == n + 10


def test_success_before_threshold_resets_the_count() -> None:
    h = DeviceHealth(poll=1.0, offline_after=3)
    assert [h.failure("timeout"), h.failure("timeout")] == [False, False]
    assert h.success() is False  # was never offline
    assert [h.failure("timeout"), h.failure("timeout")] == [False, False]
    assert h.online
    assert h.failure("timeout") is True


def test_back_online_exactly_once() -> None:
    h = DeviceHealth(poll=1.0, offline_after=2)
    h.failure("timeout")
    h.failure("timeout")
    assert not h.online
    assert [h.success() for _ in range(4)] == [True, False, False, False]
    assert h.online
    assert (h.failures, h.probes) == (0, 0)
    assert h.next_interval() == 1.0


def test_offline_again_after_recovery_reports_again() -> None:
    h = DeviceHealth(poll=1.0, offline_after=1)
    assert h.failure("io") is True
    assert h.success() is True
    assert h.failure("io") is True


def test_probe_interval_doubles_up_to_probe_max() -> None:
    h = DeviceHealth(poll=0.5, offline_after=1, probe_max=10.0)
    h.failure("timeout")
    intervals = [h.next_interval()]
    for _ in range(8):
        h.failure("timeout")  # each failed probe
        intervals.append(h.next_interval())
    assert intervals == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    h.success()
    assert h.next_interval() == 0.5


def test_probe_interval_is_capped_after_very_many_failures() -> None:
    h = DeviceHealth(poll=1.0, offline_after=1, probe_max=1e9)
    for _ in range(1000):
        h.failure("timeout")
    assert h.next_interval() == 2.0**16  # exponent capped: no overflow, bounded wait
    assert h.next_interval() <= h.probe_max


def test_counters_by_kind() -> None:
    h = DeviceHealth(poll=1.0, offline_after=100)
    for kind in ["timeout", "timeout", "exception", "io", "crc", "timeout"]:
        h.failure(kind)
    h.success()
    h.success()
    assert h.counters == {"polls": 8, "ok": 2, "timeouts": 3, "exceptions": 1, "io_errors": 2,
                          "partial": 0}


def test_counters_are_per_device() -> None:
    a, b = DeviceHealth(poll=1.0), DeviceHealth(poll=1.0)
    a.failure("timeout")
    assert b.counters["timeouts"] == 0


@given(outcomes=st.lists(st.booleans(), max_size=200), offline_after=st.integers(1, 6),
       probe_max=st.floats(1.0, 600.0))
def test_transitions_alternate(outcomes: list[bool], offline_after: int, probe_max: float) -> None:
    h = DeviceHealth(poll=1.0, offline_after=offline_after, probe_max=probe_max)
    transitions = []
    run = 0
    for ok in outcomes:
        if ok:
            if h.success():
                transitions.append("online")
            run = 0
        else:
            run += 1
            if h.failure("timeout"):
                transitions.append("offline")
                assert run == offline_after
        assert h.online == (run < offline_after)
        assert 0 < h.next_interval() <= max(1.0, probe_max)
    # Offline and online strictly alternate, starting with offline.
    assert transitions == ["offline", "online"] * (len(transitions) // 2) + (
        ["offline"] if len(transitions) % 2 else [])
    assert h.counters["polls"] == len(outcomes)
    assert h.counters["ok"] + h.counters["timeouts"] == len(outcomes)
