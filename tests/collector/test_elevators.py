"""Lift statistics, risk ranking and the live event stream at the collector."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.auth import Role, create_token
from collector.elevators import install
from collector.elevators.stats import DAY_MS, day_of, rank, risk_of, trips_per_day
from collector.elevators.stream import EventStream
from collector.features import open_store
from collector.store import Accepted, now_ms
from devices.contract import DataEnvelope, EventsEnvelope

NOW = now_ms()


def ev(device: str, kind: str, ts: int, action: str = "raise", code: int | None = None) -> dict:
    return {"device": device, "ts": ts, "kind": kind, "action": action, "severity": "major",
            "code": code}


def events_batch(seq: int, evs: list[dict]) -> Accepted:
    return Accepted("gw-a", EventsEnvelope.model_validate(
        {"v": 1, "gateway": "gw-a", "seq": seq, "sent": NOW, "events": evs}), NOW)


def test_trips_count_increases_per_day_and_ignore_resets() -> None:
    d1, d2 = 20 * DAY_MS + 1000, 21 * DAY_MS + 1000
    samples = [(d1, 105.0), (d1 + 10, 110.0), (d2, 100.0), (d2 + 10, 103.0)]
    assert trips_per_day(samples, 100.0) == {day_of(d1): 10, day_of(d2): 3}
    assert trips_per_day(samples, None) == {day_of(d1): 5, day_of(d2): 3}


def test_risk_parts_are_scored_and_explained() -> None:
    recent = [ev("a", "trapped_passenger", NOW - DAY_MS),
              ev("a", "gbt24476_fault", NOW - 2 * DAY_MS, code=2),
              ev("a", "door_cycling", NOW - 3 * DAY_MS),
              ev("a", "device_offline", NOW - DAY_MS),  # communication, not a lift fault
              ev("a", "trapped_passenger", NOW - 40 * DAY_MS)]  # too old
    r = risk_of("a", recent, NOW)
    assert (r.faults, r.entrapments, r.door_faults, r.last_7_days) == (3, 1, 2, 3)
    assert r.score == 3 + 5 + 4 + 2 * 3
    assert any("entrapment" in line for line in r.explanation)
    assert any("none in the 23 before" in line for line in r.explanation)
    quiet = risk_of("b", [], NOW)
    assert quiet.score == 0 and quiet.explanation == ["no faults in the last 30 days"]
    assert [x.device for x in rank([quiet, r])] == ["a", "b"]


def test_a_falling_fault_rate_adds_no_trend_points() -> None:
    old = [ev("a", "run_timeout", NOW - (10 + i) * DAY_MS) for i in range(10)]
    r = risk_of("a", [*old, ev("a", "run_timeout", NOW - DAY_MS)], NOW)
    assert r.score == 11 and not any("worse" in line for line in r.explanation)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    store.record_state("gw-a", "online", NOW, "", "0.1.0", "b", {
        "lift-1": {"kind": "elevator", "profile": "elevator-gbt24476"},
        "lift-2": {"kind": "elevator", "profile": "elevator-gbt24476"}})
    readings = [{"device": "lift-1", "ts": NOW - 2000 + i, "values": {"trip_count": 100 + i}}
                for i in range(4)]
    store.ingest([Accepted("gw-a", DataEnvelope.model_validate(
        {"v": 1, "gateway": "gw-a", "seq": 1, "sent": NOW, "readings": readings}), NOW)])
    store.ingest([events_batch(2, [ev("lift-2", "trapped_passenger", NOW - 1000),
                                   ev("lift-2", "trapped_passenger", NOW - 500, "clear"),
                                   ev("lift-1", "run_timeout", NOW - 100)])])
    app = create_app(store)
    install(app)
    token = create_token(store.engine, "city-brain", Role.READER)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c
    store.close()


def test_stats_per_day(client: TestClient) -> None:
    out = client.get("/api/v1/elevators/lift-1/stats?days=7").json()
    assert len(out["per_day"]) == 7 and out["per_day"][-1]["date"] == day_of(NOW)
    assert out["totals"]["trips"] == 3
    assert out["totals"]["faults"] == {"run_timeout": 1}
    two = client.get("/api/v1/elevators/lift-2/stats").json()
    assert two["totals"]["entrapments"] == 1 and len(two["per_day"]) == 30
    assert client.get("/api/v1/elevators/nope/stats").status_code == 404


def test_risk_ranking(client: TestClient) -> None:
    out = client.get("/api/v1/elevators/risk").json()
    assert [r["device"] for r in out] == ["lift-2", "lift-1"]
    assert out[0]["entrapments_30d"] == 1 and out[0]["explanation"]


def test_stream_fans_out_events_from_the_writer_thread() -> None:
    stream = EventStream()

    async def main() -> list[dict]:
        lift1 = stream.subscribe(device="lift-1")
        traps = stream.subscribe(kind="trapped_passenger")
        batch = events_batch(1, [ev("lift-1", "run_timeout", NOW),
                                 ev("lift-2", "trapped_passenger", NOW)])
        threading.Thread(target=stream.on_stored, args=([batch],)).start()
        got = [await asyncio.wait_for(lift1.queue.get(), 2),
               await asyncio.wait_for(traps.queue.get(), 2)]
        assert lift1.queue.empty() and traps.queue.empty()
        stream.unsubscribe(lift1)
        stream.unsubscribe(traps)
        return got

    got = asyncio.run(main())
    assert [(e["device"], e["kind"]) for e in got] == [("lift-1", "run_timeout"),
                                                       ("lift-2", "trapped_passenger")]
    assert stream.subscribers == 0 and stream.published == 2


def test_trip_samples_of_many_lifts_equal_one_by_one(tmp_path: Path) -> None:
    from collector.elevators import queries

    store = open_store(f"sqlite:///{tmp_path / 'trips.sqlite'}")
    since = NOW - 5 * DAY_MS
    readings = [{"device": d, "ts": ts, "values": {"trip_count": v}}
                for d, points in {"a": [(since - DAY_MS, 10), (since - 1000, 40), (since, 45),
                                        (NOW - 10, 90)],
                                  "b": [(since + 5, 7)], "c": [(since - 7, 3)]}.items()
                for ts, v in points]
    store.ingest([Accepted("gw-a", DataEnvelope.model_validate(
        {"v": 1, "gateway": "gw-a", "seq": 1, "sent": NOW, "readings": readings}), NOW)])
    many = queries.trip_samples_many(store, ["a", "b", "c", "none"], since, NOW)
    assert many == {d: queries.trip_samples(store, d, since, NOW)
                    for d in ("a", "b", "c", "none")}
    assert many["a"] == (40.0, [(since, 45.0), (NOW - 10, 90.0)])
    store.close()
