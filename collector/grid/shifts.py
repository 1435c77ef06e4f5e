"""Who of a unit is on call at a moment: shifts, then the rotation, then the roster's flag.

Pure: the roster service reads shifts and the rotation, this decides. Invariants: a shift
covers [starts_at, ends_at); of several covering shifts the latest started (then the latest
created) wins, so a hand-over — a shift starting now — takes over without editing the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collector.alarms.config import Member, Unit
from collector.alarms.policy import pick_assignee


@dataclass(frozen=True, slots=True)
class Shift:
    """One member on call for a unit over [starts_at, ends_at)."""

    id: int
    member: str
    starts_at: int
    ends_at: int


@dataclass(frozen=True, slots=True)
class Rotation:
    """Members taking turns of `period_ms` each, the first from `starts_at`."""

    members: tuple[str, ...]
    starts_at: int
    period_ms: int

    def turn(self, now: int) -> tuple[str, int, int] | None:
        """(member, turn start, turn end) at a moment, or None before the rotation starts."""
        if not self.members or self.period_ms <= 0 or now < self.starts_at:
            return None
        n = (now - self.starts_at) // self.period_ms
        start = self.starts_at + n * self.period_ms
        return self.members[n % len(self.members)], start, start + self.period_ms


@dataclass(frozen=True, slots=True)
class OnCall:
    """Who is on call, why, and until when (None: no end known)."""

    member: Member | None
    why: str
    until: int | None = None


def covering(shifts: Sequence[Shift], now: int) -> Shift | None:
    """The shift in force at a moment: the latest started of those covering it."""
    live = [s for s in shifts if s.starts_at <= now < s.ends_at]
    return max(live, key=lambda s: (s.starts_at, s.id)) if live else None


def on_call(unit: Unit | None, shifts: Sequence[Shift], rotation: Rotation | None,
            now: int) -> OnCall:
    """The member a new incident of this unit goes to now."""
    members = {m.name: m for m in (unit.members if unit else ())}
    shift = covering([s for s in shifts if s.member in members], now)
    if shift is not None:
        return OnCall(members[shift.member], f"shift {shift.id}", shift.ends_at)
    turn = rotation.turn(now) if rotation is not None else None
    if turn is not None and turn[0] in members:
        return OnCall(members[turn[0]], "rotation", turn[2])
    picked = pick_assignee(unit)
    return OnCall(picked, "roster" if picked is not None else "nobody")
