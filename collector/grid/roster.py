"""Units, members, shifts and rotations changed through the API, in force without a restart.

The units of collector.toml are the seed; a unit put through the API replaces the seed's unit
of that id or adds one. The alarm engine gets the merged units at once (`set_config`) and asks
`assignee` who is on call each time it opens an incident.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa

from collector.alarms import repo as incidents_repo
from collector.alarms.config import AlarmsConfig, Member, Unit
from collector.alarms.engine import AlarmEngine
from collector.alarms.lifecycle import ACTIVE_STATES
from collector.grid.shifts import OnCall, Rotation, Shift, covering, on_call
from collector.grid.tables import roster_rotations, roster_shifts, roster_units

MAX_SHIFT_MS = 31 * 86_400_000
DEFAULT_HANDOVER_MS = 12 * 3_600_000


def unit_document(unit: Unit) -> dict[str, Any]:
    """A unit as an `[alarms.units.<id>]` table that validates back to the same unit
    (durations written with their unit: a bare number would be read as seconds)."""
    doc = unit.model_dump(mode="json", by_alias=True)
    for stage in doc["escalation"]:
        if stage.get("after") is not None:
            stage["after"] = f"{stage['after']}ms"
    return doc


class RosterError(ValueError):
    """A roster change that names something unknown or breaks a limit (status: 404/409/422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Roster:
    """The units the alarm engine pages, and who of each is on call at a moment."""

    def __init__(self, db: sa.Engine, engine: AlarmEngine,
                 clock: Callable[[], int] | None = None) -> None:
        self.db, self.alarms = db, engine
        self.clock: Callable[[], int] = clock or self._engine_now
        self.seed: AlarmsConfig = engine.cfg
        self.api_units: dict[str, Unit] = {}

    def _engine_now(self) -> int:
        return self.alarms.clock()  # read at each call: the engine's clock can be replaced

    def open(self) -> Roster:
        """Load the units put through the API and take over the engine's choice of assignee."""
        self.refresh()
        self.alarms.assignee = self.assignee
        self.alarms.roster_now = self.unit_now
        return self

    def refresh(self) -> None:
        """Re-read the API's units and give the engine the merged set."""
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(roster_units.c.unit_id, roster_units.c.body))
            self.api_units = {r.unit_id: Unit.model_validate(orjson.loads(r.body))
                              for r in rows}
        units = {**self.seed.units, **self.api_units}
        self.alarms.set_config(self.seed.model_copy(update={"units": units}))

    @property
    def units(self) -> dict[str, Unit]:
        """Every unit in force."""
        return self.alarms.cfg.units

    def unit(self, unit_id: str) -> Unit:
        """One unit in force; RosterError 404 when there is none."""
        unit = self.units.get(unit_id)
        if unit is None:
            raise RosterError(404, f"no unit {unit_id!r}")
        return unit

    def _member(self, unit_id: str, name: str) -> Member:
        member = next((m for m in self.unit(unit_id).members if m.name == name), None)
        if member is None:
            raise RosterError(422, f"{name!r} is not a member of unit {unit_id!r}")
        return member

    # --- units ------------------------------------------------------------------------------

    def put_unit(self, unit_id: str, unit: Unit, who: str) -> None:
        """Create or replace a unit (its members and escalation chain)."""
        body = orjson.dumps(unit_document(unit)).decode()
        with self.db.begin() as conn:
            conn.execute(sa.delete(roster_units).where(roster_units.c.unit_id == unit_id))
            conn.execute(sa.insert(roster_units).values(unit_id=unit_id, body=body,
                                                        updated_at=self.clock(),
                                                        updated_by=who))
        self.refresh()

    def delete_unit(self, unit_id: str) -> None:
        """Remove a unit put through the API (the seed's come back, if any)."""
        if unit_id not in self.api_units:
            raise RosterError(404 if unit_id not in self.units else 409,
                              f"unit {unit_id!r} is not one put through the API")
        with self.db.begin() as conn:
            conn.execute(sa.delete(roster_units).where(roster_units.c.unit_id == unit_id))
        self.refresh()

    def source(self, unit_id: str) -> str:
        """Where a unit comes from: "api" or "config"."""
        return "api" if unit_id in self.api_units else "config"

    # --- shifts and rotations ----------------------------------------------------------------

    def shifts(self, unit_id: str, since: int | None = None) -> list[dict[str, Any]]:
        """Shifts of a unit that end after `since` (default: now), earliest first."""
        s = roster_shifts
        since = self.clock() if since is None else since
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(s).where(s.c.unit_id == unit_id, s.c.ends_at > since)
                                .order_by(s.c.starts_at, s.c.id)).mappings()
            return [dict(r) for r in rows]

    def add_shift(self, unit_id: str, member: str, starts_at: int, ends_at: int, who: str,
                  note: str = "", handover_from: str | None = None) -> int:
        """Put a member on call over [starts_at, ends_at); return the shift's id."""
        self._member(unit_id, member)
        if not starts_at < ends_at <= starts_at + MAX_SHIFT_MS:
            raise RosterError(422, "a shift ends after it starts, at most 31 days later")
        with self.db.begin() as conn:
            res = conn.execute(sa.insert(roster_shifts).values(
                unit_id=unit_id, member=member, starts_at=starts_at, ends_at=ends_at,
                note=note, handover_from=handover_from, created_at=self.clock(),
                created_by=who))
            key = res.inserted_primary_key
            assert key is not None
            return int(key[0])

    def delete_shift(self, unit_id: str, shift_id: int) -> None:
        """Cancel a shift."""
        s = roster_shifts
        with self.db.begin() as conn:
            gone = conn.execute(sa.delete(s).where(s.c.id == shift_id, s.c.unit_id == unit_id))
        if gone.rowcount == 0:
            raise RosterError(404, f"no shift {shift_id} of unit {unit_id!r}")

    def set_rotation(self, unit_id: str, members: list[str], starts_at: int, period_ms: int,
                     who: str) -> None:
        """Members take turns of `period_ms`, the first from `starts_at`."""
        for name in members:
            self._member(unit_id, name)
        r = roster_rotations
        with self.db.begin() as conn:
            conn.execute(sa.delete(r).where(r.c.unit_id == unit_id))
            conn.execute(sa.insert(r).values(unit_id=unit_id,
                                             members=orjson.dumps(members).decode(),
                                             starts_at=starts_at, period_ms=period_ms,
                                             updated_at=self.clock(), updated_by=who))

    def rotation(self, unit_id: str) -> Rotation | None:
        """The unit's rotation, if it has one."""
        r = roster_rotations
        with self.db.connect() as conn:
            row = conn.execute(sa.select(r).where(r.c.unit_id == unit_id)).first()
        return None if row is None else Rotation(tuple(orjson.loads(row.members)),
                                                 row.starts_at, row.period_ms)

    def delete_rotation(self, unit_id: str) -> None:
        """End the unit's rotation."""
        with self.db.begin() as conn:
            conn.execute(sa.delete(roster_rotations)
                         .where(roster_rotations.c.unit_id == unit_id))

    def _shifts_at(self, unit_id: str, now: int) -> list[Shift]:
        s = roster_shifts
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(s.c.id, s.c.member, s.c.starts_at, s.c.ends_at)
                                .where(s.c.unit_id == unit_id, s.c.starts_at <= now,
                                       s.c.ends_at > now))
            return [Shift(r.id, r.member, r.starts_at, r.ends_at) for r in rows]

    def on_call(self, unit_id: str, now: int | None = None) -> OnCall:
        """Who of a unit is on call at a moment (default now), and why."""
        now = self.clock() if now is None else now
        return on_call(self.units.get(unit_id), self._shifts_at(unit_id, now),
                       self.rotation(unit_id), now)

    def assignee(self, unit_id: str, now: int) -> Member | None:
        """The engine's hook: the member a new incident of this unit goes to now."""
        return self.on_call(unit_id, now).member

    def unit_now(self, unit_id: str, now: int) -> Unit | None:
        """The unit with `on_call` set on the one member a shift or the rotation puts on call
        at a moment (the roster's own flags when neither does)."""
        unit = self.units.get(unit_id)
        oc = self.on_call(unit_id, now)
        if unit is None or oc.member is None or oc.why in ("roster", "nobody"):
            return unit
        name = oc.member.name
        members = tuple(m.model_copy(update={"on_call": m.name == name}) for m in unit.members)
        return unit.model_copy(update={"members": members})

    # --- hand-over --------------------------------------------------------------------------

    def handover(self, unit_id: str, to: str, who: str, note: str = "",
                 until: int | None = None) -> dict[str, Any]:
        """`to` takes over now: a shift from now (to the end of the current turn, else 12 h),
        and the unit's active incidents of the one handing over move to `to`."""
        now = self.clock()
        self._member(unit_id, to)
        current = self.on_call(unit_id, now)
        end = until or current.until or now + DEFAULT_HANDOVER_MS
        before = current.member.name if current.member else None
        if before == to:
            raise RosterError(409, f"{to!r} is already on call for {unit_id!r}")
        shift = covering(self._shifts_at(unit_id, now), now)
        sid = self.add_shift(unit_id, to, now, end, who, note, handover_from=before)
        if shift is not None and shift.member == before and shift.ends_at <= end:
            with self.db.begin() as conn:  # the outgoing shift ends at the hand-over
                conn.execute(sa.update(roster_shifts).where(roster_shifts.c.id == shift.id)
                             .values(ends_at=now))
        moved = self._move_incidents(unit_id, before, to, who, now) if before else []
        return {"shift": sid, "from": before, "to": to, "until": end, "incidents": moved}

    def _move_incidents(self, unit_id: str, before: str, to: str, who: str,
                        now: int) -> list[int]:
        eng = self.alarms
        with eng.lock:
            with self.db.begin() as conn:
                rows = incidents_repo.list_incidents(conn, list(ACTIVE_STATES), [unit_id],
                                                     100_000)
                moved = [r for r in rows if r["assignee"] == before]
                for r in moved:
                    incidents_repo.update_incident(conn, r["id"], {
                        "assignee": to, "assigned_at": now, "updated_at": now})
                    incidents_repo.add_history(conn, r["id"], now, r["state"], r["state"], who,
                                               f"hand-over: {before} → {to}", event="assigned")
                    eng.publish_incident(conn, r["id"])
            eng.flush_changes()
        return [r["id"] for r in moved]
