"""Parking status model: unknown after silence, closed spots, transitions, flapping, alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.parking.config import ParkingConfigError, load_parking_config
from collector.parking.model import Changes, ParkingModel, SpotStatus, haversine_m

MIN = 60_000
T0 = 1_760_000_000_000
CFG: dict[str, Any] = {
    "heartbeat": "10min",
    "alerts": {"low_battery_mv": 3300, "flapping_changes_per_hour": 4, "mag_jump_mg": 300,
               "mag_jump_quiet": "30min"},
    "zones": [
        {"id": "renmin-n", "name": "Renmin Rd north", "lat": 34.7466, "lon": 113.6253,
         "sensors": ["1001-1004"], "closed": ["pk-1004"]},
        {"id": "lot-7", "name": "Lot 7", "kind": "offStreet", "lat": 34.75, "lon": 113.63,
         "capacity": 5, "spots": ["pk-2001", "pk-2002"], "heartbeat": "1h"},
    ],
}


def model() -> ParkingModel:
    """A model over the two test zones."""
    return ParkingModel(load_parking_config(CFG))


def seen(m: ParkingModel, device: str, ts: int, occupied: bool | None = None,
         now: int | None = None, **values: Any) -> Changes:
    """Feed one reading; return the changes."""
    out = Changes()
    if occupied is not None:
        values["occupied"] = occupied
    m.observe(device, ts, values, ts if now is None else now, out)
    return out


def counts(m: ParkingModel, zone: str) -> tuple[int, int, int, int, int]:
    """(total, available, occupied, unknown, closed) of a zone."""
    z = m.zones[zone]
    return z.total, z.available, z.occupied, z.unknown, z.closed


def test_initial_state_is_unknown_never_free() -> None:
    m = model()
    assert counts(m, "renmin-n") == (4, 0, 0, 3, 1)
    assert counts(m, "lot-7") == (5, 0, 0, 5, 0)  # 3 bays of capacity have no sensor
    assert m.spots["pk-1004"].status is SpotStatus.CLOSED


def test_transitions_update_zone_counts_incrementally() -> None:
    m = model()
    out = seen(m, "pk-1001", T0, True)
    assert [(t.old, t.new) for t in out.transitions] == [(SpotStatus.UNKNOWN,
                                                          SpotStatus.OCCUPIED)]
    seen(m, "pk-1002", T0, False)
    seen(m, "pk-1003", T0, False)
    assert counts(m, "renmin-n") == (4, 2, 1, 0, 1)
    out = seen(m, "pk-1001", T0 + MIN, False)
    assert counts(m, "renmin-n") == (4, 3, 0, 0, 1)
    assert out.zones == {"renmin-n"} and m.zones["renmin-n"].updated == T0 + MIN
    assert seen(m, "pk-1001", T0 + 2 * MIN, False).transitions == []  # heartbeat, no change


def test_silent_sensor_becomes_unknown_and_comes_back() -> None:
    m = model()
    seen(m, "pk-1001", T0, False)
    seen(m, "pk-1002", T0 + 5 * MIN, True)
    out = Changes()
    m.tick(T0 + 20 * MIN - 1, out)  # 2 x 10 min not yet over for either
    assert out.transitions == []
    m.tick(T0 + 20 * MIN, out)
    assert [(t.spot, t.new) for t in out.transitions] == [("pk-1001", SpotStatus.UNKNOWN)]
    assert [(a.spot, a.kind, a.raised) for a in out.alerts] == [("pk-1001", "silent", True)]
    assert counts(m, "renmin-n") == (4, 0, 1, 2, 1)
    back = seen(m, "pk-1001", T0 + 21 * MIN, False)
    assert [(a.kind, a.raised) for a in back.alerts] == [("silent", False)]
    assert counts(m, "renmin-n") == (4, 1, 1, 1, 1)


def test_zone_heartbeat_sets_the_silence_limit() -> None:
    m = model()
    seen(m, "pk-2001", T0, False)
    out = Changes()
    m.tick(T0 + 119 * MIN, out)
    assert m.spots["pk-2001"].status is SpotStatus.FREE
    m.tick(T0 + 120 * MIN, out)
    assert m.spots["pk-2001"].status is SpotStatus.UNKNOWN


def test_a_late_replayed_report_neither_overrides_nor_revives() -> None:
    m = model()
    seen(m, "pk-1001", T0 + 10 * MIN, True)
    assert seen(m, "pk-1001", T0, False).transitions == []  # older than what we know
    assert m.spots["pk-1001"].status is SpotStatus.OCCUPIED
    out = seen(m, "pk-1002", T0, True, now=T0 + 30 * MIN)  # arrives after its silence limit
    assert out.transitions == [] and m.spots["pk-1002"].status is SpotStatus.UNKNOWN


def test_closed_spot_stays_closed_but_is_still_monitored() -> None:
    m = model()
    out = seen(m, "pk-1004", T0, True, battery_mv=3100)
    assert out.transitions == [] and m.spots["pk-1004"].status is SpotStatus.CLOSED
    assert [(a.kind, a.raised) for a in out.alerts] == [("low_battery", True)]


def test_low_battery_clears_with_hysteresis() -> None:
    m = model()
    kinds = []
    for i, mv in enumerate((3350, 3290, 3310, 3399, 3400)):
        out = seen(m, "pk-1001", T0 + i * MIN, False, battery_mv=mv)
        kinds += [(a.kind, a.raised, mv) for a in out.alerts]
    assert kinds == [("low_battery", True, 3290), ("low_battery", False, 3400)]


def test_flapping_is_raised_above_n_changes_per_hour_and_clears_later() -> None:
    m = model()
    raised = []
    for i in range(6):
        out = seen(m, "pk-1002", T0 + i * MIN, i % 2 == 0)
        raised += [(a.kind, a.raised) for a in out.alerts]
    assert raised == [("flapping", True)]  # 5 changes > 4 per hour
    out = Changes()
    m.tick(T0 + 30 * MIN, out)
    assert [a.kind for a in out.alerts] == ["silent"]
    m.tick(T0 + 64 * MIN, out)  # at most 2 changes left in the last hour
    assert [(a.kind, a.raised) for a in out.alerts[1:]] == [("flapping", False)]


def test_magnetic_jump_without_occupancy_change() -> None:
    m = model()
    seen(m, "pk-1003", T0, False, mag_x=200, mag_y=-150, mag_z=400)
    out = seen(m, "pk-1003", T0 + MIN, False, mag_x=210, mag_y=-150, mag_z=405)
    assert out.alerts == []
    out = seen(m, "pk-1003", T0 + 2 * MIN, False, mag_x=900, mag_y=-150, mag_z=400)
    assert [(a.kind, a.raised, a.value) for a in out.alerts] == [("magnetic_jump", True, 690)]
    out = seen(m, "pk-1003", T0 + 3 * MIN, True, mag_x=2000, mag_y=0, mag_z=0)
    assert out.alerts == []  # a jump with a change is a car, not interference
    tick = Changes()
    m.tick(T0 + 20 * MIN, tick)
    assert tick.alerts == []  # 18 min without another jump: not quiet long enough
    m.tick(T0 + 32 * MIN, tick)
    assert [(a.kind, a.raised) for a in tick.alerts] == [("silent", True),
                                                         ("magnetic_jump", False)]


def test_a_magnetic_jump_on_one_axis_sent_by_exception_is_seen() -> None:
    # A gateway reporting by exception sends only the axes that moved (and no occupancy when
    # it did not change): the model keeps the other axes from the last report.
    m = model()
    seen(m, "pk-1003", T0, False, mag_x=200, mag_y=-150, mag_z=400)
    assert seen(m, "pk-1003", T0 + MIN, send_counter=2).alerts == []
    out = seen(m, "pk-1003", T0 + 2 * MIN, mag_z=720)
    assert [(a.kind, a.raised, a.value) for a in out.alerts] == [("magnetic_jump", True, 320)]
    assert m.spots["pk-1003"].mag == (200, -150, 720)
    assert m.spots["pk-1003"].occupied is False
    fresh = model()  # no full field known yet (a restarted collector): nothing to compare
    assert seen(fresh, "pk-1003", T0, False, mag_z=9000).alerts == []
    assert fresh.spots["pk-1003"].mag is None


def test_unmapped_sensor_is_tracked_but_in_no_zone() -> None:
    m = model()
    out = seen(m, "pk-9999", T0, True)
    assert m.spots["pk-9999"].zone is None and out.zones == set()
    assert m.is_parking("pk-9999") and not m.is_parking("lift-1")


def test_restore_counts_spots_again() -> None:
    m = model()
    m.restore({"spot_id": "pk-1001", "occupied": True, "last_ts": T0, "since": T0}, set(),
              T0 + MIN)
    m.restore({"spot_id": "pk-1002", "occupied": False, "last_ts": T0 - 60 * MIN}, {"silent"},
              T0 + MIN)
    m.start_watching()
    assert counts(m, "renmin-n") == (4, 0, 1, 2, 1)
    out = seen(m, "pk-1002", T0 + 2 * MIN, False)
    assert [(a.kind, a.raised) for a in out.alerts] == [("silent", False)]


def test_near_lists_zones_with_free_spaces_nearest_first() -> None:
    m = model()
    seen(m, "pk-1001", T0, False)
    seen(m, "pk-2001", T0, False)
    hits = m.near(34.7466, 113.6253, 2000)
    assert [z.id for _, z in hits] == ["renmin-n", "lot-7"]
    assert hits[0][0] == pytest.approx(0, abs=0.01)
    assert hits[1][0] == pytest.approx(haversine_m(34.7466, 113.6253, 34.75, 113.63))
    assert [z.id for _, z in m.near(34.7466, 113.6253, 100)] == ["renmin-n"]
    seen(m, "pk-1001", T0 + MIN, True)
    assert [z.id for _, z in m.near(34.7466, 113.6253, 2000)] == ["lot-7"]


def test_haversine_known_distance() -> None:
    # One degree of latitude is ~111.2 km.
    assert haversine_m(34.0, 113.0, 35.0, 113.0) == pytest.approx(111_195, rel=1e-3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pk-1001", "pk-1002", "pk-1003", "pk-1004"]),
                          st.integers(0, 90), st.booleans() | st.none()), max_size=40),
       st.integers(0, 120))
def test_incremental_counts_equal_a_full_recount(events: list[tuple[str, int, bool | None]],
                                                 tick_at: int) -> None:
    m = model()
    for device, minute, occupied in sorted(events, key=lambda e: e[1]):
        seen(m, device, T0 + minute * MIN, occupied)
    m.tick(T0 + tick_at * MIN + 90 * MIN, Changes())
    z = m.zones["renmin-n"]
    statuses = [s.status for s in m.spots.values() if s.zone == "renmin-n"]
    assert all(s.status is s.derived_status() for s in m.spots.values())
    for status in SpotStatus:
        assert z.counts[status] == statuses.count(status)
    assert z.available + z.occupied + z.unknown + z.closed == z.total


# --- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("zones", "message"), [
    ([{"id": "a", "lat": 1, "lon": 1, "spots": ["pk-1"]},
      {"id": "b", "lat": 1, "lon": 1, "sensors": ["1-3"]}], "already in zone 'a'"),
    ([{"id": "a", "lat": 1, "lon": 1, "spots": ["pk-1"], "closed": ["pk-2"]}],
     "not spots of this zone"),
    ([{"id": "a", "lat": 1, "lon": 1, "sensors": ["1-3"], "capacity": 2}], "less than its 3"),
    ([{"id": "a", "lat": 91, "lon": 1}], "zones.0.lat"),
    ([{"id": "a", "lat": 1, "lon": 1, "sensors": ["x-3"]}], "not a sensor id range"),
])
def test_config_errors_name_the_key(zones: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ParkingConfigError, match=message):
        load_parking_config({"zones": zones}, "collector.toml [parking]")


def test_config_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "parking.toml"
    path.write_text('[parking]\nheartbeat = "30min"\n[[parking.zones]]\nid = "z"\nlat = 1.0\n'
                    'lon = 2.0\nsensors = ["10-12"]\n')
    cfg = load_parking_config(path)
    assert cfg.heartbeat == 1800 and cfg.spots_of(cfg.zones[0]) == ["pk-10", "pk-11", "pk-12"]
    path.write_text("[parking\n")
    with pytest.raises(ParkingConfigError, match="not valid TOML"):
        load_parking_config(path)


def test_numbers_a_spot_cannot_hold_are_left_unknown_not_raised() -> None:
    # A spot's numbers live in 64-bit columns: a value beyond them (or not finite) from a
    # foreign gateway is not kept, and the rest of the report still counts.
    m = model()
    out = seen(m, "pk-1001", T0, True, battery_mv=1e19, rssi=float("nan"), mag_x=2**70,
               mag_y=0, mag_z=0)
    spot = m.spots["pk-1001"]
    assert spot.status is SpotStatus.OCCUPIED and [t.new for t in out.transitions] == ["occupied"]
    assert spot.battery_mv is None and spot.rssi is None and spot.mag is None
    seen(m, "pk-1001", T0 + MIN, True, battery_mv=3600, rssi=-90, mag_x=1, mag_y=2, mag_z=3)
    assert (spot.battery_mv, spot.rssi, spot.mag, spot.last_ts) == (3600, -90, (1, 2, 3),
                                                                     T0 + MIN)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "remove", "pop"]), st.integers(0, 7)),
                max_size=60))
def test_the_silence_queue_keeps_report_order_like_an_ordered_dict(
        ops: list[tuple[str, int]]) -> None:
    from collections import OrderedDict

    from collector.parking.model import SilenceQueue, SpotColumns

    cols = SpotColumns()
    spots = [cols.new(f"pk-{i}", None, 1) for i in range(8)]
    queue, ref = SilenceQueue(cols), OrderedDict[int, None]()
    for op, i in ops:
        if op == "push":
            queue.push(spots[i]._row)
            ref.pop(i, None)
            ref[i] = None
        elif op == "remove" and i in ref:
            queue.remove(spots[i]._row)
            del ref[i]
        elif op == "pop" and ref:
            assert queue.front() == spots[next(iter(ref))]
            queue.remove(queue.front()._row)
            ref.popitem(last=False)
        assert [s.id for s in queue] == [f"pk-{i}" for i in ref]
        assert bool(queue) == bool(ref)


def test_views_of_one_spot_share_its_state_and_an_unzoned_sensor_gets_a_row() -> None:
    m = model()
    a, b = m.spots["pk-1001"], m.spots["pk-1001"]
    assert a == b and hash(a) == hash(b) and a != m.spots["pk-1002"]
    seen(m, "pk-1001", T0, occupied=True, battery_mv=3600)
    assert (b.occupied, b.status, b.battery_mv, b.silent) == (True, SpotStatus.OCCUPIED, 3600,
                                                              False)
    assert m.spots["pk-1004"].closed and m.spots["pk-1004"].status is SpotStatus.CLOSED
    seen(m, "pk-9999", T0, occupied=False)  # reporting, in no zone: tracked, counted nowhere
    stray = m.spots["pk-9999"]
    assert (stray.zone, stray.occupied, stray.status) == (None, False, SpotStatus.FREE)
    assert len(m.spots) == 7 and "pk-9999" in m.spots and list(m.spots)[-1] == "pk-9999"
    with pytest.raises(KeyError):
        m.spots["pk-0000"]
    with pytest.raises(ValueError, match="exists"):
        m.columns.new("pk-1001", None, 1)


def test_a_spot_costs_under_280_bytes_of_heap() -> None:
    """300,000 spots: an object per spot took ~336 bytes each (96 MiB); a row ~241."""
    import tracemalloc

    n = 20_000
    cfg = load_parking_config({"zones": [
        {"id": f"z{z}", "lat": 34.7, "lon": 113.6,
         "sensors": [f"{100_000 + z * 100}-{100_000 + z * 100 + 99}"]} for z in range(n // 100)]})
    tracemalloc.start()
    try:
        m = ParkingModel(cfg)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(m.spots) == n and m.spots["pk-100000"].status is SpotStatus.UNKNOWN
    assert held / n < 280, f"{held / n:.0f} bytes per spot"
