"""Outbox quotas: the oldest telemetry is evicted (events never), and every eviction is
reported as a data gap per device — merged, so a long outage adds one record per device."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from devices.contract import DATA, EVENTS
from devices.model import Action, Event, Reading, Severity
from edge.outbox import Outbox, Pending, Quota

T0 = 1_763_000_000_000


class Clock:
    """A settable wall clock in epoch ms."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def reading(i: int, device: str) -> Reading:
    return Reading(device, T0 + i * 1000, {"floor": i % 18, "trip_count": i})


def messages(ob: Outbox) -> list[Pending]:
    return ob.next_messages(100_000, set())


def gap_events(ob: Outbox) -> list[dict[str, Any]]:
    out = []
    for m in messages(ob):
        if m.channel == EVENTS:
            out += [e for e in orjson.loads(m.body) if e["kind"] == "data_gap"]
    return out


def stored_readings(ob: Outbox) -> list[tuple[str, int]]:
    return [(r["device"], r["ts"]) for m in messages(ob) if m.channel == DATA
            for r in orjson.loads(m.body)]


def fill(ob: Outbox, start: int, count: int, devices: tuple[str, ...] = ("a", "b")) -> None:
    """One message per commit with a reading of each device."""
    for i in range(start, start + count):
        ob.add([reading(i, d) for d in devices])
        ob.commit()


def test_byte_cap_evicts_oldest_data_and_reports_one_gap_per_device(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", quota=Quota(max_bytes=2000), clock=Clock()).open()
    ob.add([Event("a", T0, "trapped_passenger", Action.RAISE, Severity.CRITICAL)])
    fill(ob, 0, 60)
    assert ob.stats()["bytes"] <= 2000 + 400  # at most one message over, before eviction
    evicted = ob.counters["evicted_readings"]
    assert evicted > 40
    kept = stored_readings(ob)
    # The newest readings stay; every evicted one is the oldest of its device.
    assert kept == sorted(kept, key=lambda r: r[1])
    assert len(kept) + evicted == 120
    # Still over its limit after the last commit: the gaps are merged, not yet events.
    assert gap_events(ob) == []
    events = [m for m in messages(ob) if m.channel == EVENTS]
    assert len(events) == 1  # the trapped passenger survived every eviction
    ob.quota = Quota()  # the link is back and the backlog drained: no more evictions
    ob.enforce_quota()
    ob.add([reading(1000, "a")])
    ob.commit()
    gaps = {g["device"]: g["evidence"] for g in gap_events(ob)}
    assert set(gaps) == {"a", "b"}
    assert sum(g["count"] for g in gaps.values()) == evicted
    for device, g in gaps.items():
        first_kept = min(ts for d, ts in kept if d == device)
        assert g["from"] == T0 and g["to"] == first_kept - 1000, (device, g)
        assert g["reason"] == "quota"
    ob.commit()
    assert len(gap_events(ob)) == 2  # taken once, not again
    ob.close()


def test_gaps_survive_a_restart_before_they_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, quota=Quota(max_bytes=1500), clock=Clock()).open()
    fill(ob, 0, 40)
    evicted = ob.counters["evicted_readings"]
    ob._db.close()  # type: ignore[union-attr]  # a crash: no orderly close
    again = Outbox(path, quota=Quota(), clock=Clock()).open()
    again.commit()
    again.add([reading(99, "a")])
    again.commit()
    assert sum(g["evidence"]["count"] for g in gap_events(again)) == evicted
    again.close()


def test_max_age_evicts_old_data_with_its_reason(tmp_path: Path) -> None:
    clock = Clock()
    ob = Outbox(tmp_path / "o.sqlite", quota=Quota(max_age_ms=10_000), clock=clock).open()
    fill(ob, 0, 5)
    clock.now += 60_000
    assert ob.enforce_quota() == 10
    ob.quota = Quota()
    ob.enforce_quota()
    ob.add([reading(100, "a")])
    ob.commit()
    assert {g["evidence"]["reason"] for g in gap_events(ob)} == {"max_age"}
    ob.close()


def test_messages_awaiting_a_puback_are_never_evicted(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", quota=Quota(max_bytes=10**9), clock=Clock()).open()
    fill(ob, 0, 10)
    first = messages(ob)[0].seq
    ob.quota = Quota(max_bytes=1)
    ob.enforce_quota(protect=frozenset({first}))
    assert [m.seq for m in messages(ob)] == [first]
    ob.close()


@pytest.mark.parametrize(("quota", "free", "reason"), [
    (Quota(max_bytes=1500, max_age_ms=30 * 86_400_000), None, "quota"),
    (Quota(min_free_bytes=10**6, max_age_ms=30 * 86_400_000), 0, "min_free_disk"),
])
def test_gap_reason_names_the_limit_that_evicted(tmp_path: Path, quota: Quota,
                                                 free: int | None, reason: str) -> None:
    ob = Outbox(tmp_path / "o.sqlite", quota=Quota(), clock=Clock()).open()
    fill(ob, 0, 20)
    ob.quota = quota
    assert ob.enforce_quota(free_bytes=free) > 0
    ob.quota = Quota()
    ob.enforce_quota()
    ob.add([reading(100, "a")])
    ob.commit()
    assert {g["evidence"]["reason"] for g in gap_events(ob)} == {reason}
    ob.close()


def test_acknowledged_messages_are_not_evicted_nor_reported_lost(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", quota=Quota(max_bytes=10**9), clock=Clock()).open()
    fill(ob, 0, 10)
    for m in messages(ob)[:4]:  # delivered: the rows go at the next commit
        ob.ack(m.seq)
    ob.quota = Quota(max_bytes=1)
    assert ob.enforce_quota() == 12  # the 6 messages not delivered, 2 readings each
    ob.quota = Quota()
    ob.enforce_quota()
    ob.add([reading(100, "a")])
    ob.commit()
    assert {g["device"]: g["evidence"]["count"] for g in gap_events(ob)} == {"a": 6, "b": 6}
    assert stored_readings(ob) == [("a", T0 + 100_000)]
    ob.close()


def test_low_disk_evicts_until_enough_is_free(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", quota=Quota(min_free_bytes=1000), clock=Clock()).open()
    fill(ob, 0, 20)
    before = ob.stats()["bytes"]
    ob.enforce_quota(free_bytes=500)
    assert before - ob.stats()["bytes"] >= 500
    assert ob.enforce_quota(free_bytes=10_000) == 0
    ob.close()


def test_an_eviction_episode_is_logged_once(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox(tmp_path / "o.sqlite", quota=Quota(max_bytes=1500), clock=Clock()).open()
    with caplog.at_level(logging.INFO, logger="edge.outbox"):
        fill(ob, 0, 80)
        ob.quota = Quota()
        ob.enforce_quota()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("over its limits" in m for m in lines) == 1, lines
    assert sum("back under its limits" in m for m in lines) == 1, lines
    ob.close()
