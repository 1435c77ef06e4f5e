"""Edge fault detection for GB/T 24476 lifts: pure rules over decoded snapshots.

`ElevatorRules.step` takes the full decoded values of one poll (canonical quantities, see
devices/quantities.py) plus the time, and returns the events that poll caused. No I/O and no
clocks: `now` is monotonic seconds, `ts` epoch milliseconds, both passed in.

Invariants:
- Every detected fault has an explicit RAISE and CLEAR, strictly alternating per kind.
- Debounce direction: a fault is raised only when its cause held continuously for its delay,
  and cleared only when its release held continuously for `clear_after`. A lone sample in the
  other direction restarts the count; it never raises or clears anything by itself.
- A value that is missing (failed read) or None ("not available") is unknown: a sample whose
  condition is unknown neither resets a count nor raises or clears. Continuity is assumed over
  unknown stretches up to `max_unknown_gap`; after a longer gap counts start again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from devices.durations import parse_duration
from devices.model import Action, Event, Severity, Value
from devices.quantities import SERVICE_MODES

Tri = bool | None  # three-valued logic: None is "unknown"
_EPS = 1e-6  # tolerance on held-time comparisons (monotonic clocks are floats)

_DURATION = "duration"
_COUNT = "count"
_FACTOR = "factor"
_OPTIONAL_FLOAT = "optional_float"
_OPTIONAL_INT = "optional_int"


def _spec(default: Any, kind: str) -> Any:
    return field(default=default, metadata={"kind": kind})


class ThresholdError(ValueError):
    """A [rules] table that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True, slots=True)
class ElevatorThresholds:
    """Detection thresholds (seconds unless noted); defaults follow STANDARDS.md §1 practice."""

    trapped_after: float = _spec(60.0, _DURATION)  # stopped, door closed, passenger present
    presence_debounce: float = _spec(10.0, _DURATION)  # presence must hold this long once
    presence_release: float = _spec(60.0, _DURATION)  # absence this long releases "trapped"
    stopped_outside_zone_after: float = _spec(45.0, _DURATION)
    door_open_running_after: float = _spec(30.0, _DURATION)
    moving_with_door_open_after: float = _spec(30.0, _DURATION)
    moving_speed: float = _spec(0.1, _FACTOR)  # m/s above which a stopped car is moving
    run_timeout: float = _spec(45.0, _DURATION)  # continuous running (EN 81 run-time limiter)
    rated_speed: float | None = _spec(None, _OPTIONAL_FLOAT)  # m/s; None disables overspeed
    overspeed_factor: float = _spec(1.15, _FACTOR)  # governor tripping point, x rated speed
    overspeed_after: float = _spec(1.0, _DURATION)
    top_floor: int | None = _spec(None, _OPTIONAL_INT)  # None disables overtravel_top
    bottom_floor: int | None = _spec(None, _OPTIONAL_INT)  # None disables overtravel_bottom
    overtravel_after: float = _spec(2.0, _DURATION)
    door_cycling_count: int = _spec(5, _COUNT)  # door openings at one floor without travel
    door_cycling_window: float = _spec(60.0, _DURATION)
    power_loss_after: float = _spec(2.0, _DURATION)
    clear_after: float = _spec(3.0, _DURATION)  # a release must hold this long to clear
    max_unknown_gap: float = _spec(10.0, _DURATION)  # longer unknown stretches restart counts

    def __post_init__(self) -> None:
        if self.overspeed_factor <= 1.0:
            raise ThresholdError(f"overspeed_factor must be > 1, got {self.overspeed_factor}")
        if self.door_cycling_count < 2:
            raise ThresholdError(f"door_cycling_count must be ≥ 2, got {self.door_cycling_count}")
        if (self.top_floor is not None and self.bottom_floor is not None
                and self.top_floor <= self.bottom_floor):
            raise ThresholdError(
                f"top_floor ({self.top_floor}) must be above bottom_floor ({self.bottom_floor})")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ElevatorThresholds:
        """Build thresholds from a [rules] table; durations may be written "45s", "2min"."""
        specs = {f.name: f.metadata["kind"] for f in fields(cls)}
        parsed: dict[str, Any] = {}
        for key, raw in data.items():
            if key not in specs:
                import difflib  # only for this error message

                close = difflib.get_close_matches(key, specs, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ThresholdError(
                    f"[rules]: unknown lift threshold {key!r}{hint}; known: {', '.join(specs)}")
            try:
                parsed[key] = _convert(specs[key], raw)
            except (TypeError, ValueError) as exc:
                raise ThresholdError(f"[rules].{key}: {exc}") from None
        return replace(cls(), **parsed)


def _convert(kind: str, raw: Any) -> Any:
    if isinstance(raw, bool):
        raise TypeError(f"expected a {kind}, got {raw!r}")
    if kind == _DURATION:
        return parse_duration(raw)
    if raw is None and kind in (_OPTIONAL_FLOAT, _OPTIONAL_INT):
        return None
    if kind in (_COUNT, _OPTIONAL_INT):
        if not isinstance(raw, int):
            raise TypeError(f"expected a whole number, got {raw!r}")
        return raw
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a non-negative number, got {raw!r}")
    return value


# --- three-valued helpers over a snapshot ------------------------------------------------

def all_of(*conds: Tri) -> Tri:
    """Kleene AND: False if any is False, else unknown if any is unknown."""
    if any(c is False for c in conds):
        return False
    return None if any(c is None for c in conds) else True


def any_of(*conds: Tri) -> Tri:
    """Kleene OR: True if any is True, else unknown if any is unknown."""
    if any(c is True for c in conds):
        return True
    return None if any(c is None for c in conds) else False


def negate(cond: Tri) -> Tri:
    """Kleene NOT."""
    return None if cond is None else not cond


def _flag(values: Mapping[str, Value], key: str) -> Tri:
    v = values.get(key)
    if isinstance(v, bool):
        return v
    return bool(v) if isinstance(v, int) else None


def _number(values: Mapping[str, Value], key: str) -> float | None:
    v = values.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _integer(values: Mapping[str, Value], key: str) -> int | None:
    v = values.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _compare(value: float | None, pred: bool) -> Tri:
    return None if value is None else pred


# --- debouncing primitives ----------------------------------------------------------------

@dataclass(slots=True)
class Hold:
    """How long a condition has held; unknown samples neither reset nor confirm it."""

    max_gap: float
    since: float | None = None
    last: float | None = None  # last sample where the condition was known true

    def feed(self, cond: Tri, now: float) -> float | None:
        """Feed one sample; return the seconds held so far when `cond` is true, else None."""
        if cond is None:
            return None
        if not cond:
            self.since = self.last = None
            return None
        if self.since is None or self.last is None or now - self.last > self.max_gap + _EPS:
            self.since = now
        self.last = now
        return now - self.since

    def reset(self) -> None:
        """Forget the current run."""
        self.since = self.last = None


@dataclass(slots=True)
class Latch:
    """One raisable condition: raised after its cause held, cleared after its release held."""

    max_gap: float
    active: bool = False
    cause: Hold = field(init=False)
    release: Hold = field(init=False)

    def __post_init__(self) -> None:
        self.cause, self.release = Hold(self.max_gap), Hold(self.max_gap)

    def step(self, cause: Tri, release: Tri, now: float, raise_after: float,
             clear_after: float) -> Action | None:
        """Feed one sample; return RAISE or CLEAR when the state changes."""
        hold, limit = (self.release, clear_after) if self.active else (self.cause, raise_after)
        held = hold.feed(release if self.active else cause, now)
        if held is None or held + _EPS < limit:
            return None
        self.active = not self.active
        self.cause.reset()
        self.release.reset()
        return Action.RAISE if self.active else Action.CLEAR


# --- GB/T 24476 codes ---------------------------------------------------------------------

FAULT_CODES: dict[int, tuple[str, Severity]] = {
    1: ("safety circuit open while running", Severity.CRITICAL),
    2: ("door close fault", Severity.MAJOR),
    3: ("door open fault", Severity.MAJOR),
    4: ("car stopped outside the unlocking zone", Severity.MAJOR),
    5: ("unintended car movement (UCM)", Severity.CRITICAL),
    6: ("motor run-time limiter tripped", Severity.MAJOR),
    7: ("floor position lost", Severity.MAJOR),
    8: ("other fault preventing restart", Severity.MAJOR),
}
EVENT_CODES: dict[int, str] = {
    40: "back to normal operation",
    41: "mains power lost",
    42: "entered out of service",
    43: "entered inspection",
    44: "entered fire return",
    45: "entered firefighter operation",
    46: "entered emergency power operation",
    47: "entered earthquake operation",
}
ALARM_CODE = 90
BACK_TO_NORMAL = 40
MAINS_LOST = 41
# service_mode value -> the matching event code (40 back to normal, 42-47 entered a mode)
MODE_EVENT_CODES: dict[int, int] = {1: 40, 0: 42, 2: 43, 3: 44, 4: 45, 5: 46, 6: 47}
_MODE_SEVERITY = {3: Severity.WARNING, 4: Severity.WARNING, 5: Severity.WARNING,
                  6: Severity.WARNING}
_NORMAL, _INSPECTION = 1, 2
_UP, _DOWN = 1, 2
_MAINS, _BATTERY, _NO_POWER = 0, 1, 2

_MOTION = ("car_running", "direction", "speed", "floor", "door_zone", "door_closed")
_EVIDENCE: dict[str, tuple[str, ...]] = {
    "trapped_passenger": (*_MOTION, "passenger_present", "service_mode", "fault_code"),
    "stopped_outside_door_zone": (*_MOTION, "passenger_present", "service_mode"),
    "overtravel_top": _MOTION,
    "overtravel_bottom": _MOTION,
    "overspeed": _MOTION,
    "door_open_while_running": (*_MOTION, "door_lock"),
    "moving_with_door_open": (*_MOTION, "door_lock", "brake_open"),
    "run_timeout": (*_MOTION, "service_mode"),
    "door_cycling": ("floor", "door_closed", "car_running", "door_cycles"),
    "power_loss": ("power_supply", "fault_code", "car_running", "floor", "door_zone"),
    "alarm_button": ("alarm_button", "fault_code", "passenger_present", "floor", "door_zone"),
}
_SEVERITY: dict[str, Severity] = {
    "trapped_passenger": Severity.CRITICAL,
    "stopped_outside_door_zone": Severity.MAJOR,
    "overtravel_top": Severity.CRITICAL,
    "overtravel_bottom": Severity.CRITICAL,
    "overspeed": Severity.CRITICAL,
    "door_open_while_running": Severity.MAJOR,
    "moving_with_door_open": Severity.CRITICAL,
    "run_timeout": Severity.MAJOR,
    "door_cycling": Severity.MINOR,
    "power_loss": Severity.MAJOR,
    "alarm_button": Severity.MAJOR,
}
_CODES: dict[str, int] = {"stopped_outside_door_zone": 4, "run_timeout": 6,
                          "power_loss": MAINS_LOST, "alarm_button": ALARM_CODE}
_TITLES: dict[str, str] = {
    "stopped_outside_door_zone": "car stopped outside the door zone",
    "overtravel_top": "car overtravelled the top landing",
    "overtravel_bottom": "car overtravelled the bottom landing",
    "overspeed": "car overspeed",
    "door_open_while_running": "door open while the car is running",
    "moving_with_door_open": "car moving with the door open",
    "run_timeout": "run timeout",
    "door_cycling": "door opening and closing repeatedly",
    "power_loss": "mains power lost",
    "alarm_button": "alarm button pressed",
}


@dataclass(slots=True)
class _Overtravel:
    """Beyond a terminal floor, or left the terminal landing's door zone still travelling out."""

    limit: int
    outward: int  # +1 at the top, -1 at the bottom
    in_zone_at_limit: bool = False
    passed: bool = False

    def cause(self, floor: int | None, running: Tri, direction: int | None,
              zone: Tri) -> Tri:
        """Feed one sample; return whether the car is past this limit."""
        leaving = running is True and direction == (_UP if self.outward > 0 else _DOWN)
        if floor == self.limit and leaving and zone is True:
            self.in_zone_at_limit = True
        elif floor == self.limit and leaving and zone is False and self.in_zone_at_limit:
            self.passed = True
        elif (floor is not None and floor != self.limit) or running is False:
            self.in_zone_at_limit = False
        inside = floor is not None and (floor - self.limit) * self.outward < 0
        if inside or (zone is True and running is False):
            self.passed = False
        if floor is None:
            return None  # the latched state is only reported on a sample that knows the floor
        return self.passed or (floor - self.limit) * self.outward > 0


class ElevatorRules:
    """Stateful edge fault detection for one lift; feed it every decoded poll."""

    def __init__(self, device: str, thresholds: ElevatorThresholds | None = None) -> None:
        self.device = device
        self.thresholds = t = thresholds or ElevatorThresholds()
        self._latches = {kind: Latch(t.max_unknown_gap) for kind in _SEVERITY}
        self._stop = Hold(t.max_unknown_gap)  # door closed and car not running
        self._present = Hold(t.max_unknown_gap)
        self._absent = Hold(t.max_unknown_gap)
        self._presence_confirmed = False
        self._top = None if t.top_floor is None else _Overtravel(t.top_floor, +1)
        self._bottom = None if t.bottom_floor is None else _Overtravel(t.bottom_floor, -1)
        self._openings: deque[float] = deque()
        self._last_opening: float | None = None
        self._travelled = False
        self._cycle_floor: int | None = None
        self._last_closed: bool | None = None
        self._last_code: int | None = None
        self._fault: int | None = None  # active controller fault code 1-8
        self._last_mode: int | None = None

    @property
    def active(self) -> frozenset[str]:
        """Kinds currently raised (controller faults as "gbt24476_fault")."""
        kinds = {kind for kind, latch in self._latches.items() if latch.active}
        return frozenset(kinds | ({"gbt24476_fault"} if self._fault is not None else set()))

    def step(self, values: Mapping[str, Value], now: float, ts: int) -> list[Event]:
        """Feed one decoded snapshot; return the events it raises, clears or reports."""
        out: list[Event] = []
        self._controller_code(values, now, ts, out)
        self._service_mode(values, now, ts, out)
        for kind, cause, release, raise_after in self._conditions(values, now):
            latch = self._latches[kind]
            clear_after = self.thresholds.clear_after
            action = latch.step(cause, release, now, raise_after, clear_after)
            if action is not None:
                out.append(self._detected(kind, action, values, now, ts))
        return out

    # --- controller registers ---------------------------------------------------------

    def _controller_code(self, v: Mapping[str, Value], now: float, ts: int,
                         out: list[Event]) -> None:
        code = _integer(v, "fault_code")
        if code is None or code == self._last_code:
            return
        self._last_code = code
        evidence: dict[str, Value] = {"fault_code": code}
        if self._fault is not None:
            text, severity = FAULT_CODES[self._fault]
            out.append(self._event("gbt24476_fault", Action.CLEAR, severity, self._fault,
                                   evidence, f"controller fault {self._fault} cleared: {text}",
                                   at=(now, ts)))
            self._fault = None
        if code in FAULT_CODES:
            text, severity = FAULT_CODES[code]
            self._fault = code
            out.append(self._event("gbt24476_fault", Action.RAISE, severity, code, evidence,
                                   f"controller fault {code}: {text}", at=(now, ts)))
        elif code in EVENT_CODES:
            out.append(self._event("gbt24476_event", Action.INFO, Severity.INFO, code,
                                   evidence, f"controller event {code}: {EVENT_CODES[code]}",
                                   at=(now, ts)))
        elif code not in (0, ALARM_CODE):
            out.append(self._event("gbt24476_event", Action.INFO, Severity.WARNING, code,
                                   evidence, f"unrecognised GB/T 24476 code {code}",
                                   at=(now, ts)))

    def _service_mode(self, v: Mapping[str, Value], now: float, ts: int,
                      out: list[Event]) -> None:
        mode = _integer(v, "service_mode")
        if mode is None or mode == self._last_mode:
            return
        previous, self._last_mode = self._last_mode, mode
        if previous is None and mode == _NORMAL:
            return
        label = SERVICE_MODES.get(mode, f"code {mode}")
        evidence: dict[str, Value] = {"service_mode": mode, "previous_service_mode": previous}
        out.append(self._event("service_mode_change", Action.INFO,
                               _MODE_SEVERITY.get(mode, Severity.INFO),
                               MODE_EVENT_CODES.get(mode), evidence,
                               f"service mode is now {label}", at=(now, ts)))

    # --- detected conditions ----------------------------------------------------------

    def _conditions(self, v: Mapping[str, Value],
                    now: float) -> Iterator[tuple[str, Tri, Tri, float]]:
        """Yield (kind, cause, release, raise delay) for every enabled detection."""
        t = self.thresholds
        running, closed = _flag(v, "car_running"), _flag(v, "door_closed")
        zone, speed = _flag(v, "door_zone"), _number(v, "speed")
        door_open = negate(closed)
        yield ("trapped_passenger", *self._trapped(v, now), 0.0)
        stopped_out = all_of(negate(running), negate(zone))
        yield "stopped_outside_door_zone", stopped_out, negate(stopped_out), \
            t.stopped_outside_zone_after
        yield from self._overtravel(v)
        if t.rated_speed is not None:
            limit = t.rated_speed * t.overspeed_factor
            fast = _compare(speed, speed is not None and speed > limit)
            yield "overspeed", fast, negate(fast), t.overspeed_after
        # Doors opened mid-travel, versus a car that creeps or drifts at a landing.
        open_running = all_of(running, door_open, negate(zone))
        yield "door_open_while_running", open_running, negate(open_running), \
            t.door_open_running_after
        drifting = all_of(negate(running), _compare(speed, speed is not None
                                                    and speed > t.moving_speed))
        moving_open = all_of(door_open, any_of(all_of(running, zone), drifting))
        yield "moving_with_door_open", moving_open, negate(moving_open), \
            t.moving_with_door_open_after
        mode = _integer(v, "service_mode")
        # The run-time limiter does not apply in inspection (EN 81-20 5.9.2.7).
        long_run = all_of(running, _compare(mode, mode != _INSPECTION))
        yield "run_timeout", long_run, negate(running), t.run_timeout
        yield ("door_cycling", *self._door_cycling(running, closed, _integer(v, "floor"), now),
               0.0)
        yield ("power_loss", *self._power(v), t.power_loss_after)
        code = _integer(v, "fault_code")
        is_alarm = _compare(code, code == ALARM_CODE)
        alarm = _flag(v, "alarm_button")
        yield "alarm_button", any_of(alarm, is_alarm), all_of(negate(alarm), negate(is_alarm)), 0.0

    def _trapped(self, v: Mapping[str, Value], now: float) -> tuple[Tri, Tri]:
        t = self.thresholds
        running, closed = _flag(v, "car_running"), _flag(v, "door_closed")
        zone, present = _flag(v, "door_zone"), _flag(v, "passenger_present")
        stop = all_of(closed, negate(running))
        stopped_for = self._stop.feed(stop, now)
        present_for = self._present.feed(present, now)
        absent_for = self._absent.feed(negate(present), now)
        # Presence must be seen continuously for presence_debounce once per stop, counted from
        # the door closing (someone leaving as it closes is not trapped); later flickers of the
        # sensor do not undo it (a trapped passenger sitting still is invisible to most).
        if stop is False:
            self._presence_confirmed = False
        elif stopped_for is not None and present_for is not None \
                and min(stopped_for, present_for) + _EPS >= t.presence_debounce:
            self._presence_confirmed = True
        if stopped_for is None:
            cause: Tri = stop
        else:
            cause = self._presence_confirmed and stopped_for + _EPS >= t.trapped_after
        gone = (None if present is None
                else absent_for is not None and absent_for + _EPS >= t.presence_release)
        released = any_of(all_of(zone, negate(closed)), gone)
        if released and self._latches["trapped_passenger"].active:
            self._presence_confirmed = False
        return cause, released

    def _overtravel(self, v: Mapping[str, Value]) -> Iterator[tuple[str, Tri, Tri, float]]:
        args = (_integer(v, "floor"), _flag(v, "car_running"), _integer(v, "direction"),
                _flag(v, "door_zone"))
        for kind, limit in (("overtravel_top", self._top), ("overtravel_bottom", self._bottom)):
            if limit is not None:
                past = limit.cause(*args)
                yield kind, past, negate(past), self.thresholds.overtravel_after

    def _door_cycling(self, running: Tri, closed: Tri, floor: int | None,
                      now: float) -> tuple[Tri, Tri]:
        t = self.thresholds
        moved = floor is not None and self._cycle_floor is not None and floor != self._cycle_floor
        if running is True or moved:
            self._openings.clear()
            self._travelled = True
        if floor is not None:
            self._cycle_floor = floor
        if closed is False and self._last_closed is True and running is not True:
            self._openings.append(now)
            self._last_opening = now
        if closed is not None:
            self._last_closed = closed
        while self._openings and now - self._openings[0] > t.door_cycling_window + _EPS:
            self._openings.popleft()
        cycling = len(self._openings) >= t.door_cycling_count
        if cycling:
            self._travelled = False
        if closed is None and running is None:
            return None, None  # nothing about the doors is known in this sample
        quiet = self._last_opening is None or now - self._last_opening >= t.door_cycling_window
        return cycling, self._travelled or quiet

    def _power(self, v: Mapping[str, Value]) -> tuple[Tri, Tri]:
        supply, code = _integer(v, "power_supply"), _integer(v, "fault_code")
        supply_lost = _compare(supply, supply in (_BATTERY, _NO_POWER))
        code_lost = _compare(code, code == MAINS_LOST)
        # Without a power_supply reading only the controller's "back to normal" (40) clears.
        supply_ok = negate(supply_lost) if supply is not None else _compare(
            code, code == BACK_TO_NORMAL)
        return any_of(supply_lost, code_lost), all_of(supply_ok, negate(code_lost))

    # --- events -----------------------------------------------------------------------

    def _detected(self, kind: str, action: Action, v: Mapping[str, Value], now: float,
                  ts: int) -> Event:
        evidence: dict[str, Value] = {k: v[k] for k in _EVIDENCE[kind] if k in v}
        if kind == "trapped_passenger":
            return self._trapped_event(action, evidence, now, ts)
        title = _TITLES[kind]
        if kind == "overspeed" and self.thresholds.rated_speed is not None:
            evidence["rated_speed"] = self.thresholds.rated_speed
        if kind == "door_cycling":
            evidence["openings_in_window"] = len(self._openings)
        floor = v.get("floor")
        where = f" at floor {floor}" if floor is not None else ""
        message = f"{title}{where}" if action is Action.RAISE else f"cleared: {title}{where}"
        return self._event(kind, action, _SEVERITY[kind], _CODES.get(kind), evidence, message,
                           at=(now, ts))

    def _trapped_event(self, action: Action, evidence: dict[str, Value], now: float,
                       ts: int) -> Event:
        zone = evidence.get("door_zone")
        outside = None if zone is None else not zone
        evidence["outside_door_zone"] = outside
        floor = evidence.get("floor")
        if action is Action.CLEAR:
            message = f"passenger released at floor {floor}"
        elif outside:
            message = (f"URGENT: passenger trapped outside the door zone near floor {floor} "
                       "(car between landings)")
        else:
            message = f"passenger trapped at floor {floor}"
        return self._event("trapped_passenger", action, Severity.CRITICAL, None, evidence,
                           message, at=(now, ts))

    def _event(self, kind: str, action: Action, severity: Severity, code: int | None,
               evidence: dict[str, Value], message: str, *, at: tuple[float, int]) -> Event:
        now, ts = at
        return Event(self.device, ts, kind, action, severity, code=code, evidence=evidence,
                     message=message, mono=int(now * 1000))


__all__ = [
    "ALARM_CODE",
    "EVENT_CODES",
    "FAULT_CODES",
    "MODE_EVENT_CODES",
    "ElevatorRules",
    "ElevatorThresholds",
    "Hold",
    "Latch",
    "ThresholdError",
    "all_of",
    "any_of",
    "negate",
]
