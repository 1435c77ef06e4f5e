"""What people do with incidents and silences, and what they read: the service behind the API."""

from __future__ import annotations

from typing import Any

from collector.alarms import repo
from collector.alarms.engine import AlarmEngine
from collector.alarms.lifecycle import State, closed_loop_stats, next_state
from collector.alarms.views import alarm_view, history_view, incident_view, silence_view

MAX_NOTE = 2000
_STAMPS = {
    State.ACKNOWLEDGED: ("acked_at", "acked_by"),
    State.ON_SITE: ("arrived_at", "arrived_by"),
    State.RESOLVED: ("resolved_at", "resolved_by"),
    State.CLOSED: ("closed_at", "closed_by"),
}


class IncidentNotFound(LookupError):
    """No incident with that id."""

    def __init__(self, incident_id: int) -> None:
        super().__init__(f"no incident {incident_id}")
        self.incident_id = incident_id


class IncidentDesk:
    """Lifecycle steps by people, silences, and the read side of alarms and incidents."""

    def __init__(self, engine: AlarmEngine) -> None:
        self.engine = engine

    @property
    def _db(self) -> Any:
        return self.engine.store.engine

    def transition(self, incident_id: int, action: str, who: str,
                   note: str = "") -> dict[str, Any]:
        """Apply ack / arrive / resolve / close; raise IllegalTransition or IncidentNotFound."""
        eng = self.engine
        now = eng.clock()
        with eng.lock:
            with self._db.begin() as conn:
                inc = repo.get_incident(conn, incident_id)
                if inc is None:
                    raise IncidentNotFound(incident_id)
                current = State(inc["state"])
                target = next_state(incident_id, current, action)
                at, by = _STAMPS[target]
                values: dict[str, Any] = {"state": target, at: now, by: who, "updated_at": now}
                if target == State.RESOLVED:
                    values["reopen_state"] = current
                repo.update_incident(conn, incident_id, values)
                repo.add_history(conn, incident_id, now, current, target, who,
                                 note[:MAX_NOTE])
                if target == State.CLOSED:
                    repo.close_alarms_of(conn, incident_id)
                row = eng.publish_incident(conn, incident_id)
            if target == State.CLOSED:
                eng.book.end_incident(incident_id)
                eng.book.dirty.clear()  # already written by close_alarms_of
            eng.flush_changes()
        return incident_view(row, eng.public_url)

    def incident(self, incident_id: int) -> dict[str, Any]:
        """One incident with its history, or raise IncidentNotFound."""
        with self._db.connect() as conn:
            inc = repo.get_incident(conn, incident_id)
            if inc is None:
                raise IncidentNotFound(incident_id)
            steps = repo.history(conn, incident_id)
        return {**incident_view(inc, self.engine.public_url),
                "history": [history_view(h) for h in steps]}

    def incidents(self, states: list[str] | None, units: list[str] | None,
                  limit: int = 500) -> list[dict[str, Any]]:
        """Incidents newest first, filtered by states and units (None: any)."""
        with self._db.connect() as conn:
            rows = repo.list_incidents(conn, states, units, limit)
        return [incident_view(r, self.engine.public_url) for r in rows]

    def stats(self, since: int, units: list[str] | None = None) -> dict[str, Any]:
        """Closed-loop figures for incidents opened since a time."""
        with self._db.connect() as conn:
            rows = repo.incident_times(conn, since, units)
        return closed_loop_stats(rows)

    def alarms(self, active: bool | None, limit: int = 1000) -> list[dict[str, Any]]:
        """Alarm episodes newest first."""
        with self._db.connect() as conn:
            return [alarm_view(r) for r in repo.list_alarms(conn, active, limit)]

    # --- silences -----------------------------------------------------------------------------

    def add_silence(self, *, site: str | None, device: str | None, kind: str | None,
                    starts_at: int, ends_at: int, who: str, reason: str) -> dict[str, Any]:
        """Create a maintenance window; it takes effect for alarms decided from now on."""
        now = self.engine.clock()
        with self.engine.lock:
            with self._db.begin() as conn:
                sid = repo.insert_silence(conn, {
                    "site": site, "device_id": device, "kind": kind, "starts_at": starts_at,
                    "ends_at": ends_at, "created_by": who, "reason": reason,
                    "created_at": now})
            self._reload_silences(now)
        return self._silence(sid, now)

    def delete_silence(self, silence_id: int, who: str) -> bool:
        """End a silence early; False when there is no such silence."""
        now = self.engine.clock()
        with self.engine.lock:
            with self._db.begin() as conn:
                found = repo.delete_silence(conn, silence_id, who, now)
            self._reload_silences(now)
        return found

    def silences(self, include_expired: bool = False) -> list[dict[str, Any]]:
        """Silences not deleted (current and future unless expired ones are asked for)."""
        now = self.engine.clock()
        with self._db.connect() as conn:
            rows = repo.list_silences(conn, now, include_expired)
        return [silence_view(r, now) for r in rows]

    def _silence(self, silence_id: int, now: int) -> dict[str, Any]:
        with self._db.connect() as conn:
            rows = repo.list_silences(conn, 0, True)
        return next(silence_view(r, now) for r in rows if r["id"] == silence_id)

    def _reload_silences(self, now: int) -> None:
        with self._db.connect() as conn:
            rows = repo.list_silences(conn, now, False)
        self.engine.set_silences([repo.silence_of(r) for r in rows])
