"""The in-memory book of live alarms: folds events, readings and gateway states into alarm episodes.

No database and no clock here: the engine loads the book at start, feeds it what the ingest
stored, and writes back only the rows the book marks dirty. Readings touch memory only; a
database write happens on a transition (raise, clear), never per reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from collector.alarms.config import AlarmsConfig, ThresholdRule
from collector.alarms.policy import (
    DEVICE_OFFLINE,
    GATEWAY_OFFLINE,
    NORMAL,
    SITE_DEVICE,
    AlarmKey,
    SiteIndex,
    ThresholdState,
    gateway_all_offline,
    rule_applies,
    step_threshold,
)
from collector.alarms.repo import AlarmRow
from collector.store import Accepted
from devices.contract import DataEnvelope, WireEvent, WireReading

# A gateway_offline alarm lists at most this many of its devices (the count is always exact).
MAX_LISTED_DEVICES = 1000


class AlarmBook:
    """Live alarm episodes by dedup key, plus what grouping and thresholds need to remember."""

    def __init__(self, cfg: AlarmsConfig) -> None:
        self.cfg = cfg
        self.sites = SiteIndex.from_config(cfg)
        self._rules: dict[str, list[tuple[int, ThresholdRule]]] = {}
        for i, rule in enumerate(cfg.thresholds):
            self._rules.setdefault(rule.quantity, []).append((i, rule))
        self._reset()

    def _reset(self) -> None:
        self.live: dict[AlarmKey, AlarmRow] = {}
        self.waiting: set[AlarmKey] = set()  # active, no incident yet: decide again on tick
        self.since: dict[AlarmKey, int] = {}  # collector time an episode became active
        self.dirty: dict[int, AlarmRow] = {}  # rows to write, by object identity
        self.to_resolve: set[int] = set()  # incidents whose alarm cleared
        self.to_reopen: set[int] = set()  # incidents whose alarm raised again
        self.touched: set[AlarmKey] = set()
        self._inhibitors: dict[str, set[AlarmKey]] = {}  # site -> active group alarms
        self._thr: dict[tuple[int, str], ThresholdState] = {}  # only non-normal states
        self._device_gw: dict[str, str] = {}
        self.inventory: dict[str, set[str]] = {}
        self._offline: dict[str, set[str]] = {}  # gateway -> devices reporting device_offline
        self._down: set[str] = set()  # gateways whose last state message said offline
        self._site_members: dict[tuple[str, str], set[str]] = {}

    # --- loading ----------------------------------------------------------------------------

    def restore(self, rows: Sequence[AlarmRow], inventory: dict[str, set[str]],
                raised: Iterable[tuple[str, str]], gateway_states: dict[str, str],
                now: int) -> None:
        """Rebuild memory from the database after a start or a failed write."""
        self._reset()
        for gw, devs in inventory.items():
            for d in devs:
                self.learn(d, gw)
        self._down = {g for g, s in gateway_states.items() if s == "offline"}
        for device, kind in raised:
            gw = self._device_gw.get(device, "")
            if kind == DEVICE_OFFLINE:
                self._offline.setdefault(gw, set()).add(device)
            else:
                self._site_members.setdefault((self.sites.site_of(device, gw), kind),
                                              set()).add(device)
        for row in rows:
            self.live[row.key] = row
            if row.active:
                self._set_group(row, True)
                if row.incident_id is None:
                    self.waiting.add(row.key)
                    self.since[row.key] = now
                if row.source == "threshold":
                    self._restore_threshold(row)

    def _restore_threshold(self, row: AlarmRow) -> None:
        for i, rule in enumerate(self.cfg.thresholds):
            if rule.kind == row.kind and rule_applies(rule, row.device, row.site):
                self._thr[(i, row.device)] = ThresholdState("active", row.first_seen,
                                                            row.last_seen)

    def learn(self, device: str, gateway: str) -> None:
        """Remember which gateway a device reports through (for all-devices-offline)."""
        old = self._device_gw.get(device)
        if old == gateway:
            return
        if old is not None:
            self.inventory.get(old, set()).discard(device)
        self._device_gw[device] = gateway
        self.inventory.setdefault(gateway, set()).add(device)

    # --- input ------------------------------------------------------------------------------

    def absorb(self, items: Sequence[Accepted], now: int) -> None:
        """Fold stored envelopes into the book; changed keys collect in `touched`."""
        for a in items:
            env = a.envelope
            if isinstance(env, DataEnvelope):
                for r in env.readings:
                    self.learn(r.device, a.gateway)
                    if r.q == "good":
                        self._evaluate(a.gateway, r, now)
                continue
            for e in sorted(env.events, key=lambda e: e.ts):
                self.learn(e.device, a.gateway)
                self._apply_event(a.gateway, e, now)

    def gateway_state(self, gateway: str, state: str, devices: Iterable[str], now: int) -> None:
        """Fold a gateway's birth/death message (and its device inventory) into the book."""
        for d in devices:
            self.learn(d, gateway)
        if state == "offline":
            self._down.add(gateway)
        else:
            self._down.discard(gateway)
        self._gateway_group(gateway, now)

    def _evaluate(self, gateway: str, r: WireReading, now: int) -> None:
        for q, v in r.values.items():
            rules = self._rules.get(q)
            if not rules or not isinstance(v, int | float) or isinstance(v, bool):
                continue
            site = self.sites.site_of(r.device, gateway)
            for i, rule in rules:
                if not rule_applies(rule, r.device, site):
                    continue
                state, change = step_threshold(self._thr.get((i, r.device), NORMAL), rule,
                                               float(v), r.ts)
                if state.phase == "normal":
                    self._thr.pop((i, r.device), None)
                else:
                    self._thr[(i, r.device)] = state
                key = (site, r.device, rule.kind)
                limit = rule.above if rule.above is not None else rule.below
                if change == "raise":
                    self.raise_(key, gateway, "threshold", rule.severity, r.ts, now,
                                f"{q} = {v} beyond {limit}", {q: v, "limit": limit})
                elif change == "clear":
                    self.clear(key, r.ts)

    def _apply_event(self, gateway: str, e: WireEvent, now: int) -> None:
        if e.action == "info" or e.kind in self.cfg.ignore_kinds:
            return
        site = self.sites.site_of(e.device, gateway)
        if e.kind in self.cfg.site_kinds:
            members = self._site_members.setdefault((site, e.kind), set())
            if e.action == "raise":
                members.add(e.device)
                self.raise_((site, SITE_DEVICE, e.kind), gateway, "group", e.severity, e.ts,
                            now, e.message, {"devices": len(members), "last": e.device})
            else:
                members.discard(e.device)
                if not members:
                    self.clear((site, SITE_DEVICE, e.kind), e.ts)
            return
        key = (site, e.device, e.kind)
        if e.action == "raise":
            self.raise_(key, gateway, "event", e.severity, e.ts, now, e.message,
                        dict(e.evidence))
        else:
            self.clear(key, e.ts)
        if e.kind == DEVICE_OFFLINE:
            offline = self._offline.setdefault(gateway, set())
            (offline.add if e.action == "raise" else offline.discard)(e.device)
            self._gateway_group(gateway, now)

    def _gateway_group(self, gateway: str, now: int) -> None:
        inventory = self.inventory.get(gateway, set())
        down = gateway in self._down or gateway_all_offline(inventory,
                                                            self._offline.get(gateway, set()))
        key = self._gateway_key(gateway, inventory)
        row = self.live.get(key)
        active = row is not None and row.active
        if down and not active:
            why = "state offline" if gateway in self._down else "all devices offline"
            devices = sorted(inventory)
            # Collector time on both edges: the gateway's clock may not be trusted here.
            self.raise_(key, gateway, "group", "major", now, now, f"gateway {why}",
                        {"devices": len(devices), "why": why,
                         "device_ids": devices[:MAX_LISTED_DEVICES]})
        elif not down and active:
            self.clear(key, now)

    def _gateway_key(self, gateway: str, inventory: set[str]) -> AlarmKey:
        """The one dedup key of a gateway being down, whatever sites its devices are at.

        A gateway serving several sites is one fault, so one episode: at its own site, at the
        one site all its devices share, or at `gw:<gateway>`. A live episode keeps its key.
        """
        for key in self.live:
            if key[1] == gateway and key[2] == GATEWAY_OFFLINE:
                return key
        sites = {self.sites.site_of(d, gateway) for d in inventory}
        own = self.sites.by_gateway.get(gateway)
        site = own or (sites.pop() if len(sites) == 1 else f"gw:{gateway}")
        return (site, gateway, GATEWAY_OFFLINE)

    # --- episodes ---------------------------------------------------------------------------

    def raise_(self, key: AlarmKey, gateway: str, source: str, severity: str, ts: int,
               now: int, message: str, evidence: dict[str, Any]) -> None:
        """Raise an alarm: a new episode, a recurrence (occurrences + 1) or a repeat."""
        row = self.live.get(key)
        if row is not None and not row.active and row.cleared_at is not None:
            if ts < row.cleared_at:
                return  # an old raise arriving after its clear
            if row.incident_id is None and ts - row.cleared_at > self.cfg.flap_window_ms:
                self._end(row)
                row = None
        if row is None:
            row = AlarmRow(site=key[0], device=key[1], kind=key[2], gateway=gateway,
                           source=source, severity=severity, first_seen=ts, last_seen=ts,
                           message=message, evidence=evidence)
            self.live[key] = row
            self._became_active(row, now)
        elif not row.active:
            row.active, row.cleared_at = True, None
            row.occurrences += 1
            row.last_seen, row.severity, row.message = ts, severity, message
            row.evidence = evidence
            if row.incident_id is not None:
                self.to_reopen.add(row.incident_id)
            else:
                self._became_active(row, now)
        else:
            row.last_seen = max(row.last_seen, ts)
            row.evidence = evidence
        self._set_group(row, True)
        self._mark(row)

    def clear(self, key: AlarmKey, ts: int) -> None:
        """Clear an active alarm; its incident, if any, is due for auto-resolve."""
        row = self.live.get(key)
        if row is None or not row.active or ts < row.last_seen:
            return
        row.active, row.cleared_at = False, ts
        self._set_group(row, False)
        self.waiting.discard(key)
        if row.incident_id is not None:
            self.to_resolve.add(row.incident_id)
        self._mark(row)

    def _became_active(self, row: AlarmRow, now: int) -> None:
        self.waiting.add(row.key)
        self.since[row.key] = now

    def _end(self, row: AlarmRow) -> None:
        row.closed = True
        self._set_group(row, False)
        self.live.pop(row.key, None)
        self.waiting.discard(row.key)
        self.since.pop(row.key, None)
        self._mark(row)

    def _mark(self, row: AlarmRow) -> None:
        self.dirty[id(row)] = row
        self.touched.add(row.key)

    def _set_group(self, row: AlarmRow, active: bool) -> None:
        if row.source != "group":
            return
        # A gateway down explains its devices' alarms at every site; a site alarm, its site's.
        scope = f"gw:{row.gateway}" if row.kind == GATEWAY_OFFLINE else row.site
        group = self._inhibitors.setdefault(scope, set())
        (group.add if active else group.discard)(row.key)

    def inhibitor(self, row: AlarmRow) -> str | None:
        """The active site-wide or gateway-wide alarm that explains this per-device alarm."""
        if row.source == "group":
            return None
        group = self._inhibitors.get(row.site, set()) | \
            self._inhibitors.get(f"gw:{row.gateway}", set())
        if not group:
            return None
        return "/".join(min(group))

    def end_incident(self, incident_id: int) -> None:
        """Forget the episodes of a closed incident: the next raise starts a new one."""
        for row in [r for r in self.live.values() if r.incident_id == incident_id]:
            self._end(row)

    def sweep(self, now: int) -> None:
        """End cleared episodes without incident once their flap window has passed."""
        # cleared_at is device time: with an unsynchronised device this only ends an episode
        # early or late, which changes grouping of flaps, never whether anyone is paged.
        stale = [r for r in self.live.values()
                 if not r.active and r.incident_id is None and r.cleared_at is not None
                 and now - r.cleared_at > self.cfg.flap_window_ms]
        for row in stale:
            self._end(row)
