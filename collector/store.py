"""The data hub store: idempotent ingest and the queries behind the API, on SQLite or PostgreSQL.

Ingest uses what each database is fast at (batched executemany on SQLite, COPY on PostgreSQL)
through the raw driver connection; everything else goes through SQLAlchemy Core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from collector import partitions, schema
from collector.migrations import migrate
from devices.contract import ClockInfo, DataEnvelope, EventsEnvelope
from devices.quantities import QUANTITIES, ValueKind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A validated data or events envelope as received from the broker."""

    gateway: str
    envelope: DataEnvelope | EventsEnvelope
    received: int  # epoch ms at the collector


@dataclass
class IngestResult:
    """What one ingest transaction did."""

    messages: int = 0
    duplicates: int = 0
    readings: int = 0
    events: int = 0
    dropped_values: dict[str, int] = field(default_factory=dict)
    time_corrected: dict[str, int] = field(default_factory=dict)  # how times were placed
    fresh: list[Accepted] = field(default_factory=list)  # stored now (not re-deliveries)


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


MAX_SKEW_MS = 120_000  # a "synced" gateway further off than this is treated as unsynced
MAX_FUTURE_MS = 60_000
EARLIEST_MS = 946_684_800_000  # 2000-01-01


def place_in_time(ts: int, mono: int | None, clock: ClockInfo, sent: int,
                  received: int) -> tuple[int, str]:
    """Observation time on the collector's clock, and how it was obtained.

    A synchronised gateway's time is kept. Otherwise, within one boot the monotonic clock
    gives the exact age of the reading at sending; across a reboot only the send/receive
    offset is left. Nothing is ever placed before 2000 or in the future.
    """
    skew = received - sent
    if clock.synced and abs(skew) <= MAX_SKEW_MS:
        how, placed = "gateway", ts
    elif mono is not None and clock.mono is not None and clock.boot and (
            clock.sent_boot in ("", clock.boot)):
        how, placed = "monotonic", received - max(0, clock.mono - mono)
    else:
        how, placed = "offset", ts + skew
    if placed < EARLIEST_MS or placed > received + MAX_FUTURE_MS:
        return received, "clamped"
    return placed, how


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> sa.Engine:
    """Create the engine for `sqlite:///path` or `postgresql://...` URLs."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


Row = tuple[Any, ...]  # device, quantity, ts, value, vtext, quality, gateway, seq, replay
RowWriter = Callable[[Any, list[Row]], None]


class Store:
    """The collector's database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.is_pg = engine.dialect.name == "postgresql"
        # Derived tables kept in the ingest transaction (driver cursor, fresh rows): atomic
        # with the raw rows and exactly once. A writer that fails is rolled back to its
        # savepoint and counted; the raw rows are stored regardless.
        self.row_writers: list[RowWriter] = []
        self.row_writer_errors = 0

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect and bring the schema up to date."""
        store = cls(make_engine(url))
        migrate(store.engine)
        store.maintain()
        return store

    def maintain(self, now: int | None = None, not_before: int | None = None) -> list[str]:
        """PostgreSQL: create the day partitions of `readings` around now (`make_days`), none
        wholly before `not_before`; the names created. Run at start and by the retention task;
        a no-op on SQLite.
        """
        if not self.is_pg:
            return []
        with self.engine.begin() as conn:
            if not partitions.is_partitioned(conn, "readings"):
                return []
            return partitions.make_days(conn, "readings", "ts",
                                        now_ms() if now is None else now, not_before)

    def close(self) -> None:
        """Release every connection (idempotent)."""
        self.engine.dispose()

    # --- ingest ----------------------------------------------------------------------------

    @contextmanager
    def raw(self) -> Iterator[Any]:
        """A transaction on the driver's own connection (sqlite3 or psycopg), for bulk work.

        Write SQL with `?` placeholders and pass it through `sql()`.
        """
        conn = self.engine.raw_connection()
        try:
            yield conn.driver_connection
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def sql(self, text: str) -> str:
        """SQL written with `?` placeholders, in the driver's style."""
        return text.replace("?", "%s") if self.is_pg else text

    def ingest(self, items: Sequence[Accepted]) -> IngestResult:
        """Store envelopes in one transaction; already-stored (gateway, seq) pairs are skipped."""
        result = IngestResult()
        with self.raw() as conn:
            cur = conn.cursor()
            fresh = [a for a in items if self._claim(cur, a)]
            result.fresh = fresh
            result.messages = len(fresh)
            result.duplicates = len(items) - len(fresh)
            rows, events = self._rows(fresh, result)
            self._insert_readings(cur, rows)
            self._write_derived(cur, rows)
            self._upsert_latest(cur, rows)
            self._insert_events(cur, events)
            self._touch(cur, fresh)
            result.readings, result.events = len(rows), len(events)
        return result

    def _claim(self, cur: Any, a: Accepted) -> bool:
        env = a.envelope
        n = len(env.readings) if isinstance(env, DataEnvelope) else len(env.events)
        channel = "data" if isinstance(env, DataEnvelope) else "events"
        cur.execute(self.sql(
            "INSERT INTO batches (gateway_id, seq, channel, sent, received, n, replay) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING seq"),
            (a.gateway, env.seq, channel, env.sent, a.received, n, env.replay))
        return cur.fetchone() is not None

    def _rows(self, fresh: Sequence[Accepted],
              result: IngestResult) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        rows: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        for a in fresh:
            env = a.envelope
            if isinstance(env, EventsEnvelope):
                for e in env.events:
                    ts = self._placed(e.ts, e.mono, env, a.received, result)
                    events.append((e.device, a.gateway, env.seq, ts, e.kind, e.action,
                                   e.severity, e.code, orjson.dumps(e.evidence).decode(),
                                   e.message, a.received))
                continue
            for r in env.readings:
                ts = self._placed(r.ts, r.mono, env, a.received, result)
                for q, v in r.values.items():
                    if v is None:
                        continue
                    if q not in QUANTITIES:
                        result.dropped_values["unknown_quantity"] = \
                            result.dropped_values.get("unknown_quantity", 0) + 1
                        continue
                    num, text = (None, v) if isinstance(v, str) else (float(v), None)
                    rows.append((r.device, q, ts, num, text, r.q, a.gateway, env.seq,
                                 env.replay))
        return rows, events

    @staticmethod
    def _placed(ts: int, mono: int | None, env: DataEnvelope | EventsEnvelope, received: int,
                result: IngestResult) -> int:
        placed, how = place_in_time(ts, mono, env.clock, env.sent, received)
        if how != "gateway":
            result.time_corrected[how] = result.time_corrected.get(how, 0) + 1
        return placed

    def _insert_readings(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        cols = "device_id, quantity, ts, value, vtext, quality, gateway_id, seq, replay"
        if self.is_pg:
            with cur.copy(f"COPY readings ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cur.executemany(f"INSERT INTO readings ({cols}) VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def _write_derived(self, cur: Any, rows: list[Row]) -> None:
        for write in self.row_writers if rows else ():
            cur.execute("SAVEPOINT derived")
            try:
                write(cur, rows)
            except Exception:
                cur.execute("ROLLBACK TO SAVEPOINT derived")
                self.row_writer_errors += 1
                if self.row_writer_errors == 1:
                    log.exception("store: a derived-table writer failed; raw readings are "
                                  "stored (counted from now on)")
            cur.execute("RELEASE SAVEPOINT derived")

    def _upsert_latest(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        newest: dict[tuple[str, str], tuple[Any, ...]] = {}
        for row in rows:
            key = (row[0], row[1])
            if key not in newest or row[2] >= newest[key][2]:
                newest[key] = row
        cur.executemany(self.sql(
            "INSERT INTO latest (device_id, quantity, ts, value, vtext, quality, gateway_id) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT (device_id, quantity) DO UPDATE SET "
            "ts = excluded.ts, value = excluded.value, vtext = excluded.vtext, "
            "quality = excluded.quality, gateway_id = excluded.gateway_id "
            "WHERE excluded.ts >= latest.ts"),
            [r[:7] for r in newest.values()])

    def _insert_events(self, cur: Any, events: list[tuple[Any, ...]]) -> None:
        if not events:
            return
        cur.executemany(self.sql(
            "INSERT INTO events (device_id, gateway_id, seq, ts, kind, action, severity, code,"
            " evidence, message, received) VALUES (?,?,?,?,?,?,?,?,?,?,?)"), events)
        for e in sorted(events, key=lambda e: e[3]):
            device, _gw, _seq, ts, kind, action, severity, code, evidence = e[:9]
            if action == "raise":
                cur.execute(self.sql(
                    "INSERT INTO active_faults (device_id, kind, since, severity, code, evidence)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT (device_id, kind) DO NOTHING"),
                    (device, kind, ts, severity, code, evidence))
            elif action == "clear":
                cur.execute(self.sql(
                    "DELETE FROM active_faults WHERE device_id = ? AND kind = ? AND since <= ?"),
                    (device, kind, ts))

    def _touch(self, cur: Any, fresh: Sequence[Accepted]) -> None:
        seen: dict[str, tuple[str, int]] = {}
        gws: dict[str, tuple[int, int]] = {}
        for a in fresh:
            env = a.envelope
            items = env.readings if isinstance(env, DataEnvelope) else env.events
            for it in items:  # "last seen" is when the hub heard of the device
                prev = seen.get(it.device)
                if prev is None or a.received > prev[1]:
                    seen[it.device] = (a.gateway, a.received)
            last = gws.get(a.gateway, (0, 0))
            gws[a.gateway] = (max(last[0], env.seq), max(last[1], a.received))
        cur.executemany(self.sql(
            "INSERT INTO devices (device_id, gateway_id, kind, profile, first_seen, last_seen) "
            "VALUES (?,?,'unknown','',?,?) ON CONFLICT (device_id) DO UPDATE SET "
            "gateway_id = excluded.gateway_id, "
            "last_seen = CASE WHEN devices.last_seen IS NULL OR excluded.last_seen > "
            "devices.last_seen THEN excluded.last_seen ELSE devices.last_seen END"),
            [(d, gw, ts, ts) for d, (gw, ts) in seen.items()])
        cur.executemany(self.sql(
            "INSERT INTO gateways (gateway_id, state, state_reason, version, boot, last_seq,"
            " last_seen) VALUES (?,'unknown','','','',?,?) ON CONFLICT (gateway_id) DO UPDATE SET"
            " last_seq = CASE WHEN gateways.last_seq IS NULL OR excluded.last_seq >"
            " gateways.last_seq THEN excluded.last_seq ELSE gateways.last_seq END,"
            " last_seen = excluded.last_seen"),
            [(gw, seq, rx) for gw, (seq, rx) in gws.items()])

    # --- gateway state and health ----------------------------------------------------------

    def record_state(self, gateway: str, state: str, ts: int, reason: str, version: str,
                     boot: str, inventory: dict[str, dict[str, str]]) -> None:
        """Store a gateway's birth/death state and its device inventory."""
        g = schema.gateways
        now = now_ms()
        with self.engine.begin() as conn:
            self._upsert(conn, g, {"gateway_id": gateway}, {
                "state": state, "state_reason": reason, "state_ts": ts, "version": version,
                "boot": boot, "last_seen": now})
            for dev, info in inventory.items():
                self._upsert(conn, schema.devices, {"device_id": dev}, {
                    "gateway_id": gateway, "kind": info.get("kind", "unknown"),
                    "profile": info.get("profile", "")})

    def record_health(self, gateway: str, health: dict[str, Any]) -> None:
        """Keep the latest health message of a gateway."""
        now = now_ms()
        with self.engine.begin() as conn:
            self._upsert(conn, schema.gateways, {"gateway_id": gateway}, {
                "health": orjson.dumps(health).decode(), "health_ts": now, "last_seen": now})

    @staticmethod
    def _upsert(conn: sa.Connection, table: sa.Table, key: dict[str, Any],
                values: dict[str, Any]) -> None:
        stmt = sa.update(table).values(**values)
        for k, v in key.items():
            stmt = stmt.where(table.c[k] == v)
        if conn.execute(stmt).rowcount == 0:
            conn.execute(sa.insert(table).values(**key, **values))

    # --- queries -----------------------------------------------------------------------------

    def gateways(self) -> list[dict[str, Any]]:
        """All gateways with their state and device count."""
        g, d = schema.gateways, schema.devices
        count = (sa.select(sa.func.count()).where(d.c.gateway_id == g.c.gateway_id)
                 .scalar_subquery())
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(g, count.label("device_count"))
                                .order_by(g.c.gateway_id)).mappings().all()
        return [dict(r) for r in rows]

    def devices(self, kind: str | None = None, gateway: str | None = None) -> list[dict[str, Any]]:
        """All devices, optionally filtered."""
        d = schema.devices
        stmt = sa.select(d).order_by(d.c.device_id)
        if kind:
            stmt = stmt.where(d.c.kind == kind)
        if gateway:
            stmt = stmt.where(d.c.gateway_id == gateway)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def device(self, device_id: str) -> dict[str, Any] | None:
        """One device, or None."""
        d = schema.devices
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(d).where(d.c.device_id == device_id)).mappings().first()
        return dict(row) if row else None

    def latest(self, device_id: str) -> list[dict[str, Any]]:
        """Latest value and observation time per quantity of a device."""
        t = schema.latest
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.device_id == device_id)
                                .order_by(t.c.quantity)).mappings().all()
        return [dict(r) for r in rows]

    def readings(self, device_id: str, quantity: str | None, since: int | None,
                 until: int | None, limit: int) -> list[dict[str, Any]]:
        """Stored readings of a device in time order."""
        r = schema.readings
        stmt = (sa.select(r.c.quantity, r.c.ts, r.c.value, r.c.vtext, r.c.quality, r.c.replay)
                .where(r.c.device_id == device_id))
        if quantity:
            stmt = stmt.where(r.c.quantity == quantity)
        if since is not None:
            stmt = stmt.where(r.c.ts >= since)
        if until is not None:
            stmt = stmt.where(r.c.ts < until)
        stmt = stmt.order_by(r.c.ts, r.c.quantity).limit(limit)
        with self.engine.connect() as conn:
            return [dict(x) for x in conn.execute(stmt).mappings()]

    def events(self, device: str | None = None, kind: str | None = None,
               since: int | None = None, until: int | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
        """Stored events, newest first."""
        e = schema.events
        stmt = sa.select(e)
        if device:
            stmt = stmt.where(e.c.device_id == device)
        if kind:
            stmt = stmt.where(e.c.kind == kind)
        if since is not None:
            stmt = stmt.where(e.c.ts >= since)
        if until is not None:
            stmt = stmt.where(e.c.ts < until)
        stmt = stmt.order_by(e.c.ts.desc(), e.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def active_faults(self, device: str | None = None) -> list[dict[str, Any]]:
        """Conditions currently raised, per device and kind."""
        f = schema.active_faults
        stmt = sa.select(f).order_by(f.c.device_id, f.c.since)
        if device:
            stmt = stmt.where(f.c.device_id == device)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def seq_gaps(self, gateway: str, limit: int = 1000) -> list[tuple[int, int]]:
        """Sequence numbers not (yet) received from a gateway, as inclusive ranges.

        A range closes by itself when a late backlog arrives; one that stays open is data the
        gateway sent but the hub never got.
        """
        b = schema.batches
        nxt = sa.func.lead(b.c.seq).over(order_by=b.c.seq).label("nxt")
        inner = sa.select(b.c.seq, nxt).where(b.c.gateway_id == gateway).subquery()
        stmt = (sa.select(inner.c.seq, inner.c.nxt).where(inner.c.nxt > inner.c.seq + 1)
                .order_by(inner.c.seq).limit(limit))
        with self.engine.connect() as conn:
            return [(int(s) + 1, int(n) - 1) for s, n in conn.execute(stmt)]

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (for health and tests)."""
        out = {}
        with self.engine.connect() as conn:
            for t in (schema.gateways, schema.devices, schema.batches, schema.readings,
                      schema.events):
                out[t.name] = int(conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0)
        return out


def typed_value(quantity: str, value: float | None, vtext: str | None) -> Any:
    """Turn a stored value back into its canonical JSON type (bool, int, float or text)."""
    if vtext is not None:
        return vtext
    if value is None:
        return None
    q = QUANTITIES.get(quantity)
    if q is None:
        return value
    if q.kind is ValueKind.BOOL:
        return bool(value)
    if q.kind in (ValueKind.INTEGER, ValueKind.ENUM):
        return int(value)
    return value
