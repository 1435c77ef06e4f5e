"""The parking service: feeds stored readings to the model, persists what changed, ticks time.

Wiring: `on_stored` is Ingest's hook (called in the writer thread after each committed batch);
`start()` runs a ticker thread that turns silent sensors unknown; the API reads the in-memory
model under a lock. State survives restarts through `parking_spots` and the active alerts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

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
)
from collector.store import Accepted, Store
from devices.contract import DataEnvelope

log = logging.getLogger(__name__)

def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


_SPOT_UPSERT = (
    "INSERT INTO parking_spots (spot_id, zone_id, status, occupied, since, last_ts, battery_mv,"
    " rssi) VALUES (:spot_id, :zone_id, :status, :occupied, :since, :last_ts, :battery_mv,"
    " :rssi) ON CONFLICT (spot_id) DO UPDATE SET zone_id = excluded.zone_id,"
    " status = excluded.status, occupied = excluded.occupied, since = excluded.since,"
    " last_ts = excluded.last_ts, battery_mv = excluded.battery_mv, rssi = excluded.rssi")
_ZONE_UPSERT = (
    "INSERT INTO parking_zones (zone_id, name, kind, lat, lon, total, available, occupied,"
    " unknown, closed, updated) VALUES (:zone_id, :name, :kind, :lat, :lon, :total, :available,"
    " :occupied, :unknown, :closed, :updated) ON CONFLICT (zone_id) DO UPDATE SET"
    " name = excluded.name, kind = excluded.kind, lat = excluded.lat, lon = excluded.lon,"
    " total = excluded.total, available = excluded.available, occupied = excluded.occupied,"
    " unknown = excluded.unknown, closed = excluded.closed, updated = excluded.updated")


def zone_row(z: Zone) -> dict[str, Any]:
    """The stored row of a zone."""
    return {"zone_id": z.id, "name": z.name, "kind": z.kind, "lat": z.lat, "lon": z.lon,
            "total": z.total, "available": z.available, "occupied": z.occupied,
            "unknown": z.unknown, "closed": z.closed, "updated": z.updated}


_HEARTBEAT = ("UPDATE parking_spots SET last_ts = :last_ts WHERE spot_id = :spot_id"
              " AND (last_ts IS NULL OR last_ts < :last_ts)")


def spot_row(s: Spot) -> dict[str, Any]:
    """The stored row of a spot."""
    return {"spot_id": s.id, "zone_id": s.zone, "status": s.status.value,
            "occupied": s.occupied, "since": s.since, "last_ts": s.last_ts,
            "battery_mv": s.battery_mv, "rssi": s.rssi}


def _content(row: dict[str, Any]) -> tuple[Any, ...]:
    """A spot row without its time of last report."""
    return tuple(v for k, v in row.items() if k != "last_ts")


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
        # A spot's stored row without last_ts: a report that changes none of it is a
        # heartbeat, whose time is written with the next tick (one narrow UPDATE per spot)
        # instead of rewriting the row with every report.
        self._stored: dict[str, tuple[Any, ...]] = {}
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
                    self._stored[spot.id] = _content(spot_row(spot))
            self.model.start_watching()
            out = Changes()
            self.model.tick(now, out)
            self._persist(out, all_zones=True)
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
        """Advance the model to now and persist what changed."""
        out = Changes()
        with self.lock:
            self.model.tick(self.clock(), out)
            self._persist(out)
            self._write_heartbeats()
        return out

    def on_stored(self, items: Sequence[Accepted]) -> None:
        """Ingest hook: apply the parking readings of a committed batch."""
        out = Changes()
        now = self.clock()
        with self.lock:
            for a in items:
                env = a.envelope
                if not isinstance(env, DataEnvelope):
                    continue
                for r in sorted((r for r in env.readings if self.model.is_parking(r.device)),
                                key=lambda r: r.ts):
                    self.model.observe(r.device, r.ts, r.values, now, out)
                    self.stats["readings"] += 1
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
        rows = []
        for spot_id in out.spots:
            row = spot_row(self.model.spots[spot_id])
            content = _content(row)
            if self._stored.get(spot_id) == content:  # only its time moved: a heartbeat
                if row["last_ts"] is not None:
                    self._heartbeats[spot_id] = row["last_ts"]
                continue
            rows.append(row)
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
        for row in rows:  # committed: what is stored now
            self._stored[row["spot_id"]] = _content(row)
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
