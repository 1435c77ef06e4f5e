"""Report-on-change filter: first call full, changes only, deadbands, heartbeat snapshots."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from devices.model import Value
from edge.report import ChangeFilter

SNAPSHOT: dict[str, Value] = {
    "floor": 3, "door_closed": True, "speed": 0.0, "service_mode": 1, "machine_room_temp": 24.0,
    "fault_code": None,
}


def test_first_call_reports_everything() -> None:
    f = ChangeFilter(heartbeat=60)
    assert f.select(SNAPSHOT, now=1000.0) == SNAPSHOT


def test_first_call_returns_a_copy() -> None:
    f = ChangeFilter(heartbeat=60)
    values = dict(SNAPSHOT)
    out = f.select(values, now=0.0)
    out["floor"] = 99
    values["speed"] = 1.0
    assert f.select(dict(SNAPSHOT), now=1.0) == {}


def test_unchanged_values_report_nothing() -> None:
    f = ChangeFilter(heartbeat=60)
    f.select(SNAPSHOT, now=0.0)
    for t in range(1, 60):
        assert f.select(dict(SNAPSHOT), now=float(t)) == {}


def test_only_changed_values_are_reported() -> None:
    f = ChangeFilter(heartbeat=60)
    f.select(SNAPSHOT, now=0.0)
    new = {**SNAPSHOT, "floor": 4, "door_closed": False}
    assert f.select(new, now=1.0) == {"floor": 4, "door_closed": False}
    assert f.select(new, now=2.0) == {}
    assert f.select(SNAPSHOT, now=3.0) == {"floor": 3, "door_closed": True}


def test_value_becoming_none_or_coming_back_is_a_change() -> None:
    f = ChangeFilter(heartbeat=60, deadbands={"speed": 0.05})
    f.select(SNAPSHOT, now=0.0)
    assert f.select({**SNAPSHOT, "speed": None}, now=1.0) == {"speed": None}
    assert f.select({**SNAPSHOT, "speed": 0.0}, now=2.0) == {"speed": 0.0}
    assert f.select({**SNAPSHOT, "fault_code": 2}, now=3.0) == {"fault_code": 2}


def test_new_quantity_is_reported() -> None:
    f = ChangeFilter(heartbeat=60)
    f.select({"floor": 1}, now=0.0)
    assert f.select({"floor": 1, "load_percent": 40.0}, now=1.0) == {"load_percent": 40.0}


def test_deadband_respected() -> None:
    f = ChangeFilter(heartbeat=600, deadbands={"machine_room_temp": 0.5})
    f.select(SNAPSHOT, now=0.0)
    assert f.select({**SNAPSHOT, "machine_room_temp": 24.4}, now=1.0) == {}
    assert f.select({**SNAPSHOT, "machine_room_temp": 23.6}, now=2.0) == {}
    assert f.select({**SNAPSHOT, "machine_room_temp": 24.5}, now=3.0) == {
        "machine_room_temp": 24.5}
    # The band is measured from the last value *reported*, so slow drift is still caught.
    assert f.select({**SNAPSHOT, "machine_room_temp": 24.8}, now=4.0) == {}
    assert f.select({**SNAPSHOT, "machine_room_temp": 24.9}, now=5.0) == {}
    assert f.select({**SNAPSHOT, "machine_room_temp": 25.0}, now=6.0) == {
        "machine_room_temp": 25.0}


def test_deadband_only_applies_to_its_quantity() -> None:
    f = ChangeFilter(heartbeat=600, deadbands={"machine_room_temp": 5.0})
    f.select(SNAPSHOT, now=0.0)
    assert f.select({**SNAPSHOT, "speed": 0.01}, now=1.0) == {"speed": 0.01}


def test_deadband_ignores_bools() -> None:
    f = ChangeFilter(heartbeat=600, deadbands={"door_closed": 5.0})
    f.select(SNAPSHOT, now=0.0)
    assert f.select({**SNAPSHOT, "door_closed": False}, now=1.0) == {"door_closed": False}


def test_heartbeat_sends_full_snapshot() -> None:
    f = ChangeFilter(heartbeat=60, deadbands={"machine_room_temp": 0.5})
    f.select(SNAPSHOT, now=100.0)
    assert f.select(SNAPSHOT, now=159.9) == {}
    due = {**SNAPSHOT, "machine_room_temp": 24.1}
    assert f.select(due, now=160.0) == due
    # The heartbeat restarts the period and the deadband reference.
    assert f.select(due, now=161.0) == {}
    assert f.select(due, now=219.9) == {}
    assert f.select(due, now=220.0) == due


def test_changes_do_not_postpone_the_heartbeat() -> None:
    f = ChangeFilter(heartbeat=10)
    f.select({"floor": 0}, now=0.0)
    assert f.select({"floor": 1, "speed": 1.0}, now=1.0) == {"floor": 1, "speed": 1.0}
    for t in range(2, 10):
        assert f.select({"floor": t, "speed": 1.0}, now=float(t)) == {"floor": t}
    assert f.select({"floor": 9, "speed": 1.0}, now=10.0) == {"floor": 9, "speed": 1.0}


def test_forget_forces_full_snapshot() -> None:
    f = ChangeFilter(heartbeat=60)
    f.select(SNAPSHOT, now=0.0)
    assert f.select(SNAPSHOT, now=1.0) == {}
    f.forget()
    assert f.select(SNAPSHOT, now=2.0) == SNAPSHOT
    assert f.select(SNAPSHOT, now=3.0) == {}


@given(
    steps=st.lists(
        st.tuples(st.floats(0, 30), st.fixed_dictionaries({}, optional={
            # Each quantity keeps its kind, as canonical quantities do.
            "a": st.one_of(st.none(), st.floats(-10, 10)),
            "b": st.one_of(st.none(), st.booleans()),
            "c": st.one_of(st.none(), st.integers(-5, 5)),
        })),
        max_size=40,
    ),
    band=st.floats(0, 3),
)
def test_reported_state_tracks_the_device(
    steps: list[tuple[float, dict[str, Value]]], band: float
) -> None:
    """Whatever is sent, a receiver applying the reports stays within the deadband."""
    f = ChangeFilter(heartbeat=60, deadbands={"a": band, "b": band, "c": band})
    receiver: dict[str, Value] = {}
    now = 0.0
    for dt, values in steps:
        now += dt
        out = f.select(values, now)
        assert set(out) <= set(values)
        assert all(out[q] == values[q] or out[q] is values[q] for q in out)
        receiver.update(out)
        for q, v in values.items():
            assert q in receiver
            old = receiver[q]
            if isinstance(v, float | int) and isinstance(old, float | int) \
                    and not isinstance(v, bool) and not isinstance(old, bool) and band:
                assert abs(v - old) < band or v == old
            else:
                assert old == v
