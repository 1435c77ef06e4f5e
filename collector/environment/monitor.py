"""Site thresholds after each committed ingest batch, and the site views behind the REST API.

`EnvironmentMonitor.on_stored` is the Ingest hook (runs in the ingest writer thread after the
batch committed). It evaluates the rules of docs/hj212.md, keeps alarm episodes in
``env_alarms`` and hands every raise/clear to ``on_alarm`` — the bridge to the general alarm
engine. Rule state (how long NOx has been above) lives in memory; raised alarms are reloaded
from the table at start, so a restart never raises an alarm twice.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from collector import schema
from collector.clock import now_ms
from collector.environment.config import EnvironmentConfig, Site
from collector.environment.rules import (
    HOUR_MS,
    Change,
    DurationState,
    HourlyState,
    district_average,
    duration_step,
    hourly_step,
    running,
    unpurified,
)
from collector.environment.tables import env_alarms
from collector.store import Accepted, Store
from devices.contract import DataEnvelope
from devices.hj212.normalise import Interval, series_id, split_series_id

log = logging.getLogger(__name__)

NOX_RULE, PM10_RULE = "nox_limit", "pm10_district"
FUME_RULE, UNPURIFIED_RULE = "fume_limit", "fan_without_purifier"
FUME_QUANTITIES = frozenset({"cooking_fume", "fan_state", "fan_current", "purifier_state",
                             "purifier_current"})
SERIES = (Interval.REALTIME, Interval.MINUTE, Interval.HOUR, Interval.DAY)


@dataclass(frozen=True, slots=True)
class EnvAlarm:
    """A raise or clear of a site threshold alarm, as handed to `on_alarm`."""

    site: str
    district: str
    rule: str
    quantity: str
    action: str  # "raise" | "clear"
    ts: int  # observation time, epoch ms
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True, slots=True)
class Observation:
    """One value of a site device as stored: series id, quantity, time, value, quality."""

    device: str
    quantity: str
    ts: int
    value: float
    quality: str


class EnvironmentMonitor:
    """Evaluates site thresholds on ingest and answers site queries; one per collector."""

    def __init__(self, store: Store, config: EnvironmentConfig, *,
                 on_alarm: Callable[[EnvAlarm], None] | None = None,
                 now: Callable[[], int] = now_ms) -> None:
        self.store = store
        self.config = config
        self.on_alarm = on_alarm or (lambda alarm: None)
        self.now = now
        self.site_of: dict[str, Site] = {d: s for s in config.sites for d in s.devices}
        self.counters = {"evaluated": 0, "raised": 0, "cleared": 0, "errors": 0}
        self._nox: dict[str, DurationState] = {}
        self._pm10: dict[str, HourlyState] = {}
        self._fume: dict[str, DurationState] = {}
        self._unpurified: dict[str, DurationState] = {}
        self._lock = threading.Lock()
        self._loaded = False

    # --- ingest hook -----------------------------------------------------------------------

    def on_stored(self, items: list[Accepted]) -> None:
        """Ingest hook: evaluate the rules on a committed batch; never raises into ingest."""
        observations = [
            Observation(r.device, q, r.ts, float(v), r.q)
            for a in items if isinstance(a.envelope, DataEnvelope)
            for r in a.envelope.readings
            if split_series_id(r.device)[0] in self.site_of
            for q, v in r.values.items() if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if not observations:
            return
        try:
            self.evaluate(observations)
        except Exception:
            self.counters["errors"] += 1
            log.exception("environment: rule evaluation failed; the data is stored")

    def evaluate(self, observations: Iterable[Observation]) -> list[EnvAlarm]:
        """Run every rule over new observations; persist and announce the changes."""
        with self._lock:
            self._load()
            changes: list[EnvAlarm] = []
            hours: set[tuple[str, int]] = set()
            kitchens: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)
            for ob in sorted(observations, key=lambda o: o.ts):
                self.counters["evaluated"] += 1
                device, interval = split_series_id(ob.device)
                site = self.site_of[device]
                if site.kind == "boiler" and interval is Interval.REALTIME and \
                        ob.quantity == "nox_converted" and ob.quality == "good":
                    changes.extend(self._nox_step(site, ob))
                elif site.kind == "dust" and interval is Interval.HOUR and ob.quantity == "pm10":
                    hours.add((site.district, ob.ts - ob.ts % HOUR_MS))
                elif site.kind == "restaurant" and interval is Interval.REALTIME and \
                        ob.quantity in FUME_QUANTITIES and ob.quality == "good":
                    kitchens[(ob.ts, site.id)][ob.quantity] = ob.value
            for (ts, site_id), values in sorted(kitchens.items()):
                changes.extend(self._kitchen_step(self.site_of_id(site_id), ts, values))
            for district, hour in sorted(hours, key=lambda k: k[1]):
                changes.extend(self._district_hour(district, hour))
            self._persist(changes)
        for change in changes:
            try:
                self.on_alarm(change)
            except Exception:
                log.exception("environment: on_alarm callback failed for %s", change)
        return changes

    def _nox_step(self, site: Site, ob: Observation) -> list[EnvAlarm]:
        limits = self.config.limits_of(site)
        state, change = duration_step(self._nox.get(site.id, DurationState()), ob.ts, ob.value,
                                      limits.nox_limit, int(limits.nox_duration * 1000))
        self._nox[site.id] = state
        if change is None:
            return []
        what = (f"converted NOx {ob.value:g} mg/m³ above {limits.nox_limit:g} for"
                f" {limits.nox_duration:g} s" if change == "raise" else
                f"converted NOx back to {ob.value:g} mg/m³")
        return [self._alarm(site, NOX_RULE, "nox_converted", change, ob.ts, ob.value,
                            limits.nox_limit, what)]

    def site_of_id(self, site_id: str) -> Site:
        """The configured site of this id (it exists: observations are only of known sites)."""
        site = self.config.site(site_id)
        assert site is not None
        return site

    def _kitchen_step(self, site: Site, ts: int, values: dict[str, float]) -> list[EnvAlarm]:
        """One upload of a restaurant's fume monitor: the fume limit and the evasion rule."""
        limits = self.config.limits_of(site)
        out: list[EnvAlarm] = []
        fume = values.get("cooking_fume")
        if fume is not None:
            state, change = duration_step(self._fume.get(site.id, DurationState()), ts, fume,
                                          limits.fume_limit, int(limits.fume_duration * 1000))
            self._fume[site.id] = state
            if change is not None:
                what = (f"cooking fume {fume:g} mg/m³ above {limits.fume_limit:g} for"
                        f" {limits.fume_duration:g} s" if change == "raise" else
                        f"cooking fume back to {fume:g} mg/m³")
                out.append(self._alarm(site, FUME_RULE, "cooking_fume", change, ts, fume,
                                       limits.fume_limit, what))
        fan = running(values.get("fan_state"), values.get("fan_current"), limits.fan_on_current)
        purifier = running(values.get("purifier_state"), values.get("purifier_current"),
                           limits.purifier_on_current)
        evading = unpurified(fan, purifier)
        if evading is None:
            return out
        state, change = duration_step(self._unpurified.get(site.id, DurationState()), ts,
                                      1.0 if evading else 0.0, 0.5,
                                      int(limits.unpurified_hold * 1000))
        self._unpurified[site.id] = state
        if change is not None:
            what = (f"exhaust fan running with the fume purifier off for"
                    f" {limits.unpurified_hold:g} s" if change == "raise" else
                    "fume purifier running again (or the fan stopped)")
            out.append(self._alarm(site, UNPURIFIED_RULE, "purifier_state", change, ts,
                                   values.get("purifier_state"), None, what))
        return out

    def _district_hour(self, district: str, hour: int) -> list[EnvAlarm]:
        sites = [s for s in self.config.sites if s.kind == "dust" and s.district == district]
        values = self._hourly_pm10(sites, hour)
        average = district_average(values, self.config.min_district_sites)
        if average is None:
            return []
        out: list[EnvAlarm] = []
        for site in sites:
            if site.id not in values:
                continue
            limits = self.config.limits_of(site)
            excess = values[site.id] - average
            state = self._pm10.get(site.id, HourlyState({}))
            state, change = hourly_step(state, hour, excess > limits.pm10_margin,
                                        limits.pm10_hours)
            self._pm10[site.id] = state
            if change is not None:
                what = (f"hourly PM10 {values[site.id]:.0f} µg/m³ is {excess:.0f} above the"
                        f" district average {average:.0f} (margin {limits.pm10_margin:g})")
                out.append(self._alarm(site, PM10_RULE, "pm10", change, hour, values[site.id],
                                       average + limits.pm10_margin, what))
        return out

    def _hourly_pm10(self, sites: Sequence[Site], hour: int) -> dict[str, float]:
        """Each site's GOOD hourly PM10 for one hour (the last stored copy per device)."""
        series = {series_id(d, Interval.HOUR): s.id for s in sites for d in s.devices}
        r = schema.readings
        stmt = (sa.select(r.c.device_id, r.c.value).where(
            r.c.device_id.in_(list(series)), r.c.quantity == "pm10", r.c.ts >= hour,
            r.c.ts < hour + HOUR_MS,
            r.c.quality == "good", r.c.value.is_not(None)).order_by(r.c.seq))
        with self.store.engine.connect() as conn:
            last = {row.device_id: float(row.value) for row in conn.execute(stmt)}
        per_site: dict[str, list[float]] = defaultdict(list)
        for device, value in last.items():
            per_site[series[device]].append(value)
        return {site: sum(v) / len(v) for site, v in per_site.items()}

    def _alarm(self, site: Site, rule: str, quantity: str, change: Change, ts: int,
               value: float | None, threshold: float | None, message: str) -> EnvAlarm:
        return EnvAlarm(site.id, site.district, rule, quantity, str(change), ts, value,
                        threshold, message)

    def _persist(self, changes: Sequence[EnvAlarm]) -> None:
        if not changes:
            return
        t = env_alarms
        with self.store.engine.begin() as conn:
            for c in changes:
                active = (t.c.site_id == c.site) & (t.c.rule == c.rule) & t.c.active
                if c.action == "raise":
                    conn.execute(sa.insert(t).values(
                        site_id=c.site, rule=c.rule, quantity=c.quantity, active=True,
                        raised_at=c.ts, value=c.value, threshold=c.threshold,
                        message=c.message, updated=self.now()))
                    self.counters["raised"] += 1
                else:
                    conn.execute(sa.update(t).where(active).values(
                        active=False, cleared_at=c.ts, updated=self.now()))
                    self.counters["cleared"] += 1
                log.warning("environment: site %s %s %s: %s", c.site, c.rule, c.action,
                            c.message)

    def _load(self) -> None:
        """Take raised alarms from the table once, so a restart does not raise them again."""
        if self._loaded:
            return
        t = env_alarms
        with self.store.engine.connect() as conn:
            for row in conn.execute(sa.select(t.c.site_id, t.c.rule).where(t.c.active)):
                if row.rule == NOX_RULE:
                    self._nox[row.site_id] = DurationState(None, True)
                elif row.rule == PM10_RULE:
                    self._pm10[row.site_id] = HourlyState({}, True)
                elif row.rule == FUME_RULE:
                    self._fume[row.site_id] = DurationState(None, True)
                elif row.rule == UNPURIFIED_RULE:
                    self._unpurified[row.site_id] = DurationState(None, True)
        self._loaded = True

    # --- queries ---------------------------------------------------------------------------

    def alarms(self, *, active: bool | None = None, site: str | None = None,
               limit: int = 500) -> list[dict[str, Any]]:
        """Alarm episodes, newest first."""
        t = env_alarms
        stmt = sa.select(t).order_by(t.c.raised_at.desc(), t.c.id.desc()).limit(limit)
        if active is not None:
            stmt = stmt.where(t.c.active == active)
        if site is not None:
            stmt = stmt.where(t.c.site_id == site)
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def latest_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Latest stored value per series and quantity, grouped by site id."""
        series = {series_id(d, i): s.id for s in self.config.sites for d in s.devices
                  for i in SERIES}
        t = schema.latest
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        if not series:
            return out
        with self.store.engine.connect() as conn:
            for row in conn.execute(sa.select(t).where(t.c.device_id.in_(list(series))))\
                    .mappings():
                out[series[row["device_id"]]].append(dict(row))
        return out

    def faulty_devices(self) -> set[str]:
        """Site devices with a fault raised by their gateway (e.g. instrument_fault)."""
        t = schema.active_faults
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.device_id).where(
                t.c.device_id.in_(list(self.site_of))))
            return {r.device_id for r in rows}

    def history(self, site: Site, quantity: str | None, interval: Interval, since: int | None,
                until: int | None, limit: int) -> list[dict[str, Any]]:
        """Stored readings of a site's devices for one period, in time order."""
        rows: list[dict[str, Any]] = []
        for device in site.devices:
            sid = series_id(device, interval)
            rows += [{**r, "device": sid} for r in
                     self.store.readings(sid, quantity, since, until, limit)]
        rows.sort(key=lambda r: (r["ts"], r["device"]))
        return rows[:limit]

    def newest_values(self, site: Site, quantity: str, since: int,
                      limit: int = 20_000) -> list[dict[str, Any]]:
        """A site's real-time values of one quantity since a time, newest first (bounded)."""
        r = schema.readings
        stmt = (sa.select(r.c.ts, r.c.value, r.c.quality)
                .where(r.c.device_id.in_(list(site.devices)), r.c.quantity == quantity,
                       r.c.ts >= since)
                .order_by(r.c.ts.desc()).limit(limit))
        with self.store.engine.connect() as conn:
            return [dict(x) for x in conn.execute(stmt).mappings()]

    def run_above(self, site: Site, quantity: str, limit: float,
                  since: int) -> tuple[int, bool] | None:
        """Start of the current run of measurements above `limit` (looked for since `since`):
        (ts, exact), exact False when the run is older than `since`; None without one.

        Two indexed queries (the last measurement at or below the limit, then the first above
        it after that), whatever the reporting rate.
        """
        r = schema.readings
        where = (r.c.device_id.in_(list(site.devices)), r.c.quantity == quantity,
                 r.c.ts >= since, r.c.quality != "bad", r.c.value.is_not(None))
        with self.store.engine.connect() as conn:
            last_ok = conn.scalar(sa.select(sa.func.max(r.c.ts)).where(*where,
                                                                       r.c.value <= limit))
            start = conn.scalar(sa.select(sa.func.min(r.c.ts)).where(
                *where, r.c.value > limit, r.c.ts > (last_ok if last_ok is not None else -1)))
        return None if start is None else (int(start), last_ok is not None)
