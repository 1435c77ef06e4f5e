"""The parking service: feeds stored readings to the model, persists what changed, ticks time.

Wiring: `on_stored` is Ingest's hook (called in the writer thread after each committed batch);
`start()` runs a ticker thread that turns silent sensors unknown; the API reads the in-memory
model under a lock. State survives restarts through `parking_spots` and the active alerts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from collector.clock import now_ms
from collector.parking.config import ParkingConfig
from collector.parking.model import (
    SEVERITY,
    AlertChange,
    Changes,
    ParkingModel,
    Spot,
    Zone,
)
from collector.parking.schema import (
    apply_migrations,
    parking_sensor_alerts,
    parking_spots,
    parking_zone_samples,
)
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

log = logging.getLogger(__name__)

_SPOT_UPSERT = (
    "INSERT INTO parking_spots (spot_id, zone_id, status, occupied, since, last_ts, battery_mv,"
    " rssi, lat, lon) VALUES (:spot_id, :zone_id, :status, :occupied, :since, :last_ts,"
    " :battery_mv, :rssi, :lat, :lon) ON CONFLICT (spot_id) DO UPDATE SET"
    " zone_id = excluded.zone_id, status = excluded.status, occupied = excluded.occupied,"
    " since = excluded.since, last_ts = excluded.last_ts, battery_mv = excluded.battery_mv,"
    " rssi = excluded.rssi, lat = excluded.lat, lon = excluded.lon")
_ZONE_UPSERT = (
    "INSERT INTO parking_zones (zone_id, name, kind, lat, lon, total, available, occupied,"
    " unknown, closed, updated, district, outline) VALUES (:zone_id, :name, :kind, :lat, :lon,"
    " :total, :available, :occupied, :unknown, :closed, :updated, :district, :outline)"
    " ON CONFLICT (zone_id) DO UPDATE SET"
    " name = excluded.name, kind = excluded.kind, lat = excluded.lat, lon = excluded.lon,"
    " total = excluded.total, available = excluded.available, occupied = excluded.occupied,"
    " unknown = excluded.unknown, closed = excluded.closed, updated = excluded.updated,"
    " district = excluded.district, outline = excluded.outline")
_SAMPLE = (
    "INSERT INTO parking_zone_samples (zone_id, ts, total, available, occupied, unknown,"
    " closed) VALUES (:zone_id, :ts, :total, :available, :occupied, :unknown, :closed)"
    " ON CONFLICT (zone_id, ts) DO UPDATE SET total = excluded.total,"
    " available = excluded.available, occupied = excluded.occupied,"
    " unknown = excluded.unknown, closed = excluded.closed")
_PLACE = "UPDATE parking_spots SET lat = :lat, lon = :lon WHERE spot_id = :spot_id"


def zone_row(z: Zone) -> dict[str, Any]:
    """The stored row of a zone."""
    return {"zone_id": z.id, "name": z.name, "kind": z.kind, "lat": z.lat, "lon": z.lon,
            "total": z.total, "available": z.available, "occupied": z.occupied,
            "unknown": z.unknown, "closed": z.closed, "updated": z.updated,
            "district": z.district,
            "outline": orjson.dumps([list(p) for p in z.outline]).decode() if z.outline else ""}


_HEARTBEAT = ("UPDATE parking_spots SET last_ts = :last_ts WHERE spot_id = :spot_id"
              " AND (last_ts IS NULL OR last_ts < :last_ts)")


def spot_row(s: Spot, where: tuple[float, float] | None = None) -> dict[str, Any]:
    """The stored row of a spot (`where`: its configured (lat, lon))."""
    return {"spot_id": s.id, "zone_id": s.zone, "status": s.status.value,
            "occupied": s.occupied, "since": s.since, "last_ts": s.last_ts,
            "battery_mv": s.battery_mv, "rssi": s.rssi,
            "lat": where[0] if where else None, "lon": where[1] if where else None}


def _content(row: dict[str, Any]) -> int:
    """A digest of a spot row without its time of last report (64 bits per spot instead of a
    tuple of nine: 32 MiB less at 300,000 spots). The hash of its JSON text: two contents of
    one spot share it with a chance of about 1e-19 (a tuple's hash is not used: CPython hashes
    -1 and -2 alike)."""
    return hash(orjson.dumps([v for k, v in row.items() if k != "last_ts"]))


class ParkingService:
    """Live parking state for one collector."""

    def __init__(self, store: Store, cfg: ParkingConfig, *,
                 clock: Callable[[], int] = now_ms, tick_interval: float = 5.0) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.tick_interval = tick_interval
        self.model = ParkingModel(cfg)
        self.lock = threading.Lock()
        self.stats: dict[str, int] = {"readings": 0, "transitions": 0, "alerts": 0,
                                      "store_errors": 0, "spot_writes": 0, "heartbeats": 0}
        self._next_sample = 0
        # Spot.stored, a digest of a spot's stored row without last_ts: a report that changes
        # none of it is a heartbeat, whose time is written with the next tick (one narrow
        # UPDATE per spot) instead of rewriting the row with every report.
        self._heartbeats: dict[str, int] = {}
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def open(self) -> ParkingService:
        """Migrate, load stored spot state and alerts, and write the configured zones."""
        apply_migrations(self.store.engine)
        now = self.clock()
        with self.store.engine.connect() as conn:
            active: dict[str, set[str]] = {}
            a = parking_sensor_alerts
            for spot_id, kind in conn.execute(
                    sa.select(a.c.spot_id, a.c.kind).where(a.c.cleared.is_(None))):
                active.setdefault(spot_id, set()).add(kind)
            rows = conn.execute(sa.select(parking_spots)).mappings().all()
        with self.lock:
            for row in rows:
                self.model.restore(dict(row), active.get(row["spot_id"], set()), now)
                spot = self.model.spots.get(row["spot_id"])
                if spot is not None:
                    spot.stored = _content(spot_row(spot, self.model.locations.get(spot.id)))
            self.model.start_watching()
            out = Changes()
            self.model.tick(now, out)
            self._persist(out, all_zones=True)
            self._place_bays()
            self._sample(now)
        log.info("parking: %d zones, %d spots (%d restored)", len(self.model.zones),
                 len(self.model.spots), len(rows))
        return self

    def start(self) -> None:
        """Start the ticker thread (silence detection, alert clearing)."""
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick_loop, name="parking-ticker",
                                        daemon=True)
        self._ticker.start()

    def close(self) -> None:
        """Stop the ticker and write the heartbeats not yet written (idempotent)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        with self.lock:
            try:
                self._write_heartbeats()
            except Exception:
                self.stats["store_errors"] += 1
                log.exception("parking: cannot write the last heartbeats")

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.tick_interval):
            try:
                self.tick()
            except Exception:
                self.stats["store_errors"] += 1
                log.exception("parking: tick failed")

    def tick(self) -> Changes:
        """Advance the model to now and persist what changed (and a history sample if due)."""
        out = Changes()
        with self.lock:
            now = self.clock()
            self.model.tick(now, out)
            self._persist(out)
            if now >= self._next_sample:
                self._sample(now)
            self._write_heartbeats()
        return out

    def _place_bays(self) -> None:
        """Write the configured bay positions onto the spots already stored (lock held)."""
        rows = [{"spot_id": s, "lat": lat, "lon": lon}
                for s, (lat, lon) in self.model.locations.items()]
        if rows:
            with self.store.engine.begin() as conn:
                conn.execute(sa.text(_PLACE), rows)

    def _sample(self, now: int) -> None:
        """Record every zone's counts for its occupancy history (lock held)."""
        self._next_sample = now + int(self.cfg.history_every * 1000)
        rows = [{"zone_id": z.id, "ts": now, "total": z.total, "available": z.available,
                 "occupied": z.occupied, "unknown": z.unknown, "closed": z.closed}
                for z in self.model.zones.values()]
        if rows:
            with self.store.engine.begin() as conn:
                conn.execute(sa.text(_SAMPLE), rows)

    def on_stored(self, items: Sequence[Accepted]) -> None:
        """Ingest hook: apply the parking readings of a committed batch."""
        out = Changes()
        now = self.clock()
        is_parking = self.model.is_parking
        with self.lock:
            for a in items:
                env = a.envelope
                if not isinstance(env, DataEnvelope):
                    continue
                mine = [r for r in env.readings if is_parking(r.device)]
                if not mine:
                    continue
                mine.sort(key=lambda r: r.ts)
                for r in mine:
                    self.model.observe(r.device, r.ts, r.values, now, out)
                self.stats["readings"] += len(mine)
            if out.spots:
                try:
                    self._persist(out)
                except Exception:
                    # The readings are stored; only the derived rows lag until the next change.
                    self.stats["store_errors"] += 1
                    log.exception("parking: cannot persist spot state")

    def _persist(self, out: Changes, all_zones: bool = False) -> None:
        """Write changed spots, zones and alerts in one transaction (lock held)."""
        self.stats["transitions"] += len(out.transitions)
        self.stats["alerts"] += len(out.alerts)
        zones = self.model.zones.values() if all_zones else \
            [self.model.zones[z] for z in out.zones]
        rows, digests = [], []
        for spot_id in out.spots:
            spot = self.model.spots[spot_id]
            row = spot_row(spot, self.model.locations.get(spot_id))
            digest = _content(row)
            if spot.stored == digest:  # only its time moved: a heartbeat
                if row["last_ts"] is not None:
                    self._heartbeats[spot_id] = row["last_ts"]
                continue
            rows.append(row)
            digests.append((spot, digest))
            self._heartbeats.pop(spot_id, None)
        if not (zones or rows or out.alerts):
            return
        with self.store.engine.begin() as conn:
            if rows:
                conn.execute(sa.text(_SPOT_UPSERT), rows)
            if zones:
                conn.execute(sa.text(_ZONE_UPSERT), [zone_row(z) for z in zones])
            for alert in out.alerts:
                self._write_alert(conn, alert)
        for spot, digest in digests:  # committed: what is stored now
            spot.stored = digest
        self.stats["spot_writes"] += len(rows)

    def _write_heartbeats(self) -> None:
        """Write the times of the reports that changed nothing else (lock held)."""
        if not self._heartbeats:
            return
        beats, self._heartbeats = self._heartbeats, {}
        try:
            with self.store.engine.begin() as conn:
                conn.execute(sa.text(_HEARTBEAT), [{"spot_id": s, "last_ts": ts}
                                                  for s, ts in sorted(beats.items())])
        except Exception:
            for spot_id, ts in beats.items():  # kept for the next tick
                self._heartbeats.setdefault(spot_id, ts)
            raise
        self.stats["heartbeats"] += len(beats)

    @staticmethod
    def _write_alert(conn: sa.Connection, alert: AlertChange) -> None:
        t = parking_sensor_alerts
        if alert.raised:
            conn.execute(sa.insert(t).values(
                spot_id=alert.spot, zone_id=alert.zone, kind=alert.kind,
                severity=SEVERITY.get(alert.kind, "minor"), raised=alert.ts, value=alert.value,
                message=alert.message))
        else:
            conn.execute(sa.update(t).where(t.c.spot_id == alert.spot, t.c.kind == alert.kind,
                                            t.c.cleared.is_(None)).values(cleared=alert.ts))

    # --- queries -----------------------------------------------------------------------------

    def alerts(self, *, active: bool | None = True, kind: str | None = None,
               zone: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored alerts, newest first."""
        t = parking_sensor_alerts
        stmt = sa.select(t).order_by(t.c.raised.desc(), t.c.id.desc()).limit(limit)
        if active is True:
            stmt = stmt.where(t.c.cleared.is_(None))
        elif active is False:
            stmt = stmt.where(t.c.cleared.is_not(None))
        if kind:
            stmt = stmt.where(t.c.kind == kind)
        if zone:
            stmt = stmt.where(t.c.zone_id == zone)
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def alert(self, alert_id: int) -> dict[str, Any] | None:
        """One stored alert, or None."""
        t = parking_sensor_alerts
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == alert_id)).mappings().first()
        return None if row is None else dict(row)

    def samples(self, zone: str, since: int, until: int,
                limit: int = 200_000) -> list[dict[str, Any]]:
        """A zone's count samples in [since, until), oldest first."""
        t = parking_zone_samples
        stmt = (sa.select(t).where(t.c.zone_id == zone, t.c.ts >= since, t.c.ts < until)
                .order_by(t.c.ts).limit(limit))
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]
