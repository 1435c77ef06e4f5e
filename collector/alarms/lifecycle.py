"""Incident lifecycle and closed-loop figures, as pure functions.

open → acknowledged → on_site → resolved → closed. People move incidents forward one step (an
acknowledged incident may be resolved without an arrival, e.g. fixed remotely); the system only
auto-resolves when the device clears and reopens a resolved incident when its fault recurs.
Closing always stays a human step.
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


def figures(rows: list[IncidentTimes]) -> dict[str, object]:
    """Counts and time-to-acknowledge / time-to-resolve (mean and p90, seconds) of incidents."""
    tta = [float(r.acked_at - r.opened_at) for r in rows if r.acked_at is not None]
    ttr = [float(r.resolved_at - r.opened_at) for r in rows if r.resolved_at is not None]
    return {
        "found": len(rows),
        "acknowledged": len(tta),
        "resolved": len(ttr),
        "closed": sum(1 for r in rows if r.closed_at is not None),
        "time_to_acknowledge": _seconds(tta),
        "time_to_resolve": _seconds(ttr),
    }


def closed_loop_stats(rows: Iterable[IncidentTimes]) -> dict[str, object]:
    """Figures over all incidents, per unit and per kind."""
    every = list(rows)
    by_unit: dict[str, list[IncidentTimes]] = {}
    by_kind: dict[str, list[IncidentTimes]] = {}
    for r in every:
        by_unit.setdefault(r.unit, []).append(r)
        by_kind.setdefault(r.kind, []).append(r)
    return {
        "total": figures(every),
        "units": {u: figures(v) for u, v in sorted(by_unit.items())},
        "kinds": {k: figures(v) for k, v in sorted(by_kind.items())},
    }
