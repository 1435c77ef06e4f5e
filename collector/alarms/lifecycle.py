"""Incident lifecycle and closed-loop figures, as pure functions.

open → acknowledged → on_site → resolved → closed. People move incidents forward one step (an
acknowledged incident may be resolved without an arrival, e.g. fixed remotely); the system only
auto-resolves when the device clears — never a life-safety kind, which waits for a person — and
reopens a resolved incident when its fault recurs. Closing always stays a human step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """Where an incident stands."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    ON_SITE = "on_site"
    RESOLVED = "resolved"
    CLOSED = "closed"


# Action names used in the REST paths, and the state each one leads to.
ACTIONS: dict[str, State] = {
    "ack": State.ACKNOWLEDGED,
    "arrive": State.ON_SITE,
    "resolve": State.RESOLVED,
    "close": State.CLOSED,
}
_HUMAN_NEXT: dict[State, tuple[State, ...]] = {
    State.OPEN: (State.ACKNOWLEDGED,),
    State.ACKNOWLEDGED: (State.ON_SITE, State.RESOLVED),
    State.ON_SITE: (State.RESOLVED,),
    State.RESOLVED: (State.CLOSED,),
    State.CLOSED: (),
}
ACTIVE_STATES = (State.OPEN, State.ACKNOWLEDGED, State.ON_SITE)


class IllegalTransition(ValueError):
    """An action that the incident's current state does not allow; `allowed` lists what does."""

    def __init__(self, incident_id: int, state: State, action: str) -> None:
        self.incident_id = incident_id
        self.state = state
        self.action = action
        self.allowed = allowed_actions(state)
        super().__init__(f"incident {incident_id} is {state.value}: cannot {action!r}; "
                         f"allowed now: {self.allowed or 'nothing (closed)'}")


def allowed_actions(state: State) -> list[str]:
    """Actions people may take on an incident in this state, in lifecycle order."""
    nxt = _HUMAN_NEXT[state]
    return [a for a, s in ACTIONS.items() if s in nxt]


def next_state(incident_id: int, state: State, action: str) -> State:
    """The state a human action leads to, or raise IllegalTransition."""
    target = ACTIONS.get(action)
    if target is None or target not in _HUMAN_NEXT[state]:
        raise IllegalTransition(incident_id, state, action)
    return target


def can_auto_resolve(state: State) -> bool:
    """Say whether a device clearing resolves the incident (only while it is still active)."""
    return state in ACTIVE_STATES


def reopen_to(state_before_resolve: str | None) -> State:
    """State a resolved incident returns to when its fault recurs (where it was, or open)."""
    try:
        back = State(state_before_resolve or State.OPEN)
    except ValueError:
        return State.OPEN
    return back if back in ACTIVE_STATES else State.OPEN


# --- closed-loop figures ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class IncidentTimes:
    """The timestamps of one incident that the figures are made of (epoch ms)."""

    unit: str
    kind: str
    opened_at: int
    acked_at: int | None = None
    resolved_at: int | None = None
    closed_at: int | None = None
    arrived_at: int | None = None
    auto_resolved: bool = False  # resolved by the device clearing, not by a person
    arrive_within_ms: int | None = None  # the kind's arrival SLA, if it has one


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of the values, or None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _seconds(values: list[float]) -> dict[str, float | None]:
    mean = sum(values) / len(values) if values else None
    p90 = percentile(values, 90)
    return {"mean_s": None if mean is None else round(mean / 1000, 1),
            "p90_s": None if p90 is None else round(p90 / 1000, 1)}


def _until_acknowledged(r: IncidentTimes, now: int) -> float:
    """Time until a person first took the incident: acknowledged, else closed, else so far.

    Incidents nobody acknowledged count too (as the time they waited), so an alarm that the
    device cleared before anyone looked cannot flatter the figure by dropping out of it.
    """
    taken = r.acked_at if r.acked_at is not None else r.closed_at
    return float((taken if taken is not None else max(now, r.opened_at)) - r.opened_at)


def _arrival(rows: list[IncidentTimes], now: int) -> dict[str, object]:
    tta = [float(r.arrived_at - r.opened_at) for r in rows if r.arrived_at is not None]
    within = judged = 0
    for r in rows:
        if r.arrive_within_ms is None:
            continue
        due = r.opened_at + r.arrive_within_ms
        if r.arrived_at is not None:
            judged += 1
            within += r.arrived_at <= due
        elif (r.resolved_at is None or r.resolved_at > due) and now > due:
            judged += 1  # nobody came in time and it was not fixed from afar in time either
    return {**_seconds(tta), "arrived": len(tta), "with_sla": judged, "within_sla": within,
            "share_within_sla": round(within / judged, 3) if judged else None}


def figures(rows: list[IncidentTimes], now: int) -> dict[str, object]:
    """Counts and time to acknowledge / arrive / resolve (mean and p90, seconds) of incidents."""
    ttr = [float(r.resolved_at - r.opened_at) for r in rows if r.resolved_at is not None]
    return {
        "found": len(rows),
        "acknowledged": sum(1 for r in rows if r.acked_at is not None),
        "unacknowledged": sum(1 for r in rows if r.acked_at is None),
        "resolved": len(ttr),
        "auto_resolved": sum(1 for r in rows if r.auto_resolved),
        "closed": sum(1 for r in rows if r.closed_at is not None),
        "time_to_acknowledge": _seconds([_until_acknowledged(r, now) for r in rows]),
        "time_to_arrive": _arrival(rows, now),
        "time_to_resolve": _seconds(ttr),
    }


def closed_loop_stats(rows: Iterable[IncidentTimes], now: int) -> dict[str, object]:
    """Figures over all incidents, per unit and per kind, as of `now`."""
    every = list(rows)
    by_unit: dict[str, list[IncidentTimes]] = {}
    by_kind: dict[str, list[IncidentTimes]] = {}
    for r in every:
        by_unit.setdefault(r.unit, []).append(r)
        by_kind.setdefault(r.kind, []).append(r)
    return {
        "total": figures(every, now),
        "units": {u: figures(v, now) for u, v in sorted(by_unit.items())},
        "kinds": {k: figures(v, now) for k, v in sorted(by_kind.items())},
    }
