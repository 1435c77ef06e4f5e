"""The alarm engine: turns what the ingest stored into alarms, incidents and pages.

One engine per database. It runs in three threads' worth of callers — the ingest writer
(`on_stored`), the MQTT thread (`on_gateway_state`), the escalation worker (`tick`) and the API
(`transition`, silences) — serialised by one lock. Notices go out after the commit that created
them, and an escalation stage is marked sent only after `notify` accepted it, so a crash in
between repeats a notice rather than losing it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from collector.alarms import repo
from collector.alarms.book import AlarmBook
from collector.alarms.card import card_fields, describe, escalation_view, gather
from collector.alarms.config import AlarmsConfig, Member, Unit
from collector.alarms.lifecycle import ACTIVE_STATES, State, can_auto_resolve, reopen_to
from collector.alarms.notices import incident_title, page_notice
from collector.alarms.policy import (
    DEVICE_OFFLINE,
    AlarmKey,
    Assignee,
    RouteDecision,
    RouteQuery,
    Silence,
    config_route,
    decide,
    due_escalations,
    pick_assignee,
    silenced_by,
    stage_label,
)
from collector.alarms.tables import incidents
from collector.broadcast import Broadcast
from collector.clock import now_ms
from collector.notify.model import Notice
from collector.store import Accepted, Store

log = logging.getLogger(__name__)

Notify = Callable[[str, Notice], object]  # e.g. NotifyQueue(store).enqueue
Router = Callable[[sa.Connection, RouteQuery], RouteDecision]
_HELD = {"page": "", "wait": "wait", "silenced": "silenced:", "suppressed": "suppressed:"}


@dataclass
class EngineStats:
    """Counters of the alarm engine."""

    transitions: int = 0
    incidents_opened: int = 0
    notices: int = 0
    notify_errors: int = 0
    write_errors: int = 0


@dataclass
class _Page:
    incident: dict[str, Any]
    stages: list[int] = field(default_factory=list)


class AlarmEngine:
    """Alarms from events, thresholds and gateway states; incidents, escalation and notices."""

    def __init__(self, store: Store, config: AlarmsConfig, notify: Notify, *,
                 public_url: str, bus: Broadcast | None = None,
                 clock: Callable[[], int] = now_ms) -> None:
        self.store = store
        self.cfg = config
        self.notify = notify
        self.public_url = public_url
        self.bus = bus or Broadcast()
        self.clock = clock
        self.stats = EngineStats()
        self.book = AlarmBook(config)
        self._silences: list[Silence] = []
        self._lock = threading.RLock()
        self._changed: dict[int, dict[str, Any]] = {}
        self._reload = True
        self.router: Router = lambda _conn, q: config_route(q, self.cfg, self.book.sites)
        self.assignee: Assignee = lambda unit, _now: pick_assignee(self.cfg.units.get(unit))
        # A unit as it stands at a moment: whose `on_call` flag is set follows shifts, so later
        # escalation stages mention whoever is on call then.
        self.roster_now: Callable[[str, int], Unit | None] = \
            lambda unit, _now: self.cfg.units.get(unit)

    def set_site_resolver(self, resolve: Callable[[str | None, str], str | None]) -> None:
        """Let sites the config does not list be found (e.g. in the gateway registry)."""
        with self._lock:
            self.book.sites = replace(self.book.sites, resolve=resolve)

    def set_config(self, config: AlarmsConfig) -> None:
        """Use new units and rosters from now on (sites and thresholds stay as loaded)."""
        with self._lock:
            self.cfg = config

    def route_for(self, conn: sa.Connection, query: RouteQuery) -> RouteDecision:
        """Where an incident of this kind at this site would go now, and why."""
        return self.router(conn, query)

    def on_call(self, unit: str, now: int | None = None) -> Member | None:
        """Who of a unit gets a new incident now."""
        return self.assignee(unit, self.clock() if now is None else now)

    def load(self) -> None:
        """Read live alarms, silences and what the collector knows of gateways and faults."""
        now = self.clock()
        with self._lock, self.store.engine.connect() as conn:
            self.book.restore(repo.live_alarms(conn), repo.inventory(conn),
                              repo.raised_faults(conn, [DEVICE_OFFLINE, *self.cfg.site_kinds]),
                              repo.gateway_states(conn), now)
            self._silences = [repo.silence_of(r) for r in repo.list_silences(conn, now, False)]
            self._reload = False

    # --- hooks --------------------------------------------------------------------------------

    def report(self, site: str, device: str, kind: str, severity: str, message: str,
               evidence: dict[str, Any]) -> int | None:
        """An event a person found (patrol, citizen): an alarm that pages at once, routed and
        tracked like a device's; `evidence["found_by"]` is recorded. Return its incident id
        (None when it could not be stored: the caller answers 503)."""
        key = (site, device, kind)
        self._guarded(lambda now: self.book.raise_(key, "", "report", severity, now, now,
                                                   message, evidence))
        row = self.book.live.get(key)
        return None if row is None else row.incident_id

    def on_stored(self, items: list[Accepted]) -> None:
        """Ingest hook: called in the writer thread after each committed batch; never raises."""
        self._guarded(lambda now: self.book.absorb(items, now))

    def on_gateway_state(self, gateway: str, state: str,
                         devices: Iterable[str] = ()) -> None:
        """State-message hook: a gateway went online or offline (its LWT); never raises."""
        self._guarded(lambda now: self.book.gateway_state(gateway, state, devices, now))

    def tick(self, now: int | None = None) -> None:
        """Worker step: decide waiting alarms, expire silences, send due escalation stages."""
        now = self.clock() if now is None else now
        with self._lock:
            if self._reload:
                self.load()
            self._silences = [s for s in self._silences if s.ends_at > now]
            self.book.sweep(now)
            self._run(now, list(self.book.waiting), escalate=True)

    def _guarded(self, feed: Callable[[int], None]) -> None:
        now = self.clock()
        try:
            with self._lock:
                if self._reload:
                    self.load()
                feed(now)
                if self.book.touched:
                    self._run(now, list(self.book.touched), escalate=False)
        except Exception:
            # The ingest writer must keep going; the events stay stored, memory is rebuilt.
            self.stats.write_errors += 1
            self._reload = True
            log.exception("alarms: cannot apply stored batch; reloading alarm state")

    def _run(self, now: int, keys: Sequence[AlarmKey], *, escalate: bool) -> None:
        self.book.touched.clear()
        try:
            with self.store.engine.begin() as conn:
                pages = self._settle(conn, keys, now)
                if escalate:
                    live = repo.list_incidents(conn, list(ACTIVE_STATES), None, 100_000)
                    fired = repo.escalations_of(conn, [i["id"] for i in live])
                    for inc in live:
                        if inc["id"] not in pages:
                            self._add_due(pages, inc, now, fired.get(inc["id"], []))
        except Exception:
            self._reload = True
            self._changed.clear()
            raise
        self.book.dirty.clear()
        self._send(list(pages.values()), now)  # pages first; the streams follow (in _send)

    # --- deciding ------------------------------------------------------------------------------

    def _flush(self, conn: sa.Connection) -> None:
        for row in self.book.dirty.values():
            repo.save_alarm(conn, row)
        self.book.dirty.clear()

    def _settle(self, conn: sa.Connection, keys: Sequence[AlarmKey],
                now: int) -> dict[int, _Page]:
        pages: dict[int, _Page] = {}
        self._flush(conn)
        self._auto_resolve(conn, now)
        self._reopen(conn, now)
        for key in keys:
            row = self.book.live.get(key)
            if row is None or not row.active or row.incident_id is not None:
                self.book.waiting.discard(key)
                continue
            d = decide(key, self.book.since.get(key, now), now,
                       is_group=row.source == "group", immediate=row.kind in
                       self.cfg.immediate_kinds or row.source == "report",
                       group_wait_ms=self.cfg.group_wait_ms,
                       inhibitor=self.book.inhibitor(row),
                       silence=silenced_by(self._silences, key, now,
                                           row.kind in self.cfg.life_safety_kinds))
            held = _HELD[d.verdict] + d.by
            if d.verdict == "page":
                inc = self._open_incident(conn, row.key, now)
                self._add_due(pages, inc, now, [])
            if row.held != held:
                row.held = held
                self.book.dirty[id(row)] = row
        self._flush(conn)
        return pages

    def _open_incident(self, conn: sa.Connection, key: AlarmKey, now: int) -> dict[str, Any]:
        row = self.book.live[key]
        site = self.cfg.sites.get(row.site)
        routed = self.router(conn, RouteQuery(row.kind, row.site, row.device, row.gateway,
                                              row.evidence))
        unit = routed.unit
        title = incident_title(row.kind, row.severity, site.name if site and site.name
                               else row.site, row.device)
        member = self.assignee(unit, now)
        found_by = str(row.evidence.get("found_by", "patrol")) if row.source == "report" \
            else "device"
        iid = repo.insert_incident(conn, {
            "alarm_id": row.id, "unit": unit, "site": row.site, "grid": routed.grid,
            "area": routed.area, "district": routed.district, "found_by": found_by,
            "route_reason": routed.reason, "kind": row.kind,
            "device_id": row.device, "gateway_id": row.gateway, "severity": row.severity,
            "title": title, "state": State.OPEN, "occurrences": row.occurrences,
            "opened_at": now, "updated_at": now, "stages_sent": 0, "unit_since": now,
            "assignee": member.name if member else None,
            "assigned_at": now if member else None})
        repo.add_history(conn, iid, now, None, State.OPEN, "system",
                         f"{row.source} alarm: {row.message}".strip(": "), event="opened")
        row.incident_id = iid
        self.book.waiting.discard(key)
        self.book.dirty[id(row)] = row
        self.stats.incidents_opened += 1
        if not unit:
            log.warning("alarms: incident %d (%s at %s) matches no route and has no unit",
                        iid, row.kind, row.site)
        return self._changed_row(conn, iid)

    def _auto_resolve(self, conn: sa.Connection, now: int) -> None:
        # No notice on auto-resolve: a flapping fault would page once per flap. Crews see the
        # change live on the crew page; closing stays theirs. A life-safety incident is never
        # resolved by the device: a controller that stops reporting a trapped passenger has not
        # shown that anyone is out, so it waits, flagged, for a person.
        for iid in sorted(self.book.to_resolve):
            inc = repo.get_incident(conn, iid)
            if inc is None or inc["state"] == State.CLOSED:
                continue
            state = State(inc["state"])
            if inc["kind"] in self.cfg.life_safety_kinds or not can_auto_resolve(state):
                if inc["device_cleared_at"] is None:
                    repo.update_incident(conn, iid, {"device_cleared_at": now,
                                                     "updated_at": now})
                    repo.add_history(conn, iid, now, state, state, "system",
                                     "cleared by device, awaiting confirmation"
                                     if can_auto_resolve(state)
                                     else "device reported the condition cleared",
                                     event="device_cleared")
                    self._changed_row(conn, iid)
                continue
            repo.update_incident(conn, iid, {
                "state": State.RESOLVED, "resolved_at": now, "resolved_by": "system",
                "reopen_state": inc["state"], "updated_at": now, "device_cleared_at": now})
            repo.add_history(conn, iid, now, inc["state"], State.RESOLVED, "system",
                             "device reported the condition cleared", event="auto_resolved")
            self._changed_row(conn, iid)
        self.book.to_resolve.clear()

    def _reopen(self, conn: sa.Connection, now: int) -> None:
        for iid in sorted(self.book.to_reopen):
            inc = repo.get_incident(conn, iid)
            if inc is None or inc["state"] == State.CLOSED:
                continue
            values: dict[str, Any] = {"occurrences": inc["occurrences"] + 1, "updated_at": now,
                                      "device_cleared_at": None}
            note = f"condition recurred (occurrence {values['occurrences']})"
            if inc["state"] == State.RESOLVED:
                back = reopen_to(inc["reopen_state"])
                values.update(state=back, resolved_at=None, resolved_by=None)
                repo.add_history(conn, iid, now, State.RESOLVED, back, "system", note,
                                 event="recurred")
            elif inc["device_cleared_at"] is not None:
                repo.add_history(conn, iid, now, inc["state"], inc["state"], "system", note,
                                 event="recurred")
            repo.update_incident(conn, iid, values)
            self._changed_row(conn, iid)
        self.book.to_reopen.clear()

    def _changed_row(self, conn: sa.Connection, iid: int) -> dict[str, Any]:
        inc = repo.get_incident(conn, iid)
        assert inc is not None
        self._changed[iid] = inc
        self.stats.transitions += 1
        return inc

    # --- paging --------------------------------------------------------------------------------

    def _add_due(self, pages: dict[int, _Page], inc: dict[str, Any], now: int,
                 fired: list[dict[str, Any]]) -> None:
        unit = self.cfg.units.get(inc["unit"])
        chain = unit.escalation if unit else ()
        due = due_escalations(escalation_view(inc, self.cfg, fired), chain, now)
        if due:
            pages[inc["id"]] = _Page(inc, due)

    def _send(self, pages: list[_Page], now: int) -> None:
        if not pages:
            self._publish()
            return
        # A page carries what the crew card shows: where to go, the lift now, who is assigned.
        with self.store.engine.connect() as conn:
            facts = gather(conn, self.cfg, [p.incident for p in pages])
        for page in pages:
            inc = page.incident
            card = card_fields(inc, facts, self.cfg, now)
            unit = self.roster_now(inc["unit"], now)
            chain = unit.escalation if unit else ()
            out = [(c, page_notice(inc, i, unit, self.public_url, now, card))
                   for i in page.stages for c in chain[i].channels]
            try:
                for channel, notice in out:
                    self.notify(channel, notice)
                    self.stats.notices += 1
            except Exception:
                # Stage stays unsent: the next tick sends it again (at least once).
                self.stats.notify_errors += 1
                log.exception("alarms: cannot queue notice of incident %d", inc["id"])
                continue
            self._mark_sent(inc, page.stages, chain, now)
        self._publish()

    def _mark_sent(self, inc: dict[str, Any], stages: list[int], chain: Sequence[Any],
                   now: int) -> None:
        iid, unit = inc["id"], inc["unit"]
        with self.store.engine.begin() as conn:
            fired = 0
            for i in stages:
                stage = chain[i]
                if repo.add_escalation(conn, iid, unit, i, stage.when, stage.audience,
                                       list(stage.channels), now):
                    fired += 1
                    label = stage_label(stage.when, i)
                    repo.add_history(conn, iid, now, inc["state"], inc["state"], "system",
                                     f"escalation fired: {label} → {stage.audience}",
                                     event="escalation")
            if fired:
                conn.execute(sa.update(incidents).where(incidents.c.id == iid)
                             .values(stages_sent=incidents.c.stages_sent + fired))
                self._changed_row(conn, iid)

    def _publish(self) -> None:
        changed, self._changed = self._changed, {}
        if not changed:
            return
        with self.store.engine.connect() as conn:
            views = describe(conn, self.cfg, self.public_url, list(changed.values()),
                             self.clock())
        for view in views:
            self.bus.publish(view)

    # --- people ----------------------------------------------------------------------------------

    def publish_incident(self, conn: sa.Connection, iid: int) -> dict[str, Any]:
        """Note an incident changed by a person (the caller commits, then calls `flush_changes`)."""
        return self._changed_row(conn, iid)

    def flush_changes(self) -> None:
        """Publish the incidents changed since the last commit to the streams."""
        self._publish()

    @property
    def lock(self) -> threading.RLock:
        """The lock that serialises every change of alarms and incidents."""
        return self._lock

    def set_silences(self, silences: list[Silence]) -> None:
        """Replace the silences in force (after the API changed them)."""
        with self._lock:
            self._silences = list(silences)


async def run_escalations(engine: AlarmEngine, interval_s: float = 5.0) -> None:
    """Drive `engine.tick` every `interval_s` seconds until cancelled (run in a TaskGroup)."""
    while True:
        try:
            await asyncio.to_thread(engine.tick)
        except Exception:
            log.exception("alarms: escalation tick failed; retrying")
        await asyncio.sleep(interval_s)
