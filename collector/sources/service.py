"""The pollution-source loop: registry, truck tracks, attribution of exceedances, owner tasks.

`on_env_alarm` takes the environment monitor's alarms: a raise of a configured rule at a site
opens an exceedance at the site's point, ranks the registered sources around it (scoring.py)
and pushes the best to their responsible people as tasks; a clear marks the exceedance
recovered and closes the tasks whose owners have reported. `on_stored` keeps muck-truck fixes.
Everything the hooks do is bounded and never raises into ingest.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from collector import schema
from collector.alarms.policy import EscalationView, due_escalations
from collector.environment.config import EnvironmentConfig
from collector.notify.model import Fact, Notice
from collector.sources.geo import Fix, Located, SourceIndex, TruckGrid, bearing_deg, distance_m
from collector.sources.model import SourceIn, SourcesConfig
from collector.sources.scoring import Evidence, Scored, Wind, rank
from collector.sources.tables import exceedances, pollution_sources, source_tasks, truck_fixes
from collector.sources.tasks import AS_INCIDENT, Action, TaskError, step
from collector.store import Accepted, Store, now_ms
from devices.contract import DataEnvelope
from devices.hj212.normalise import Interval, series_id, split_series_id

log = logging.getLogger(__name__)

Enqueue = Callable[[str, Notice], int]
PHOTO_TYPES = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n"}
MAX_PHOTO = 2 * 1024 * 1024
MAX_REPORT = 2000


def key_hash(key: str) -> str:
    """SHA-256 (hex) of an owner's link key; only the hash is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Exceedance:
    """An air-quality exceedance at a point: where, when, what."""

    origin: str
    lat: float
    lon: float
    ts: int
    site_id: str = ""
    district: str = ""
    quantity: str = ""
    value: float | None = None


class SourcesService:
    """Registry, tracks, attribution and tasks of one collector (thread-safe)."""

    def __init__(self, store: Store, config: SourcesConfig, sites: EnvironmentConfig,
                 enqueue: Enqueue, *, public_url: str = "",
                 now: Callable[[], int] = now_ms) -> None:
        self.store = store
        self.config = config
        self.sites = sites
        self.enqueue = enqueue
        self.public_url = public_url.rstrip("/")
        self.now = now
        self.counters = {"exceedances": 0, "tasks_pushed": 0, "fixes": 0, "bad_fixes": 0,
                         "errors": 0, "escalations": 0}
        self.grid = TruckGrid(keep_ms=int(config.dwell_window * 1000) + 600_000,
                              max_trucks=config.max_trucks)
        self._lock = threading.RLock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._index = SourceIndex([])
        self._truck_of: dict[str, str] = {}  # tracker device id -> source id
        self._monitor_of: dict[str, str] = {}  # monitor device id -> source id
        self._monitor_values: dict[str, dict[str, tuple[int, float]]] = {}
        self._wind_sites = {series_id(d, i): s for s in sites.sites for d in s.devices
                            for i in (Interval.REALTIME, Interval.MINUTE, Interval.HOUR)}
        self._wind_values: dict[str, dict[str, tuple[int, float]]] = {}

    # --- registry ----------------------------------------------------------------------------

    def load(self) -> SourcesService:
        """Read the registry and the recent truck fixes into memory."""
        with self.store.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.select(pollution_sources)).mappings()]
            since = self.now() - self.grid.keep_ms
            fixes = [Fix(r.device_id, r.ts, r.lat, r.lon) for r in conn.execute(
                sa.select(truck_fixes.c.device_id, truck_fixes.c.ts, truck_fixes.c.lat,
                          truck_fixes.c.lon).where(truck_fixes.c.ts >= since))]
            t = schema.latest
            latest = conn.execute(sa.select(t.c.device_id, t.c.quantity, t.c.ts, t.c.value)
                                  .where(t.c.quantity.in_([*self.config.monitor_limits,
                                                           "wind_direction", "wind_speed"]),
                                         t.c.quality == "good", t.c.value.is_not(None))).all()
        with self._lock:
            self._rows = {r["id"]: _decoded(r) for r in rows}
            self._reindex()
            self.grid = TruckGrid(keep_ms=self.grid.keep_ms, max_trucks=self.grid.max_trucks)
            self.grid.add(fixes)
            for row in latest:
                self._remember(row.device_id, row.quantity, row.ts, float(row.value))
        return self

    def _reindex(self) -> None:
        fixed = [Located(r["id"], r["lat"], r["lon"], tuple(map(tuple, r["outline"])))
                 for r in self._rows.values() if r["kind"] != "muck_truck"]
        self._index = SourceIndex(fixed)
        self._truck_of = {d: r["id"] for r in self._rows.values() if r["kind"] == "muck_truck"
                          for d in r["devices"]}
        self._monitor_of = {d: r["id"] for r in self._rows.values() if r["kind"] != "muck_truck"
                            for d in r["devices"]}
        self._monitor_values = {d: v for d, v in self._monitor_values.items()
                                if d in self._monitor_of}

    def upsert(self, sources: Sequence[SourceIn]) -> dict[str, int]:
        """Insert or replace sources (one transaction); counts of created and updated."""
        now = self.now()
        t = pollution_sources
        rows = {s.id: {"id": s.id, **_row(s, now)} for s in sources}  # the last copy wins
        with self._lock, self.store.engine.begin() as conn:
            known: set[str] = set()
            ids = list(rows)
            for start in range(0, len(ids), 5000):
                known |= set(conn.scalars(sa.select(t.c.id).where(
                    t.c.id.in_(ids[start:start + 5000]))))
            new = [r for i, r in rows.items() if i not in known]
            old = [{**r, "key": i} for i, r in rows.items() if i in known]
            if new:
                conn.execute(sa.insert(t), new)
            if old:
                conn.execute(sa.update(t).where(t.c.id == sa.bindparam("key")).values(
                    {c.name: sa.bindparam(c.name) for c in t.c if c.name != "id"}), old)
            for i, r in rows.items():
                self._rows[i] = _decoded(r)
            self._reindex()
        return {"created": len(new), "updated": len(old)}

    def delete(self, source_id: str) -> bool:
        """Remove a source from the registry (its past tasks stay)."""
        with self._lock, self.store.engine.begin() as conn:
            gone = conn.execute(sa.delete(pollution_sources).where(
                pollution_sources.c.id == source_id)).rowcount
            if gone:
                self._rows.pop(source_id, None)
                self._reindex()
        return bool(gone)

    def source(self, source_id: str) -> dict[str, Any] | None:
        """One registered source, or None."""
        with self._lock:
            row = self._rows.get(source_id)
            return dict(row) if row else None

    def sources(self, *, kind: str | None = None, district: str | None = None,
                limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        """Registered sources in id order, filtered."""
        with self._lock:
            rows = [r for _, r in sorted(self._rows.items())
                    if (kind is None or r["kind"] == kind)
                    and (district is None or r["district"] == district)]
        return [dict(r) for r in rows[offset:offset + limit]]

    def geojson(self) -> dict[str, Any]:
        """Sources (points or outlines) and the trucks' last positions as a FeatureCollection."""
        features: list[dict[str, Any]] = []
        with self._lock:
            rows = list(self._rows.values())
            latest = self.grid.latest()
        for r in rows:
            props = {k: r[k] for k in ("id", "name", "kind", "district", "company",
                                       "contact_name", "contact_phone", "devices")}
            if r["kind"] == "muck_truck":
                fix = next((latest[d] for d in r["devices"] if d in latest), None)
                if fix is None:
                    continue
                geometry: dict[str, Any] = {"type": "Point", "coordinates": [fix.lon, fix.lat]}
                props["ts"] = fix.ts
            elif r["outline"]:
                ring = [list(p) for p in r["outline"]]
                geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
            else:
                geometry = {"type": "Point", "coordinates": [r["lon"], r["lat"]]}
            features.append({"type": "Feature", "id": r["id"], "geometry": geometry,
                             "properties": props})
        return {"type": "FeatureCollection", "features": features}

    # --- trucks ------------------------------------------------------------------------------

    def on_stored(self, items: list[Accepted]) -> None:
        """Ingest hook: keep truck fixes, source-monitor values and wind (never raises)."""
        readings = [r for a in items if isinstance(a.envelope, DataEnvelope)
                    for r in a.envelope.readings]
        fixes: list[tuple[Fix, float | None]] = []
        with self._lock:
            for r in readings:
                if r.q == "good" and (r.device in self._monitor_of or
                                      r.device in self._wind_sites):
                    for q, v in r.values.items():
                        if _number(v):
                            self._remember(r.device, q, r.ts, float(v))
        for r in readings:
            lat, lon = r.values.get("latitude"), r.values.get("longitude")
            if lat is None or lon is None:
                continue
            if r.q != "good" or not _number(lat) or not _number(lon):
                self.counters["bad_fixes"] += 1
                continue
            speed = r.values.get("vehicle_speed")
            fixes.append((Fix(r.device, r.ts, float(lat), float(lon)),
                          float(speed) if _number(speed) else None))
        if not fixes:
            return
        try:
            self._keep_fixes(fixes)
        except Exception:
            self.counters["errors"] += 1
            log.exception("sources: keeping truck fixes failed; the readings are stored")

    def _keep_fixes(self, fixes: Sequence[tuple[Fix, float | None]]) -> None:
        rows = {(f.device, f.ts): {"device_id": f.device, "ts": f.ts, "lat": f.lat,
                                   "lon": f.lon, "speed": s} for f, s in fixes}
        t = truck_fixes
        with self.store.engine.begin() as conn:
            have = {(r.device_id, r.ts) for r in conn.execute(sa.select(t.c.device_id, t.c.ts)
                    .where(t.c.device_id.in_({d for d, _ in rows}),
                           t.c.ts.in_({ts for _, ts in rows})))}
            new = [row for key, row in rows.items() if key not in have]
            if new:
                conn.execute(sa.insert(t), new)
        with self._lock:
            self.grid.add(f for f, _ in fixes)
        self.counters["fixes"] += len(fixes)

    def track(self, device: str, since: int | None, until: int | None,
              limit: int) -> list[dict[str, Any]]:
        """A truck's stored fixes in time order."""
        t = truck_fixes
        stmt = sa.select(t.c.ts, t.c.lat, t.c.lon, t.c.speed).where(t.c.device_id == device)
        if since is not None:
            stmt = stmt.where(t.c.ts >= since)
        if until is not None:
            stmt = stmt.where(t.c.ts < until)
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt.order_by(t.c.ts).limit(limit)).mappings()]

    def sweep(self) -> int:
        """Drop fixes past the retention; return how many went."""
        now = self.now()
        with self.store.engine.begin() as conn:
            gone = conn.execute(sa.delete(truck_fixes).where(
                truck_fixes.c.ts < now - int(self.config.truck_retention * 1000))).rowcount
        with self._lock:
            self.grid.prune(now)
        return int(gone or 0)

    # --- attribution -------------------------------------------------------------------------

    def attribute(self, lat: float, lon: float, ts: int, radius_m: float | None = None,
                  ) -> tuple[Wind | None, list[Scored], int]:
        """The best 100 sources around a point at a time, with reasons, and how many were
        considered (pushes nothing)."""
        radius = radius_m or self.config.radius_m
        cfg = self.config
        with self._lock:
            near = self._index.within(lat, lon, radius)
            dwells = self.grid.near(lat, lon, cfg.dwell_radius_m,
                                    ts - int(cfg.dwell_window * 1000), ts)
            rows = {s.id: self._rows[s.id] for s, _ in near if s.id in self._rows}
            trucks = {d.device: self._truck_of[d.device] for d in dwells
                      if d.device in self._truck_of}
            for sid in trucks.values():
                rows[sid] = self._rows[sid]
        ratios = self._monitor_ratios(rows.values(), ts)
        evidence = [Evidence(s.id, d, bearing_deg(lat, lon, s.lat, s.lon) if d > 0 else None,
                             *ratios.get(s.id, (None, ""))) for s, d in near]
        for dw in dwells:
            truck = trucks.get(dw.device)
            if truck is not None:
                evidence.append(Evidence(truck, dw.closest_m, bearing_deg(
                    lat, lon, dw.closest.lat, dw.closest.lon), dwell_min=dw.minutes))
        wind = self._wind(lat, lon, ts)
        return wind, rank(evidence, wind, cfg.weights), len(evidence)

    def _monitor_ratios(self, rows: Iterable[dict[str, Any]],
                        ts: int) -> dict[str, tuple[float, str]]:
        """Per source: the highest ratio of its monitors' recent GOOD readings to their limits."""
        limits = self.config.monitor_limits
        window = int(self.config.monitor_window * 1000)
        out: dict[str, tuple[float, str]] = {}
        for r in rows:
            for device in r["devices"]:
                for quantity, (seen, value) in self._monitor_values.get(device, {}).items():
                    if abs(seen - ts) > window:
                        continue
                    ratio = value / limits[quantity]
                    if r["id"] not in out or ratio > out[r["id"]][0]:
                        out[r["id"]] = (ratio, f"{quantity} {value:g} at {device}"
                                               f" (limit {limits[quantity]:g})")
        return out

    def _wind(self, lat: float, lon: float, ts: int) -> Wind | None:
        """Wind at the nearest station (environment site) with both direction and speed."""
        window = int(self.config.wind_window * 1000)
        best: Wind | None = None
        for series, values in sorted(self._wind_values.items()):
            direction, speed = values.get("wind_direction"), values.get("wind_speed")
            if direction is None or speed is None or abs(direction[0] - ts) > window \
                    or abs(speed[0] - ts) > window:
                continue
            site = self._wind_sites[series]
            d = distance_m(lat, lon, site.lat, site.lon)
            if best is None or d < best.distance_m:
                best = Wind(direction[1] % 360.0, max(0.0, speed[1]),
                            split_series_id(series)[0], d)
        return best

    def _remember(self, device: str, quantity: str, ts: int, value: float) -> None:
        """Keep the newest GOOD value of a source monitor or a wind station (in memory:
        attribution reads no database)."""
        if quantity in self.config.monitor_limits and device in self._monitor_of:
            table = self._monitor_values.setdefault(device, {})
        elif quantity in ("wind_direction", "wind_speed") and device in self._wind_sites:
            table = self._wind_values.setdefault(device, {})
        else:
            return
        if quantity not in table or table[quantity][0] <= ts:
            table[quantity] = (ts, value)

    # --- exceedances and tasks ---------------------------------------------------------------

    def on_env_alarm(self, alarm: Any) -> None:
        """Environment monitor hook: a raise opens an exceedance, a clear recovers it."""
        try:
            if alarm.rule not in self.config.rules:
                return
            site = self.sites.site(alarm.site)
            if site is None:
                return
            if alarm.action == "raise":
                self.open_exceedance(Exceedance(
                    f"alarm:{site.id}:{alarm.rule}", site.lat, site.lon, alarm.ts, site.id,
                    site.district, alarm.quantity, alarm.value))
            elif alarm.action == "clear":
                self.recovered(site.id, alarm.ts)
        except Exception:
            self.counters["errors"] += 1
            log.exception("sources: attribution of %s failed", alarm)

    def open_exceedance(self, ex: Exceedance) -> dict[str, Any]:
        """Record an exceedance, rank the sources around it and push the best as tasks."""
        wind, ranked, considered = self.attribute(ex.lat, ex.lon, ex.ts)
        now = self.now()
        wind_doc = {} if wind is None else {"direction": wind.direction, "speed": wind.speed,
                                            "station": wind.station,
                                            "distance_m": round(wind.distance_m)}
        chosen = [s for s in ranked if s.score >= self.config.min_score][:self.config.top]
        with self.store.engine.begin() as conn:
            eid = int(conn.execute(sa.insert(exceedances).values(
                origin=ex.origin, site_id=ex.site_id, district=ex.district, lat=ex.lat,
                lon=ex.lon, ts=ex.ts, quantity=ex.quantity, value=ex.value,
                wind=orjson.dumps(wind_doc).decode(),
                candidates=orjson.dumps([s.as_dict() for s in ranked[:50]]).decode(),
                created=now).returning(exceedances.c.id)).scalar_one())
            pushes = [self._new_task(conn, eid, ex, rank_no, s, now)
                      for rank_no, s in enumerate(chosen, 1)]
        self.counters["exceedances"] += 1
        for channel, notice in (p for p in pushes if p is not None):
            self.enqueue(channel, notice)
            self.counters["tasks_pushed"] += 1
        log.info("sources: exceedance %d at %s (%s): %d candidate(s), %d pushed", eid,
                    ex.site_id or f"{ex.lat:.5f},{ex.lon:.5f}", ex.origin, considered,
                    sum(p is not None for p in pushes))
        return self.exceedance(eid) or {}

    def _new_task(self, conn: sa.Connection, eid: int, ex: Exceedance, rank_no: int,
                  s: Scored, now: int) -> tuple[str, Notice] | None:
        row = self._rows.get(s.source_id)
        if row is None:
            return None
        key = secrets.token_urlsafe(24)
        tid = int(conn.execute(sa.insert(source_tasks).values(
            exceedance_id=eid, source_id=row["id"], company=row["company"],
            district=row["district"] or ex.district, rank=rank_no, score=s.score,
            state="pushed", key_hash=key_hash(key), pushed_at=now)
            .returning(source_tasks.c.id)).scalar_one())
        channel = row["channel"] or self.config.owner_channel
        if not channel:
            log.warning("sources: source %s has no push channel and [sources] owner_channel"
                        " is not set; task %d is recorded but not pushed", row["id"], tid)
            return None
        return channel, self._notice(tid, key, ex, rank_no, s, row, now)

    def _notice(self, tid: int, key: str, ex: Exceedance, rank_no: int, s: Scored,
                row: dict[str, Any], now: int) -> Notice:
        what = f"{ex.quantity} {ex.value:g}" if ex.value is not None else "air quality"
        where = ex.site_id or f"{ex.lat:.5f}, {ex.lon:.5f}"
        link = f"{self.public_url}/api/v1/sources/tasks/{tid}?key={key}"
        text = "\n".join([
            f"**{row['name'] or row['id']}** is candidate #{rank_no} (score {s.score:.0f}) for"
            f" an exceedance of {what} at {where}.", "",
            *(f"- {reason}" for reason in s.reasons), "",
            "Acknowledge, then report what you did (text and a photo) at the link."])
        facts = (Fact("source", "Source", row["name"] or row["id"]),
                 Fact("company", "Company", row["company"]),
                 Fact("contact", "Responsible", row["contact_name"],
                      href=f"tel:{row['contact_phone']}" if row["contact_phone"] else ""),
                 Fact("rank", "Rank", f"#{rank_no} of the candidates, score {s.score:.0f}"))
        return Notice(key=f"source-task-{tid}", title=f"[MAJOR] Pollution near your source"
                      f" {row['name'] or row['id']}: {what} at {where}", text=text,
                      severity="major", link=link, created_ms=now,
                      mention_phones=(row["contact_phone"],) if row["contact_phone"] else (),
                      emails=(row["contact_email"],) if row["contact_email"] else (),
                      facts=facts)

    def recovered(self, site_id: str, ts: int) -> list[int]:
        """The site's reading recovered: mark its open exceedances and close reported tasks."""
        if not site_id:
            return []
        e = exceedances
        with self.store.engine.connect() as conn:
            ids = list(conn.scalars(sa.select(e.c.id).where(
                e.c.site_id == site_id, e.c.recovered_at.is_(None))))
        self.recover(ids, ts)
        return ids

    def recover(self, ids: Sequence[int], ts: int) -> None:
        """Mark exceedances recovered (first time only) and close their reported tasks."""
        if not ids:
            return
        e, t = exceedances, source_tasks
        with self.store.engine.begin() as conn:
            conn.execute(sa.update(e).where(e.c.id.in_(ids), e.c.recovered_at.is_(None))
                         .values(recovered_at=ts))
            conn.execute(sa.update(t).where(t.c.exceedance_id.in_(ids), t.c.state == "reported")
                         .values(state="closed", closed_at=self.now(),
                                 closed_reason="recovered"))

    def exceedance(self, eid: int) -> dict[str, Any] | None:
        """One exceedance with its ranked candidates and its tasks."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(exceedances).where(exceedances.c.id == eid)) \
                .mappings().first()
            if row is None:
                return None
            tasks = [_task_public(dict(r)) for r in conn.execute(sa.select(source_tasks).where(
                source_tasks.c.exceedance_id == eid).order_by(source_tasks.c.rank)).mappings()]
        out = dict(row)
        out["wind"] = orjson.loads(out["wind"])
        out["candidates"] = orjson.loads(out["candidates"])
        out["tasks"] = tasks
        return out

    def exceedance_list(self, limit: int = 100) -> list[dict[str, Any]]:
        """Exceedances, newest first, without candidates."""
        e = exceedances
        cols = [c for c in e.c if c.name != "candidates"]
        with self.store.engine.connect() as conn:
            return [{**dict(r), "wind": orjson.loads(r["wind"])} for r in conn.execute(
                sa.select(*cols).order_by(e.c.id.desc()).limit(limit)).mappings()]

    def task(self, tid: int) -> dict[str, Any] | None:
        """One task (without its photo bytes)."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(source_tasks).where(source_tasks.c.id == tid)) \
                .mappings().first()
        return _task_public(dict(row)) if row else None

    def tasks(self, *, state: str | None = None, source: str | None = None,
              limit: int = 200) -> list[dict[str, Any]]:
        """Tasks, newest first."""
        t = source_tasks
        stmt = sa.select(t).order_by(t.c.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(t.c.state == state)
        if source:
            stmt = stmt.where(t.c.source_id == source)
        with self.store.engine.connect() as conn:
            return [_task_public(dict(r)) for r in conn.execute(stmt).mappings()]

    def owner_may(self, tid: int, key: str) -> bool:
        """Whether `key` is the owner's link key of this task (constant-time compare)."""
        with self.store.engine.connect() as conn:
            stored = conn.scalar(sa.select(source_tasks.c.key_hash).where(
                source_tasks.c.id == tid))
        return stored is not None and secrets.compare_digest(stored, key_hash(key))

    def act(self, tid: int, action: Action, *, text: str = "", who: str = "") -> dict[str, Any]:
        """Apply an owner's or inspector's action to a task (raises TaskError)."""
        if len(text) > MAX_REPORT:
            raise TaskError(f"the report is longer than {MAX_REPORT} characters", 422)
        t, e = source_tasks, exceedances
        now = self.now()
        with self.store.engine.begin() as conn:
            row = conn.execute(sa.select(t.c.state, e.c.recovered_at).join(
                e, e.c.id == t.c.exceedance_id).where(t.c.id == tid)).first()
            if row is None:
                raise TaskError(f"no task {tid}", 404)
            moved = step(row.state, action, recovered=row.recovered_at is not None)
            values: dict[str, Any] = {"state": moved.state}
            if action in ("ack", "report"):
                values["acked_at"] = sa.func.coalesce(t.c.acked_at, now)
            if action == "report":
                values |= {"reported_at": now, "report_text": text}
            if action == "verify":
                values["verified_by"] = who
            if moved.closed_reason:
                values |= {"closed_at": now, "closed_reason": moved.closed_reason}
            conn.execute(sa.update(t).where(t.c.id == tid).values(**values))
        return self.task(tid) or {}

    def attach_photo(self, tid: int, content_type: str, data: bytes) -> None:
        """Keep the owner's photo of the action taken (JPEG or PNG, at most 2 MiB)."""
        magic = PHOTO_TYPES.get(content_type)
        if magic is None:
            raise TaskError(f"a photo must be one of {', '.join(PHOTO_TYPES)}", 415)
        if len(data) > MAX_PHOTO:
            raise TaskError(f"the photo is larger than {MAX_PHOTO // 1024} KiB", 413)
        if not data.startswith(magic):
            raise TaskError(f"the body is not a {content_type} image", 415)
        with self.store.engine.begin() as conn:
            state = conn.scalar(sa.select(source_tasks.c.state).where(source_tasks.c.id == tid))
            if state is None:
                raise TaskError(f"no task {tid}", 404)
            if state == "closed":
                raise TaskError("the task is closed", 409)
            conn.execute(sa.update(source_tasks).where(source_tasks.c.id == tid).values(
                photo=data, photo_type=content_type))

    def photo(self, tid: int) -> tuple[str, bytes] | None:
        """The task's photo as (content type, bytes), or None."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(source_tasks.c.photo_type, source_tasks.c.photo)
                               .where(source_tasks.c.id == tid)).first()
        return (row.photo_type, bytes(row.photo)) if row and row.photo else None

    # --- escalation and figures --------------------------------------------------------------

    def escalate(self) -> int:
        """Send the escalation stages now due for open tasks; return how many were sent."""
        chain = self.config.escalation
        if not chain:
            return 0
        now, sent = self.now(), 0
        t = source_tasks
        with self.store.engine.begin() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.state, t.c.pushed_at, t.c.escalations,
                                          t.c.source_id).where(t.c.state != "closed")).all()
            for row in rows:
                fired = set(orjson.loads(row.escalations))
                view = EscalationView(AS_INCIDENT[row.state], row.pushed_at, frozenset(fired))
                due = due_escalations(view, chain, now)
                if not due:
                    continue
                for index in due:
                    for channel in chain[index].channels:
                        self.enqueue(channel, self._escalation_notice(row, chain[index].when,
                                                                      now))
                        sent += 1
                conn.execute(sa.update(t).where(t.c.id == row.id).values(
                    escalations=orjson.dumps(sorted(fired | set(due))).decode()))
        self.counters["escalations"] += sent
        return sent

    def _escalation_notice(self, row: Any, when: str, now: int) -> Notice:
        source = self._rows.get(row.source_id, {})
        name = source.get("name") or row.source_id
        late = {"not_acknowledged": "not acknowledged", "not_resolved": "not closed"}.get(
            when, when.replace("_", " "))
        return Notice(key=f"source-task-{row.id}", title=f"[MAJOR] Source task {row.id} {late}:"
                      f" {name}", text=f"The task for **{name}**"
                      f" ({source.get('company', '')}) is still {row.state}.",
                      severity="major", link=f"{self.public_url}/api/v1/sources/tasks/{row.id}",
                      created_ms=now)

    def figures(self, by: str) -> list[dict[str, Any]]:
        """Per owner (company) or district: exceedances, tasks pushed, handled, closed and the
        median time to handle (push to report) in seconds."""
        column = "company" if by == "owner" else "district"
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(source_tasks.c[column].label("group"),
                                          source_tasks.c.exceedance_id,
                                          source_tasks.c.state, source_tasks.c.pushed_at,
                                          source_tasks.c.reported_at)).all()
        groups: dict[str, dict[str, Any]] = {}
        for r in rows:
            g = groups.setdefault(r.group or "", {by: r.group or "", "exceedances": set(),
                                                  "tasks_pushed": 0, "handled": 0, "closed": 0,
                                                  "_times": []})
            g["exceedances"].add(r.exceedance_id)
            g["tasks_pushed"] += 1
            g["handled"] += r.reported_at is not None
            g["closed"] += r.state == "closed"
            if r.reported_at is not None:
                g["_times"].append((r.reported_at - r.pushed_at) / 1000)
        out = []
        for g in groups.values():
            times = sorted(g.pop("_times"))
            g["exceedances"] = len(g["exceedances"])
            g["median_time_to_handle_s"] = times[len(times) // 2] if times else None
            out.append(g)
        return sorted(out, key=lambda g: str(g[by]))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _row(s: SourceIn, now: int) -> dict[str, Any]:
    return {"name": s.name, "kind": s.kind, "district": s.district,
            "lat": s.lat if s.lat is not None else 0.0,
            "lon": s.lon if s.lon is not None else 0.0,
            "outline": orjson.dumps(s.outline).decode(), "company": s.company,
            "contact_name": s.contact_name, "contact_phone": s.contact_phone,
            "contact_email": s.contact_email, "channel": s.channel,
            "devices": orjson.dumps(s.devices).decode(), "plate": s.plate, "updated": now}


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "outline": orjson.loads(row["outline"]), "devices": orjson.loads(row["devices"])}


def _task_public(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("key_hash", None)
    row["has_photo"] = row.pop("photo", None) is not None
    row["escalations"] = orjson.loads(row.get("escalations") or "[]")
    return row
