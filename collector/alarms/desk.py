"""What people do with incidents and silences, and what they read: the service behind the API."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from collector.alarms import repo
from collector.alarms.card import conditions, describe, gather
from collector.alarms.engine import AlarmEngine
from collector.alarms.lifecycle import State, closed_loop_stats, next_state
from collector.alarms.policy import RouteQuery
from collector.alarms.views import alarm_view, history_view, silence_view

MAX_NOTE = 2000
_STAMPS = {
    State.ACKNOWLEDGED: ("acked_at", "acked_by"),
    State.ON_SITE: ("arrived_at", "arrived_by"),
    State.RESOLVED: ("resolved_at", "resolved_by"),
    State.CLOSED: ("closed_at", "closed_by"),
}
_GUARDED = (State.RESOLVED, State.CLOSED)  # steps refused while the condition is present


class IncidentNotFound(LookupError):
    """No incident with that id."""

    def __init__(self, incident_id: int) -> None:
        super().__init__(f"no incident {incident_id}")
        self.incident_id = incident_id


class ConditionPresent(ValueError):
    """Resolve or close asked while the device still reports the condition, without override."""

    def __init__(self, incident_id: int, device: str, state: str, action: str,
                 present: list[str]) -> None:
        self.incident_id, self.state, self.action = incident_id, state, action
        self.conditions = present
        super().__init__(f"{device} still reports {', '.join(present)}: {action} needs "
                         "override=true and a reason (say why it is safe)")


class NotAllowed(PermissionError):
    """A step the caller's role or unit does not allow; the message says which."""


class BadRequest(ValueError):
    """A request that names something unknown or breaks a limit; the message says which."""


class IncidentDesk:
    """Lifecycle steps by people, silences, and the read side of alarms and incidents."""

    def __init__(self, engine: AlarmEngine) -> None:
        self.engine = engine

    @property
    def _db(self) -> Any:
        return self.engine.store.engine

    def _views(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        eng = self.engine
        return describe(conn, eng.cfg, eng.public_url, rows, eng.clock())

    def transition(self, incident_id: int, action: str, who: str, note: str = "", *,
                   override: bool = False, reason: str = "") -> dict[str, Any]:
        """Apply ack / arrive / resolve / close.

        Raise IllegalTransition, IncidentNotFound, or ConditionPresent when resolve or close
        is asked while the device still reports the condition and `override` is not set.
        """
        eng = self.engine
        now = eng.clock()
        with eng.lock:
            with self._db.begin() as conn:
                inc = _incident(conn, incident_id)
                current = State(inc["state"])
                target = next_state(incident_id, current, action)
                forced = self._forced(conn, inc, target, action, override, reason)
                at, by = _STAMPS[target]
                values: dict[str, Any] = {"state": target, at: now, by: who, "updated_at": now}
                if target == State.RESOLVED:
                    values["reopen_state"] = current
                if forced:
                    values["overrides"] = inc["overrides"] + 1
                repo.update_incident(conn, incident_id, values)
                repo.add_history(conn, incident_id, now, current, target, who,
                                 note[:MAX_NOTE], override_reason=reason[:MAX_NOTE] if forced
                                 else None, conditions=forced or None)
                if target == State.CLOSED:
                    repo.close_alarms_of(conn, incident_id)
                row = eng.publish_incident(conn, incident_id)
            if target == State.CLOSED:
                eng.book.end_incident(incident_id)
                eng.book.dirty.clear()  # already written by close_alarms_of
            eng.flush_changes()
        with self._db.connect() as conn:
            return self._views(conn, [row])[0]

    def _forced(self, conn: sa.Connection, inc: dict[str, Any], target: State, action: str,
                override: bool, reason: str) -> list[str]:
        """The conditions a resolve/close overrides ([] when none); raise when not allowed."""
        if target not in _GUARDED:
            return []
        present = conditions(inc, gather(conn, self.engine.cfg, [inc]), self.engine.cfg)
        if not present:
            return []
        if not override:
            raise ConditionPresent(inc["id"], inc["device_id"], inc["state"], action, present)
        if not reason.strip():
            raise BadRequest(f"override of {', '.join(present)} needs a reason")
        return present

    def assign(self, incident_id: int, *, member: str | None, unit: str | None, who: str,
               units: list[str] | None, note: str = "") -> dict[str, Any]:
        """Give an incident to another member and/or unit (`units`: where `who` may act)."""
        eng = self.engine
        now = eng.clock()
        with eng.lock:
            with self._db.begin() as conn:
                inc = _incident(conn, incident_id)
                if inc["state"] == State.CLOSED:
                    raise BadRequest(f"incident {incident_id} is closed")
                target = unit or inc["unit"]
                if units is not None and target not in units:
                    raise NotAllowed(f"{who} may assign only within units {units}")
                crew = eng.cfg.units.get(target)
                if crew is None:
                    raise BadRequest(f"no unit {target!r} (known: {sorted(eng.cfg.units)})")
                chosen = next((m for m in crew.members if m.name == member), None) \
                    if member else eng.on_call(target, now)
                if member and chosen is None:
                    raise BadRequest(f"{member!r} is not a member of unit {target!r}")
                values: dict[str, Any] = {"assignee": chosen.name if chosen else None,
                                          "assigned_at": now, "updated_at": now}
                if target != inc["unit"]:
                    values.update(unit=target, unit_since=now)  # the new unit's chain starts
                repo.update_incident(conn, incident_id, values)
                text = f"assigned to {values['assignee'] or 'nobody'} ({target})"
                repo.add_history(conn, incident_id, now, inc["state"], inc["state"], who,
                                 f"{text}: {note}"[:MAX_NOTE] if note else text,
                                 event="assigned")
                row = eng.publish_incident(conn, incident_id)
            eng.flush_changes()
        with self._db.connect() as conn:
            return self._views(conn, [row])[0]

    def incident(self, incident_id: int) -> dict[str, Any]:
        """One incident with its history, or raise IncidentNotFound."""
        with self._db.connect() as conn:
            inc = _incident(conn, incident_id)
            steps = repo.history(conn, incident_id)
            view = self._views(conn, [inc])[0]
        return {**view, "history": [history_view(h) for h in steps]}

    def incidents(self, states: list[str] | None, units: list[str] | None,
                  limit: int = 500, urgency: bool = False,
                  where: repo.IncidentFilter | None = None) -> list[dict[str, Any]]:
        """Incidents newest (or most urgent) first, filtered by states and units (None: any)."""
        with self._db.connect() as conn:
            return self._views(conn, repo.list_incidents(conn, states, units, limit, urgency,
                                                         where))

    def history(self, incident_id: int) -> list[dict[str, Any]]:
        """The steps of an incident, oldest first (transitions, notes, overrides, pages)."""
        with self._db.connect() as conn:
            _incident(conn, incident_id)
            return [history_view(h) for h in repo.history(conn, incident_id)]

    def note(self, incident_id: int, who: str, note: str) -> dict[str, Any]:
        """Add a note to an incident's history without changing its state."""
        eng = self.engine
        with eng.lock, self._db.begin() as conn:
            inc = _incident(conn, incident_id)
            repo.add_history(conn, incident_id, eng.clock(), inc["state"], inc["state"],
                             who, note[:MAX_NOTE], event="note")
        return self.incident(incident_id)

    def stats(self, since: int, units: list[str] | None = None) -> dict[str, Any]:
        """Closed-loop figures for incidents opened since a time."""
        with self._db.connect() as conn:
            rows = repo.incident_times(conn, since, units, self.engine.cfg.arrive_within_ms)
        return closed_loop_stats(rows, self.engine.clock())

    def alarms(self, active: bool | None, limit: int = 1000) -> list[dict[str, Any]]:
        """Alarm episodes newest first."""
        with self._db.connect() as conn:
            return [alarm_view(r) for r in repo.list_alarms(conn, active, limit)]

    # --- silences -----------------------------------------------------------------------------

    def unit_of(self, site: str | None, device: str | None, kind: str | None) -> tuple[str, str]:
        """(site, responsible unit) of what a silence names, as routing would decide."""
        sites = self.engine.book.sites
        with self._db.connect() as conn:
            gateway = ""
            if device is not None:
                gateway = repo.gateway_of(conn, device)
                found = sites.site_of(device, gateway)
                if site is not None and site != found:
                    raise BadRequest(f"device {device!r} is at site {found!r}, not {site!r}")
                site = found
            assert site is not None
            routed = self.engine.route_for(conn, RouteQuery(kind or "", site, device or "",
                                                            gateway))
        return site, routed.unit

    def add_silence(self, *, site: str | None, device: str | None, kind: str | None,
                    starts_at: int, ends_at: int, who: str, reason: str, role: str = "ops",
                    units: tuple[str, ...] = (), life_safety: bool = False) -> dict[str, Any]:
        """Create a maintenance window, within what the caller's role allows.

        Crew: only a site or device of their own unit, at most `crew_silence_max` long, never
        life-safety kinds. Ops: anything; holding life-safety kinds back needs a reason.
        """
        cfg = self.engine.cfg
        life_safety = life_safety or kind in cfg.life_safety_kinds
        scope = ""
        if role != "ops":
            if life_safety:
                raise NotAllowed(f"only ops may silence life-safety kinds "
                                 f"({', '.join(cfg.life_safety_kinds)})")
            if site is None and device is None:
                raise NotAllowed("crew silences must name a site or a device of their unit")
            _site, scope = self.unit_of(site, device, kind)
            if scope not in units:
                raise NotAllowed(f"{who} may silence only sites and devices of units "
                                 f"{list(units)}, not of {scope or 'no unit'!r}")
            if ends_at - starts_at > cfg.crew_silence_max_ms:
                raise BadRequest(f"crew silences last at most "
                                 f"{cfg.crew_silence_max_ms // 60_000} min "
                                 "([alarms] crew_silence_max)")
        elif life_safety and not reason.strip():
            raise BadRequest("a silence that holds back life-safety kinds needs a reason")
        now = self.engine.clock()
        with self.engine.lock:
            with self._db.begin() as conn:
                sid = repo.insert_silence(conn, {
                    "site": site, "device_id": device, "kind": kind, "starts_at": starts_at,
                    "ends_at": ends_at, "created_by": who, "reason": reason,
                    "created_at": now, "role": "ops" if role == "ops" else "crew",
                    "unit": scope, "life_safety": life_safety})
            self._reload_silences(now)
        return self._silence(sid, now)

    def delete_silence(self, silence_id: int, who: str, role: str = "ops",
                       units: tuple[str, ...] = ()) -> bool:
        """End a silence early (kept, with who and when); False when there is no such silence.

        Crew may end only crew silences of their own units.
        """
        now = self.engine.clock()
        with self.engine.lock:
            with self._db.begin() as conn:
                row = repo.get_silence(conn, silence_id)
                if row is None or row["deleted_at"] is not None:
                    return False
                if role != "ops" and (row["role"] == "ops" or row["unit"] not in units):
                    raise NotAllowed(f"silence {silence_id} was set by {row['created_by']} "
                                     f"({row['role']}); crew may end only their unit's "
                                     "crew silences")
                found = repo.delete_silence(conn, silence_id, who, now)
            self._reload_silences(now)
        return found

    def silences(self, include_expired: bool = False, include_deleted: bool = False,
                 units: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Silences (current and future unless more is asked); `units` limits to those scopes
        and ops-wide ones."""
        now = self.engine.clock()
        with self._db.connect() as conn:
            rows = repo.list_silences(conn, now, include_expired, include_deleted)
        if units is not None:
            rows = [r for r in rows if r["unit"] in units or r["role"] == "ops"]
        return [silence_view(r, now) for r in rows]

    def _silence(self, silence_id: int, now: int) -> dict[str, Any]:
        with self._db.connect() as conn:
            row = repo.get_silence(conn, silence_id)
        assert row is not None
        return silence_view(row, now)

    def _reload_silences(self, now: int) -> None:
        with self._db.connect() as conn:
            rows = repo.list_silences(conn, now, False)
        self.engine.set_silences([repo.silence_of(r) for r in rows])


def _incident(conn: sa.Connection, incident_id: int) -> dict[str, Any]:
    """The stored incident, or IncidentNotFound."""
    inc = repo.get_incident(conn, incident_id)
    if inc is None:
        raise IncidentNotFound(incident_id)
    return inc
