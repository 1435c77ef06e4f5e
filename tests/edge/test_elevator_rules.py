"""Edge lift rules: recorded sequences raise and clear each fault once, at the right time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.model import Action, Event, Severity, Value
from devices.profiles import load_profile
from edge.rules import ElevatorRules, ElevatorThresholds, ThresholdError, rules_for

EPOCH_MS = 1_700_000_000_000

# Lift states as the controller shows them (merged over BASE).
BASE: dict[str, Value] = {
    "service_mode": 1, "car_running": False, "direction": 0, "floor": 5, "door_zone": True,
    "door_closed": False, "passenger_present": False, "fault_code": 0, "speed": 0.0,
    "power_supply": 0, "door_lock": False, "safety_circuit": True, "alarm_button": False,
    "brake_open": False, "overload": False,
}
OPEN_AT_LANDING: dict[str, Value] = {"car_running": False, "direction": 0, "speed": 0.0,
                                     "door_zone": True, "door_closed": False}
STOPPED_CLOSED: dict[str, Value] = {"car_running": False, "direction": 0, "speed": 0.0,
                                    "door_zone": True, "door_closed": True, "door_lock": True}
RUNNING_UP: dict[str, Value] = {"car_running": True, "direction": 1, "speed": 1.0,
                                "door_zone": False, "door_closed": True, "door_lock": True,
                                "brake_open": True}
PRESENT: dict[str, Value] = {"passenger_present": True}

State = Mapping[str, Value] | Callable[[float], Mapping[str, Value]]
Samples = list[tuple[float, dict[str, Value]]]


def timeline(phases: list[tuple[float, State]], end: float, period: float = 1.0) -> Samples:
    """Sample a piecewise-constant lift state every `period` seconds from 0 up to `end`."""
    samples: Samples = []
    i, t = 0, 0.0
    while t < end:
        current = [state for start, state in phases if start <= t][-1]
        overrides = current(t) if callable(current) else current
        samples.append((t, {**BASE, **overrides}))
        i += 1
        t = i * period
    return samples


def run(samples: Samples, thresholds: ElevatorThresholds | None = None) -> list[Event]:
    rules = ElevatorRules("lift-1", thresholds)
    events: list[Event] = []
    for t, values in samples:
        events.extend(rules.step(values, t, EPOCH_MS + int(t * 1000)))
    return events


def summary(events: list[Event]) -> list[tuple[str, Action, float]]:
    """(kind, action, seconds) of every event, in order."""
    return [(e.kind, e.action, (e.ts - EPOCH_MS) / 1000) for e in events]


R, C, I = Action.RAISE, Action.CLEAR, Action.INFO  # noqa: E741
LIMITS = ElevatorThresholds(top_floor=10, bottom_floor=1, rated_speed=1.0)


def door_every(seconds: int, extra: Mapping[str, Value]) -> Callable[[float], dict[str, Value]]:
    """Door switch toggling every `seconds` (closed first), on top of `extra`."""
    return lambda t: {**extra, "door_closed": int(t) // seconds % 2 == 0}


def presence_every(seconds: int,
                   extra: Mapping[str, Value]) -> Callable[[float], dict[str, Value]]:
    """Presence sensor toggling every `seconds` (present first), on top of `extra`."""
    return lambda t: {**extra, "passenger_present": int(t) // seconds % 2 == 0}


@dataclass
class Case:
    phases: list[tuple[float, State]]
    end: float
    expected: list[tuple[str, Action, float]]
    period: float = 1.0
    thresholds: ElevatorThresholds = field(default_factory=ElevatorThresholds)


CASES: dict[str, Case] = {
    "trapped_passenger": Case(
        [(0, OPEN_AT_LANDING), (10, {**STOPPED_CLOSED, **PRESENT}),
         (100, {**OPEN_AT_LANDING, **PRESENT})], 130,
        [("trapped_passenger", R, 70), ("trapped_passenger", C, 103)]),
    "trapped_passenger_half_hz": Case(
        [(0, OPEN_AT_LANDING), (10, {**STOPPED_CLOSED, **PRESENT}),
         (100, {**OPEN_AT_LANDING, **PRESENT})], 130,
        [("trapped_passenger", R, 70), ("trapped_passenger", C, 104)], period=2.0),
    "trapped_presence_confirmed_late": Case(  # sensor sees the passenger only after 65 s
        [(0, STOPPED_CLOSED), (65, {**STOPPED_CLOSED, **PRESENT}), (120, OPEN_AT_LANDING)],
        130, [("trapped_passenger", R, 75), ("trapped_passenger", C, 123)]),
    "trapped_released_by_absence": Case(
        [(0, {**STOPPED_CLOSED, **PRESENT}), (80, STOPPED_CLOSED)], 160,
        [("trapped_passenger", R, 60), ("trapped_passenger", C, 143)]),
    "trapped_outside_zone": Case(
        [(0, {**RUNNING_UP, **PRESENT}), (10, {**STOPPED_CLOSED, **PRESENT, "door_zone": False}),
         (150, {**OPEN_AT_LANDING, **PRESENT})], 170,
        [("stopped_outside_door_zone", R, 55), ("trapped_passenger", R, 70),
         ("trapped_passenger", C, 153), ("stopped_outside_door_zone", C, 153)]),
    "stopped_outside_door_zone": Case(
        [(0, {**STOPPED_CLOSED, "door_zone": False}), (60, RUNNING_UP)], 70,
        [("stopped_outside_door_zone", R, 45), ("stopped_outside_door_zone", C, 63)]),
    "overtravel_top_passed_landing": Case(
        [(0, {**RUNNING_UP, "floor": 9}), (5, {**RUNNING_UP, "floor": 10, "door_zone": True}),
         (6, {**RUNNING_UP, "floor": 10}), (7, {**STOPPED_CLOSED, "floor": 10, "door_zone": False}),
         (30, {**STOPPED_CLOSED, "floor": 10})], 40,
        [("overtravel_top", R, 8), ("overtravel_top", C, 33)], thresholds=LIMITS),
    "overtravel_top_beyond_floor": Case(
        [(0, {**STOPPED_CLOSED, "floor": 10}), (5, {**STOPPED_CLOSED, "floor": 11}),
         (20, {**STOPPED_CLOSED, "floor": 10})], 30,
        [("overtravel_top", R, 7), ("overtravel_top", C, 23)], thresholds=LIMITS),
    "overtravel_bottom": Case(
        [(0, {**STOPPED_CLOSED, "floor": 1}), (5, {**STOPPED_CLOSED, "floor": 0}),
         (20, {**STOPPED_CLOSED, "floor": 1})], 30,
        [("overtravel_bottom", R, 7), ("overtravel_bottom", C, 23)], thresholds=LIMITS),
    "overtravel_bottom_basement": Case(
        [(0, {**STOPPED_CLOSED, "floor": -2}), (5, {**STOPPED_CLOSED, "floor": -3}),
         (20, {**STOPPED_CLOSED, "floor": -2})], 30,
        [("overtravel_bottom", R, 7), ("overtravel_bottom", C, 23)],
        thresholds=ElevatorThresholds(bottom_floor=-2)),
    "overspeed": Case(
        [(0, RUNNING_UP), (5, {**RUNNING_UP, "speed": 1.3}), (10, RUNNING_UP),
         (15, STOPPED_CLOSED)], 20,
        [("overspeed", R, 6), ("overspeed", C, 13)], thresholds=LIMITS),
    "door_open_while_running": Case(
        [(0, RUNNING_UP), (2, {**RUNNING_UP, "door_closed": False, "door_lock": False}),
         (35, OPEN_AT_LANDING)], 45,
        [("door_open_while_running", R, 32), ("door_open_while_running", C, 38)]),
    "moving_with_door_open": Case(
        [(0, OPEN_AT_LANDING),
         (5, {**OPEN_AT_LANDING, "car_running": True, "direction": 1, "speed": 0.2}),
         (40, OPEN_AT_LANDING)], 50,
        [("moving_with_door_open", R, 35), ("moving_with_door_open", C, 43)]),
    "moving_with_door_open_drift": Case(  # brake slipping: controller does not say "running"
        [(0, OPEN_AT_LANDING), (5, {**OPEN_AT_LANDING, "speed": 0.3}), (40, OPEN_AT_LANDING)],
        50, [("moving_with_door_open", R, 35), ("moving_with_door_open", C, 43)]),
    "run_timeout": Case(
        [(0, RUNNING_UP), (60, STOPPED_CLOSED)], 70,
        [("run_timeout", R, 45), ("run_timeout", C, 63)]),
    "run_timeout_not_in_inspection": Case(
        [(0, {**RUNNING_UP, "service_mode": 2, "speed": 0.3}), (100, STOPPED_CLOSED)], 110,
        [("service_mode_change", I, 0), ("service_mode_change", I, 100)]),
    "door_cycling": Case(
        [(0, door_every(3, STOPPED_CLOSED)), (40, RUNNING_UP), (50, STOPPED_CLOSED)], 60,
        [("door_cycling", R, 27), ("door_cycling", C, 43)]),
    "door_cycling_quiet": Case(
        [(0, door_every(3, STOPPED_CLOSED)), (30, STOPPED_CLOSED)], 100,
        [("door_cycling", R, 27), ("door_cycling", C, 90)]),
    "power_loss_supply": Case(
        [(0, STOPPED_CLOSED), (10, {**STOPPED_CLOSED, "power_supply": 1}),
         (30, STOPPED_CLOSED)], 40,
        [("power_loss", R, 12), ("power_loss", C, 33)]),
    "power_loss_code_41": Case(
        [(0, STOPPED_CLOSED), (10, {**STOPPED_CLOSED, "fault_code": 41}),
         (30, {**STOPPED_CLOSED, "fault_code": 40})], 40,
        [("gbt24476_event", I, 10), ("power_loss", R, 12), ("gbt24476_event", I, 30),
         ("power_loss", C, 33)]),
    "power_loss_code_41_without_supply_point": Case(
        [(0, {**STOPPED_CLOSED, "power_supply": None}),
         (10, {**STOPPED_CLOSED, "power_supply": None, "fault_code": 41}),
         (20, {**STOPPED_CLOSED, "power_supply": None}),  # 0 is not "back to normal"
         (30, {**STOPPED_CLOSED, "power_supply": None, "fault_code": 40})], 40,
        [("gbt24476_event", I, 10), ("power_loss", R, 12), ("gbt24476_event", I, 30),
         ("power_loss", C, 33)]),
    "controller_faults": Case(
        [(0, STOPPED_CLOSED), (5, {**STOPPED_CLOSED, "fault_code": 2}),
         (10, {**STOPPED_CLOSED, "fault_code": 3}), (15, STOPPED_CLOSED)], 20,
        [("gbt24476_fault", R, 5), ("gbt24476_fault", C, 10), ("gbt24476_fault", R, 10),
         ("gbt24476_fault", C, 15)]),
    "alarm_button_momentary": Case(
        [(0, STOPPED_CLOSED), (5, {**STOPPED_CLOSED, "alarm_button": True}),
         (6, STOPPED_CLOSED)], 20,
        [("alarm_button", R, 5), ("alarm_button", C, 9)]),
    "alarm_code_90": Case(
        [(0, STOPPED_CLOSED), (5, {**STOPPED_CLOSED, "fault_code": 90}), (8, STOPPED_CLOSED)],
        20, [("alarm_button", R, 5), ("alarm_button", C, 11)]),
    "service_modes": Case(
        [(0, STOPPED_CLOSED), (5, {**STOPPED_CLOSED, "service_mode": 3}),
         (10, STOPPED_CLOSED)], 20,
        [("service_mode_change", I, 5), ("service_mode_change", I, 10)]),
    # Things that must NOT raise.
    "flapping_presence_stopped_closed": Case(
        [(0, presence_every(2, STOPPED_CLOSED))], 600, []),
    "flapping_presence_half_hz": Case(
        [(0, presence_every(2, STOPPED_CLOSED))], 600, [], period=2.0),
    "flapping_presence_after_passenger_left": Case(
        [(0, {**OPEN_AT_LANDING, **PRESENT}), (20, presence_every(2, STOPPED_CLOSED))], 600, []),
    "door_chatter_while_running": Case(
        [(0, door_every(1, RUNNING_UP)), (40, STOPPED_CLOSED)], 50, []),
    "door_chatter_while_levelling": Case(
        [(0, door_every(2, {**RUNNING_UP, "door_zone": True, "speed": 0.2})),
         (40, STOPPED_CLOSED)], 50, []),
    "door_chatter_while_running_half_hz": Case(
        [(0, door_every(2, RUNNING_UP)), (40, STOPPED_CLOSED)], 50, [], period=2.0),
    "normal_trip": Case(
        [(0, OPEN_AT_LANDING), (5, STOPPED_CLOSED), (6, RUNNING_UP),
         (30, {**STOPPED_CLOSED, "floor": 10}), (31, {**OPEN_AT_LANDING, "floor": 10})],
        60, [], thresholds=LIMITS),
}


@pytest.mark.parametrize("name", CASES)
def test_recorded_sequence(name: str) -> None:
    case = CASES[name]
    events = run(timeline(case.phases, case.end, case.period), case.thresholds)
    assert summary(events) == case.expected


def test_trapped_outside_zone_carries_evidence() -> None:
    case = CASES["trapped_outside_zone"]
    events = run(timeline(case.phases, case.end))
    raised = next(e for e in events if e.kind == "trapped_passenger" and e.action is R)
    assert raised.severity is Severity.CRITICAL
    assert raised.evidence["outside_door_zone"] is True
    assert raised.evidence["door_zone"] is False
    assert raised.evidence["passenger_present"] is True
    assert "URGENT" in raised.message
    stopped = next(e for e in events if e.kind == "stopped_outside_door_zone")
    assert stopped.code == 4


def test_trapped_in_zone_is_not_urgent() -> None:
    case = CASES["trapped_passenger"]
    raised = run(timeline(case.phases, case.end))[0]
    assert raised.evidence["outside_door_zone"] is False
    assert "URGENT" not in raised.message
    assert raised.mono == 70_000
    assert raised.device == "lift-1"


def test_presence_flicker_does_not_delay_trapped() -> None:
    """A real passenger whose sensor drops out for one sample every 15 s is still found."""

    def sensor(t: float) -> dict[str, Value]:
        return {**STOPPED_CLOSED, "passenger_present": int(t) % 15 != 14}

    events = run(timeline([(0, OPEN_AT_LANDING), (10, sensor)], 120))
    assert summary(events) == [("trapped_passenger", R, 70)]


def test_single_door_flicker_does_not_release_trapped() -> None:
    phases: list[tuple[float, State]] = [
        (0, {**STOPPED_CLOSED, **PRESENT}),
        (80, {**OPEN_AT_LANDING, **PRESENT}),  # one sample of "door open" in the zone
        (81, {**STOPPED_CLOSED, **PRESENT}),
        (100, {**OPEN_AT_LANDING, **PRESENT}),
    ]
    events = run(timeline(phases, 110))
    assert summary(events) == [("trapped_passenger", R, 60), ("trapped_passenger", C, 103)]


def test_controller_fault_events_carry_codes() -> None:
    case = CASES["controller_faults"]
    events = run(timeline(case.phases, case.end))
    assert [(e.action, e.code, e.severity) for e in events] == [
        (R, 2, Severity.MAJOR), (C, 2, Severity.MAJOR), (R, 3, Severity.MAJOR),
        (C, 3, Severity.MAJOR)]
    assert run([(0, {**BASE, "fault_code": 1})])[0].severity is Severity.CRITICAL


def test_service_mode_change_codes() -> None:
    events = run([(float(i), {**BASE, "service_mode": mode})
                  for i, mode in enumerate([1, 0, 2, 3, 4, 5, 6, 1, 7])])
    assert [e.code for e in events] == [42, 43, 44, 45, 46, 47, 40, None]
    assert {e.action for e in events} == {I}
    first = run([(0.0, {**BASE, "service_mode": 4})])
    assert [(e.kind, e.code) for e in first] == [("service_mode_change", 45)]


def test_unrecognised_code_is_reported_once() -> None:
    events = run([(float(t), {**BASE, "fault_code": 23}) for t in range(5)])
    assert [(e.kind, e.action, e.code, e.severity) for e in events] == [
        ("gbt24476_event", I, 23, Severity.WARNING)]


# --- missing values -------------------------------------------------------------------

def blank(samples: Samples, start: float, stop: float,
          make: Callable[[dict[str, Value]], dict[str, Value]] = lambda v: {}) -> Samples:
    """Replace the samples in [start, stop) by what a failed read leaves."""
    return [(t, make(v) if start <= t < stop else v) for t, v in samples]


def unknown(keys: tuple[str, ...]) -> Callable[[dict[str, Value]], dict[str, Value]]:
    return lambda v: {k: (None if k in keys else x) for k, x in v.items()}


def test_empty_snapshots_never_raise() -> None:
    assert run([(float(t), {}) for t in range(600)], LIMITS) == []


def test_all_values_not_available_never_raise() -> None:
    samples: Samples = [(float(t), dict.fromkeys(BASE)) for t in range(600)]
    assert run(samples, LIMITS) == []


def test_failed_read_at_raise_time_defers_the_raise() -> None:
    case = CASES["trapped_passenger"]
    samples = blank(timeline(case.phases, case.end), 70, 72)
    assert summary(run(samples)) == [("trapped_passenger", R, 72),
                                     ("trapped_passenger", C, 103)]


@pytest.mark.parametrize("keys", [("door_closed",), ("car_running",),
                                  ("door_closed", "car_running")])
def test_unknown_inputs_neither_raise_nor_reset(keys: tuple[str, ...]) -> None:
    case = CASES["trapped_passenger"]
    samples = blank(timeline(case.phases, case.end), 65, 71, unknown(keys))
    assert summary(run(samples)) == [("trapped_passenger", R, 71),
                                     ("trapped_passenger", C, 103)]


@pytest.mark.parametrize("name", ["trapped_passenger", "stopped_outside_door_zone",
                                  "door_open_while_running", "run_timeout", "power_loss_supply",
                                  "controller_faults", "door_cycling", "overspeed"])
def test_failed_reads_never_clear(name: str) -> None:
    case = CASES[name]
    samples = timeline(case.phases, case.end, case.period)
    raised_at = next(t for kind, action, t in case.expected if action is R)
    dark = blank(samples, raised_at + 1, 10_000)
    dark += [(t, {}) for t in range(int(case.end), int(case.end) + 300)]
    events = [e for e in run(dark, case.thresholds) if e.action is not I]
    assert [e.action for e in events] == [R]


def test_long_gap_restarts_the_count() -> None:
    """Over a gap longer than max_unknown_gap (10 s) nothing is assumed to have held."""
    samples = timeline([(0, RUNNING_UP), (120, STOPPED_CLOSED)], 130)
    assert summary(run(blank(samples, 20, 35))) == [("run_timeout", R, 80),
                                                   ("run_timeout", C, 123)]
    assert summary(run(blank(samples, 20, 29))) == [("run_timeout", R, 45),
                                                   ("run_timeout", C, 123)]


# --- thresholds ------------------------------------------------------------------------

def test_thresholds_from_mapping_parses_durations() -> None:
    t = ElevatorThresholds.from_mapping({"trapped_after": "90s", "run_timeout": "1min",
                                         "presence_debounce": 15, "rated_speed": 1.75,
                                         "top_floor": 32, "bottom_floor": -3,
                                         "door_cycling_count": 6})
    assert (t.trapped_after, t.run_timeout, t.presence_debounce) == (90.0, 60.0, 15.0)
    assert (t.rated_speed, t.top_floor, t.bottom_floor, t.door_cycling_count) == (
        1.75, 32, -3, 6)
    assert t.stopped_outside_zone_after == 45.0


@pytest.mark.parametrize(("data", "match"), [
    ({"traped_after": "60s"}, "unknown lift threshold 'traped_after'; did you mean "
                              "'trapped_after'"),
    ({"trapped_after": "soon"}, r"\[rules\].trapped_after: 'soon' is not a duration"),
    ({"trapped_after": "-5"}, "trapped_after"),
    ({"door_cycling_count": 2.5}, "whole number"),
    ({"door_cycling_count": 1}, "door_cycling_count must be"),
    ({"overspeed_factor": 0.9}, "overspeed_factor must be > 1"),
    ({"rated_speed": True}, "rated_speed"),
    ({"top_floor": 1, "bottom_floor": 1}, "top_floor"),
])
def test_bad_thresholds_are_named(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ThresholdError, match=match):
        ElevatorThresholds.from_mapping(data)


def test_profile_rules_table_builds_rules() -> None:
    profile = load_profile("elevator-gbt24476")
    rules = rules_for("lift-1", profile, {"top_floor": 18})
    assert rules is not None
    assert rules.thresholds.top_floor == 18
    assert rules.thresholds == ElevatorThresholds.from_mapping({**profile.rules, "top_floor": 18})
    with pytest.raises(ThresholdError, match="elevator-gbt24476"):
        rules_for("lift-1", profile, {"bogus": 1})


# --- properties ------------------------------------------------------------------------

_VALUE_CHOICES: dict[str, st.SearchStrategy[Value]] = {
    "service_mode": st.sampled_from([0, 1, 1, 1, 2, 3, 7]),
    "car_running": st.booleans(),
    "direction": st.sampled_from([0, 1, 2]),
    "floor": st.integers(-1, 12),
    "door_zone": st.booleans(),
    "door_closed": st.booleans(),
    "passenger_present": st.booleans(),
    "fault_code": st.sampled_from([0, 0, 0, 1, 2, 40, 41, 45, 90, 23]),
    "speed": st.sampled_from([0.0, 0.05, 0.5, 1.0, 1.3]),
    "power_supply": st.sampled_from([0, 0, 1, 2]),
    "alarm_button": st.booleans(),
}
changes = st.fixed_dictionaries({}, optional={
    k: st.one_of(st.none(), v) for k, v in _VALUE_CHOICES.items()})
small = st.sampled_from([0.0, 1.0, 2.0, 5.0])
thresholds = st.builds(
    ElevatorThresholds, trapped_after=small, presence_debounce=small, presence_release=small,
    stopped_outside_zone_after=small, door_open_running_after=small,
    moving_with_door_open_after=small, run_timeout=small, overspeed_after=small,
    overtravel_after=small, power_loss_after=small, clear_after=small,
    door_cycling_count=st.integers(2, 3), door_cycling_window=st.sampled_from([5.0, 20.0]),
    rated_speed=st.sampled_from([None, 1.0]), top_floor=st.sampled_from([None, 10]),
    bottom_floor=st.sampled_from([None, 0]), max_unknown_gap=st.sampled_from([1.0, 10.0]))
# A poll sequence: each poll changes a few values of the lift's state, and its read succeeds,
# fails, or loses some values.
Poll = tuple[float, dict[str, Value], str, frozenset[str]]
polls = st.lists(st.tuples(st.sampled_from([0.5, 1.0, 2.0, 5.0, 15.0]), changes,
                           st.sampled_from(["full", "full", "full", "failed", "partial"]),
                           st.frozensets(st.sampled_from(sorted(_VALUE_CHOICES)), max_size=4)),
                 max_size=100)


def snapshots(seq: list[Poll]) -> list[tuple[float, dict[str, Value]]]:
    """The decoded values the gateway would get from each poll."""
    state, now = dict(BASE), 0.0
    out: list[tuple[float, dict[str, Value]]] = []
    for dt, change, read, lost in seq:
        now += dt
        state.update(change)
        if read == "failed":
            out.append((now, {}))
        else:
            out.append((now, {k: v for k, v in state.items()
                              if read == "full" or k not in lost}))
    return out


def feed(limits: ElevatorThresholds, seq: list[Poll]) -> tuple[list[Event], ElevatorRules]:
    rules = ElevatorRules("lift-1", limits)
    events: list[Event] = []
    for now, values in snapshots(seq):
        events += rules.step(values, now, EPOCH_MS + int(now * 1000))
    return events, rules


@settings(max_examples=500, deadline=None)
@given(thresholds, polls)
def test_raises_and_clears_alternate_per_kind(limits: ElevatorThresholds,
                                              seq: list[Poll]) -> None:
    active: dict[str, int | None] = {}
    events, rules = feed(limits, seq)
    for e in events:
        if e.action is I:
            continue
        if e.action is R:
            assert e.kind not in active, f"second raise of {e.kind}"
            active[e.kind] = e.code
        else:
            assert e.kind in active, f"clear of {e.kind} without a raise"
            if e.kind == "gbt24476_fault":
                assert active[e.kind] == e.code
            del active[e.kind]
    assert frozenset(active) == rules.active


@settings(max_examples=200, deadline=None)
@given(thresholds, polls, st.lists(st.sampled_from([0.5, 1.0, 30.0]), min_size=1,
                                   max_size=10))
def test_unknown_samples_never_raise_or_clear(limits: ElevatorThresholds, seq: list[Poll],
                                              gaps: list[float]) -> None:
    _, rules = feed(limits, seq)
    now = sum(dt for dt, *_ in seq)
    for dt in gaps:
        now += dt
        assert rules.step({}, now, 0) == []
        assert rules.step(dict.fromkeys(_VALUE_CHOICES), now, 0) == []
