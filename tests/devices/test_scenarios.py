"""Fault scenarios drive the simulated lift into each fault, and the edge rules recognise it."""

from __future__ import annotations

from collections import Counter

import pytest

from devices.modbus.codec import decode
from devices.modbus.planner import plan_reads
from devices.model import Action, Event, Value
from devices.profiles import load_profile
from devices.sim.elevator import RATED_SPEED, ElevatorModel
from devices.sim.registers import encode_registers
from devices.sim.scenarios import (
    SCENARIOS,
    ScenarioError,
    ScenarioSchedule,
    ScenarioSpec,
    controller_fault,
    parse_scenario,
)
from edge.rules import ElevatorRules, ElevatorThresholds

START, STOP, END = 30, 180, 420
# What else a scenario legitimately causes: a car forced to run keeps running past the run-time
# limit; a car forced out of the door zone is also "stopped outside the door zone".
SIDE_EFFECTS: dict[str, set[str]] = {
    "overspeed": {"run_timeout"},
    "door_open_while_running": {"run_timeout"},
    "moving_with_door_open": {"run_timeout"},
    "overtravel_top": {"stopped_outside_door_zone"},
    "overtravel_bottom": {"stopped_outside_door_zone"},
}
FAULTS = [name for name, s in SCENARIOS.items() if not s.silent]


def through_registers(profile: str, values: dict[str, Value]) -> dict[str, Value]:
    """What the gateway decodes when a controller of `profile` shows `values`."""
    p = load_profile(profile)
    tables = encode_registers(p, values)
    out: dict[str, Value] = {}
    for block in plan_reads(p.points, max_gap=p.max_gap):
        regs = tables.get(block.table, {})
        data = [regs.get(a, 0) for a in range(block.start, block.start + block.count)]
        out.update({pt.quantity: decode(pt, block.slice_for(pt, data)) for pt in block.points})
    return out


def drive(name: str | None, *, seed: int, profile: str | None = None,
          end: int = END) -> tuple[list[Event], ElevatorRules]:
    """Run a lift at 1 Hz with the scenario between START and STOP, feeding the edge rules."""
    model = ElevatorModel(unit=2, seed=seed)
    rules = ElevatorRules("lift-2", ElevatorThresholds(
        top_floor=model.floors, bottom_floor=1, rated_speed=RATED_SPEED))
    schedule = ScenarioSchedule([] if name is None else [ScenarioSpec(name, START, None,
                                                                      STOP - START)])
    events: list[Event] = []
    for t in range(end):
        schedule.apply({2: model}, float(t))
        values = model.snapshot(float(t))
        if profile is not None:
            values = through_registers(profile, values)
        events += rules.step(values, float(t), t * 1000)
    return events, rules


@pytest.mark.parametrize("profile", [None, "elevator-gbt24476", "elevator-vendorb"])
@pytest.mark.parametrize("seed", [3, 11])
@pytest.mark.parametrize("name", FAULTS)
def test_scenario_raises_its_fault_and_clears_after(name: str, seed: int,
                                                   profile: str | None) -> None:
    scenario = SCENARIOS[name]
    events, rules = drive(name, seed=seed, profile=profile)
    raises = Counter(e.kind for e in events if e.action is Action.RAISE)
    if not scenario.expects:
        assert events == []
        return
    assert set(scenario.expects) <= set(raises), raises
    assert set(raises) <= set(scenario.expects) | SIDE_EFFECTS.get(name, set()), raises
    assert all(n == 1 for n in raises.values()), raises
    assert all(START <= e.ts / 1000 < STOP for e in events if e.action is Action.RAISE)
    assert rules.active == frozenset(), "everything clears once the lift resumes"


def test_trapped_outside_zone_scenario_is_urgent() -> None:
    events, _ = drive("trapped_outside_zone", seed=3)
    trapped = next(e for e in events if e.kind == "trapped_passenger")
    assert trapped.evidence["outside_door_zone"] is True
    assert trapped.ts == (START + 60) * 1000


@pytest.mark.parametrize("code", range(1, 9))
def test_controller_fault_scenarios_carry_their_code(code: int) -> None:
    events, _ = drive(f"controller_fault_{code}", seed=3)
    assert [(e.action, e.code) for e in events] == [(Action.RAISE, code), (Action.CLEAR, code)]
    assert SCENARIOS["controller_fault"].values(ElevatorModel(1)) == {"fault_code": 2}
    with pytest.raises(ScenarioError, match="1-8"):
        controller_fault(41)


@pytest.mark.parametrize("profile", [None, "elevator-vendorb"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_normal_operation_raises_nothing(seed: int, profile: str | None) -> None:
    events, _ = drive(None, seed=seed, profile=profile, end=3600)
    assert events == []


def test_stop_removes_only_its_own_overrides() -> None:
    model = ElevatorModel(unit=1, seed=1)
    model.overrides["machine_room_temp"] = 45.0
    scenario = SCENARIOS["flapping_presence"]
    scenario.start(model, 0.0)
    assert model.snapshot(0.0)["passenger_present"] is True
    scenario.tick(model, 2.0)
    assert model.snapshot(2.0)["passenger_present"] is False
    scenario.stop(model, 3.0)
    assert model.overrides == {"machine_room_temp": 45.0}


# --- parsing and scheduling --------------------------------------------------------------

@pytest.mark.parametrize(("text", "spec"), [
    ("trapped_passenger@20:unit=3", ("trapped_passenger", 20.0, 3, None)),
    ("trapped_passenger@20", ("trapped_passenger", 20.0, None, None)),
    ("overspeed@1.5:for=30", ("overspeed", 1.5, None, 30.0)),
    ("unit_dead@2min:for=90s:unit=7", ("unit_dead", 120.0, 7, 90.0)),
    (" door_cycling@0:unit=0 ", ("door_cycling", 0.0, 0, None)),
])
def test_parse_scenario(text: str, spec: tuple[str, float, int | None, float | None]) -> None:
    assert parse_scenario(text) == spec


@pytest.mark.parametrize(("text", "match"), [
    ("trapped_passenger", "write NAME@SECONDS"),
    ("@20", "write NAME@SECONDS"),
    ("trapped_passenger@", "write NAME@SECONDS"),
    ("trapped@20", "unknown scenario 'trapped'; known: alarm_button"),
    ("trapped_passenger@soon", "start time 'soon' is not a number of seconds"),
    ("trapped_passenger@-5", "start time '-5'"),
    ("trapped_passenger@20:unit=x", "unit 'x' must be a Modbus unit id"),
    ("trapped_passenger@20:unit=300", "unit '300'"),
    ("trapped_passenger@20:floor=3", "unknown option 'floor=3'"),
    ("trapped_passenger@20:unit", "unknown option 'unit'"),
    ("trapped_passenger@20:unit=1:unit=2", "unit= given twice"),
    ("trapped_passenger@20:for=ever", "duration 'ever'"),
])
def test_parse_scenario_errors(text: str, match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        parse_scenario(text)


def test_schedule_starts_ticks_and_stops_per_unit() -> None:
    models = {u: ElevatorModel(unit=u, seed=u) for u in (1, 2, 3)}
    schedule = ScenarioSchedule.parse(["alarm_button@10:unit=2:for=5", "unit_dead@20:unit=3",
                                       "flapping_presence@30:for=10"])
    seen: dict[int, list[float]] = {u: [] for u in models}
    silent: list[tuple[float, set[int]]] = []
    for t in range(60):
        schedule.apply(models, float(t))
        for u, m in models.items():
            if m.snapshot(float(t))["alarm_button"]:
                seen[u].append(t)
        silent.append((t, schedule.silent_units()))
    assert seen == {1: [], 2: [10, 11, 12, 13, 14], 3: []}
    assert [t for t, units in silent if units] == list(range(20, 60))
    assert all(units == {3} for _, units in silent if units)
    assert all("passenger_present" not in m.overrides for m in models.values())


def test_schedule_rejects_a_missing_unit() -> None:
    schedule = ScenarioSchedule.parse(["overspeed@0:unit=9"])
    with pytest.raises(ScenarioError, match="no simulated unit 9"):
        schedule.apply({1: ElevatorModel(1)}, 0.0)
