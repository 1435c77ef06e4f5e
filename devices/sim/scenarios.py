"""Fault scenarios for simulated lifts: pure functions that force an ElevatorModel's values.

A scenario forces values through `model.overrides` (never touching the motion model, so the
lift resumes its own life when the scenario stops). Scenarios whose values change over time
(a flapping sensor, a door cycling) also need `tick(model, now)` before each snapshot;
`ScenarioSchedule` does the starting, ticking and stopping for a whole bank.

The names are shared by unit tests, HIL tests and the demo (docs: STYLE.md "Tests"):
`trapped_passenger@20:unit=3:for=120` starts at 20 s on unit 3 and stops 120 s later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from devices.durations import parse_duration
from devices.model import Value
from devices.sim.elevator import RATED_SPEED, ElevatorModel

Values = Callable[[ElevatorModel], dict[str, Value]]


class ScenarioError(ValueError):
    """A scenario spec that cannot be used; the message says what to write instead."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named fault: forced values, optional toggling values, and the edge events it causes."""

    name: str
    description: str
    values: Values = field(default=lambda model: {})
    toggles: Mapping[str, float] = field(default_factory=dict)  # quantity -> half period, s
    expects: tuple[str, ...] = ()  # event kinds the edge must raise (empty: must raise none)
    silent: bool = False  # the unit stops answering; the server has to implement it

    def start(self, model: ElevatorModel, now: float) -> None:
        """Force the scenario's values onto the model."""
        model.overrides.update(self.values(model))
        self.tick(model, now)

    def tick(self, model: ElevatorModel, now: float) -> None:
        """Advance time-varying values (toggles switch every half period, true first)."""
        for quantity, half_period in self.toggles.items():
            model.overrides[quantity] = int(now // half_period) % 2 == 0

    def stop(self, model: ElevatorModel, now: float) -> None:
        """Remove exactly what this scenario forced."""
        del now
        for quantity in (*self.values(model), *self.toggles):
            model.overrides.pop(quantity, None)


# Lift states the scenarios are built from.
_STOPPED = {"car_running": False, "direction": 0, "speed": 0.0, "brake_open": False}
_CLOSED = {"door_closed": True, "door_lock": True}
_OPEN = {"door_closed": False, "door_lock": False}
_RUNNING_UP = {"car_running": True, "direction": 1, "speed": RATED_SPEED, "brake_open": True}


def _const(*states: Mapping[str, Value], **values: Value) -> Values:
    merged: dict[str, Value] = {}
    for state in (*states, values):
        merged.update(state)
    return lambda model: dict(merged)


def _parked(*states: Mapping[str, Value], **values: Value) -> Values:
    """Like _const, and the car stays at the floor it was at (the motion model runs on)."""
    fixed = _const(*states, **values)
    return lambda model: {**fixed(model), "floor": model.values.get("floor")}


def controller_fault(code: int) -> Scenario:
    """The controller reports GB/T 24476 fault `code` (1-8) in its fault register."""
    if not 1 <= code <= 8:
        raise ScenarioError(f"controller fault code must be 1-8, got {code}")
    return Scenario(f"controller_fault_{code}", f"controller reports GB/T 24476 fault {code}",
                    _const(fault_code=code), expects=("gbt24476_fault",))


_ALL: tuple[Scenario, ...] = (
    Scenario("trapped_passenger", "stopped at a landing, doors shut, passenger inside",
             _parked(_STOPPED, _CLOSED, door_zone=True, passenger_present=True),
             expects=("trapped_passenger",)),
    Scenario("trapped_outside_zone", "stopped between floors with a passenger inside",
             _parked(_STOPPED, _CLOSED, door_zone=False, passenger_present=True),
             expects=("trapped_passenger", "stopped_outside_door_zone")),
    Scenario("stopped_outside_zone", "empty car stopped between floors",
             _parked(_STOPPED, _CLOSED, door_zone=False, passenger_present=False),
             expects=("stopped_outside_door_zone",)),
    Scenario("overtravel_top", "car above the top landing (冲顶)",
             lambda m: {**_STOPPED, **_CLOSED, "door_zone": False, "passenger_present": False,
                        "floor": m.floors + 1},
             expects=("overtravel_top",)),
    Scenario("overtravel_bottom", "car below the bottom landing (蹲底)",
             _const(_STOPPED, _CLOSED, door_zone=False, passenger_present=False, floor=0),
             expects=("overtravel_bottom",)),
    Scenario("overspeed", "car running at 140 % of rated speed",
             _const(_RUNNING_UP, _CLOSED, door_zone=False, speed=RATED_SPEED * 1.4),
             expects=("overspeed",)),
    Scenario("door_open_while_running", "doors open during travel between floors",
             _const(_RUNNING_UP, _OPEN, door_zone=False),
             expects=("door_open_while_running",)),
    Scenario("moving_with_door_open", "car creeping at a landing with its doors open",
             _const(_RUNNING_UP, _OPEN, door_zone=True, speed=0.2),
             expects=("moving_with_door_open",)),
    Scenario("run_timeout", "car keeps running without arriving",
             _const(_RUNNING_UP, _CLOSED, door_zone=False), expects=("run_timeout",)),
    Scenario("door_cycling", "doors open and close every few seconds at one floor",
             _parked(_STOPPED, door_zone=True, passenger_present=False),
             toggles={"door_closed": 3.0}, expects=("door_cycling",)),
    Scenario("power_loss", "mains lost, controller on battery",
             _const(power_supply=1, fault_code=41), expects=("power_loss",)),
    *(controller_fault(code) for code in range(1, 9)),
    Scenario("controller_fault", "controller reports a door close fault (code 2)",
             _const(fault_code=2), expects=("gbt24476_fault",)),
    Scenario("alarm_button", "passenger holds the alarm button",
             _const(alarm_button=True, fault_code=90), expects=("alarm_button",)),
    Scenario("unit_dead", "the controller stops answering (implemented by the server)",
             silent=True, expects=("device_offline",)),
    Scenario("flapping_presence", "empty car parked, presence sensor toggling every 2 s",
             _parked(_STOPPED, _CLOSED, door_zone=True), toggles={"passenger_present": 2.0}),
)
SCENARIOS: dict[str, Scenario] = {s.name: s for s in _ALL}


class ScenarioSpec(NamedTuple):
    """A parsed `NAME@SECONDS[:unit=N][:for=SECONDS]`."""

    name: str
    at: float
    unit: int | None = None
    duration: float | None = None


def parse_scenario(text: str) -> ScenarioSpec:
    """Parse `NAME@SECONDS[:unit=N][:for=SECONDS]`, e.g. "trapped_passenger@20:unit=3"."""
    head, *options = text.strip().split(":")
    name, sep, at_text = head.partition("@")
    if not sep or not name or not at_text:
        raise ScenarioError(f"{text!r}: write NAME@SECONDS[:unit=N][:for=SECONDS], "
                            "e.g. trapped_passenger@20:unit=3")
    if name not in SCENARIOS:
        raise ScenarioError(f"{text!r}: unknown scenario {name!r}; known: "
                            f"{', '.join(sorted(SCENARIOS))}")
    at = _seconds(text, "start time", at_text)
    unit: int | None = None
    duration: float | None = None
    seen: set[str] = set()
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in ("unit", "for"):
            raise ScenarioError(f"{text!r}: unknown option {option!r}; use unit=N or for=SECONDS")
        if key in seen:
            raise ScenarioError(f"{text!r}: {key}= given twice")
        seen.add(key)
        if key == "unit":
            unit = _unit(text, value)
        else:
            duration = _seconds(text, "duration", value)
    return ScenarioSpec(name, at, unit, duration)


def _seconds(text: str, what: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise ScenarioError(f"{text!r}: {what} {value!r} is not a number of seconds "
                            "(e.g. 20 or 1.5min)") from None


def _unit(text: str, value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 247:
        raise ScenarioError(f"{text!r}: unit {value!r} must be a Modbus unit id 0-247")
    return int(value)


@dataclass
class ScenarioSchedule:
    """Starts, ticks and stops parsed scenarios on a bank of models as time passes."""

    specs: list[ScenarioSpec]
    _running: set[tuple[int, int]] = field(default_factory=set)  # (spec index, unit)
    _done: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> ScenarioSchedule:
        """Build a schedule from spec strings."""
        return cls([parse_scenario(t) for t in texts])

    def apply(self, models: Mapping[int, ElevatorModel], now: float) -> None:
        """Bring every model's overrides up to date for `now` (call before each snapshot)."""
        for i, spec in enumerate(self.specs):
            scenario = SCENARIOS[spec.name]
            for unit in self._units(spec, models):
                key, model = (i, unit), models[unit]
                ends = None if spec.duration is None else spec.at + spec.duration
                if key in self._running and ends is not None and now >= ends:
                    scenario.stop(model, now)
                    self._running.discard(key)
                    self._done.add(key)
                elif key in self._running:
                    scenario.tick(model, now)
                elif key not in self._done and now >= spec.at and (ends is None or now < ends):
                    scenario.start(model, now)
                    self._running.add(key)

    def silent_units(self) -> set[int]:
        """Units that a running scenario keeps from answering (as of the last `apply`)."""
        return {unit for i, unit in self._running if SCENARIOS[self.specs[i].name].silent}

    @staticmethod
    def _units(spec: ScenarioSpec, models: Mapping[int, ElevatorModel]) -> list[int]:
        if spec.unit is None:
            return sorted(models)
        if spec.unit not in models:
            raise ScenarioError(f"scenario {spec.name}: no simulated unit {spec.unit}; "
                                f"units: {sorted(models)}")
        return [spec.unit]
