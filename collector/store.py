"""The data hub store: idempotent ingest and the queries behind the API, on SQLite or PostgreSQL.

Ingest uses what each database is fast at (batched executemany on SQLite, COPY on PostgreSQL)
through the raw driver connection; everything else goes through SQLAlchemy Core.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from collector import partitions, schema
from collector.clock import now_ms
from collector.migrations import MigrationSet, migrate
from collector.placement import ClockPolicy, GatewayClock
from collector.store_ingest import REGISTRY_DEVICES, IngestTx, pg_columns
from devices.contract import (
    MAX_DEVICES,
    DataEnvelope,
    EventsEnvelope,
    HealthMessage,
    StateMessage,
)
from devices.quantities import QUANTITIES, ValueKind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A validated data or events envelope as received from the broker."""

    gateway: str
    envelope: DataEnvelope | EventsEnvelope
    received: int  # epoch ms at the collector
    live: bool = False  # known not to have waited at the broker (collector.placement)


@dataclass(frozen=True, slots=True)
class GatewayMessage:
    """A validated state (birth/death) or health message of a gateway."""

    gateway: str
    message: StateMessage | HealthMessage
    received: int
    live: bool = False


Inbound = Accepted | GatewayMessage


@dataclass
class IngestResult:
    """What one ingest transaction did."""

    messages: int = 0
    duplicates: int = 0
    readings: int = 0
    events: int = 0
    dropped_values: dict[str, int] = field(default_factory=dict)
    time_corrected: dict[str, int] = field(default_factory=dict)  # how times were placed
    flagged: dict[str, int] = field(default_factory=dict)  # readings made uncertain, by reason
    refused: Counter[str] = field(default_factory=Counter)  # entries not stored, by reason
    fresh: list[Accepted] = field(default_factory=list)  # stored now (not re-deliveries)
    states: list[tuple[str, str, list[str]]] = field(default_factory=list)  # gw, state, devices


# WAL frames (pages) after which a commit checkpoints the WAL into the database: 4,000 pages
# (16 MiB) instead of SQLite's 1,000. A page the ingest writes again and again (an index's
# inner pages, `latest`) is copied once per checkpoint, and a checkpoint's sync is paid a
# quarter as often: 1.04x lift-change envelopes/s (`python -m bench ingest --backends sqlite`,
# docs/deployment.md).
WAL_AUTOCHECKPOINT_PAGES = 4000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
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
    # Kept open: the ingest writers (up to MAX_WRITERS, collector.ingest), the API's and the
    # features' threads. A connection beyond the pool is closed when returned, and opening one
    # costs PostgreSQL a new backend: 5 kept open made 7-10 new connections in 30 s of the
    # busiest hour with 2-4 writers (`python -m bench city_hour --workers 1 --writers 1,2,3,4`).
    # READ COMMITTED whatever the server's default: the ingest and the history roll-up rely
    # on each statement seeing what committed before it (collector.ngsi.history).
    return sa.create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True,
                            isolation_level="READ COMMITTED")


Row = tuple[Any, ...]  # device, quantity, ts, value, vtext, quality, gateway, seq, replay
COUNTED = (schema.gateways, schema.devices, schema.batches, schema.readings, schema.events)
EXACT_COUNT_BELOW = 100_000  # rows: larger tables are counted from statistics (row_counts)
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
        self._errors_lock = threading.Lock()  # several ingest writers
        # Written last in each ingest transaction with what it stored (collector.feed): a
        # failure here fails the transaction, so nothing is stored that they did not see.
        self.tx_writers: list[Callable[[Any, IngestResult], None]] = []
        self.clock_policy = ClockPolicy()
        # Devices a gateway may create by reporting them (collector.store_ingest).
        self.max_devices_per_gateway = MAX_DEVICES

    @classmethod
    def open(cls, url: str, schema: Sequence[MigrationSet]) -> Store:
        """Connect and bring the schema up to date with the given migration sets (the whole
        collector's: `collector.features.open_store`)."""
        store = cls(make_engine(url))
        migrate(store.engine, schema)
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

    def ingest(self, items: Sequence[Inbound]) -> IngestResult:
        """Store a batch of messages in one transaction, in arrival order.

        Already-stored (gateway, seq) pairs are skipped; what a gateway reports of a device it
        does not own is refused and counted (collector.store_ingest).
        """
        result = IngestResult()
        with self.raw() as conn:
            cur = conn.cursor()
            IngestTx(self, cur, result).run(items)
            for write in self.tx_writers:
                write(cur, result)
        return result

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
                with self._errors_lock:
                    self.row_writer_errors += 1
                    first = self.row_writer_errors == 1
                if first:
                    log.exception("store: a derived-table writer failed; raw readings are "
                                  "stored (counted from now on)")
            cur.execute("RELEASE SAVEPOINT derived")

    def _upsert_latest(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        newest: dict[tuple[str, str], tuple[Any, ...]] = {}
        for row in rows:
            key = (row[0], row[1])
            if key not in newest or row[2] >= newest[key][2]:
                newest[key] = row
        if not newest:
            return
        update = (" ON CONFLICT (device_id, quantity) DO UPDATE SET "
                  "ts = excluded.ts, value = excluded.value, vtext = excluded.vtext, "
                  "quality = excluded.quality, gateway_id = excluded.gateway_id "
                  "WHERE excluded.ts >= latest.ts")
        ordered = [newest[k][:7] for k in sorted(newest)]
        if self.is_pg:  # one statement, rows in key order
            cur.execute(
                "INSERT INTO latest (device_id, quantity, ts, value, vtext, quality, gateway_id)"
                " SELECT d, q, ts, v, t, ql, g FROM unnest(%s::text[], %s::text[], %s::bigint[],"
                " %s::float8[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY"
                " AS x(d, q, ts, v, t, ql, g, o) ORDER BY o" + update,
                pg_columns(ordered))
        else:
            cur.executemany(
                "INSERT INTO latest (device_id, quantity, ts, value, vtext, quality, gateway_id) "
                "VALUES (?,?,?,?,?,?,?)" + update, ordered)

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

    # --- gateway state and health, quarantine, ownership ------------------------------------

    def record_state(self, gateway: str, state: str, ts: int, reason: str, version: str,
                     boot: str, inventory: dict[str, dict[str, str]]) -> None:
        """Store a gateway's birth/death state and its device inventory."""
        msg = StateMessage.model_validate({
            "v": 1, "gateway": gateway, "state": state, "ts": ts, "reason": reason,
            "version": version, "boot": boot, "devices": inventory})
        self.ingest([GatewayMessage(gateway, msg, now_ms())])

    def record_health(self, gateway: str, health: dict[str, Any]) -> None:
        """Keep the latest health message of a gateway."""
        msg = HealthMessage.model_validate({"sent": now_ms(), **health, "v": 1,
                                            "gateway": gateway})
        self.ingest([GatewayMessage(gateway, msg, now_ms())])

    def quarantine(self, gateway: str, channel: str, topic: str, seq: object, payload: bytes,
                   error: str, received: int) -> None:
        """Keep a message the store refused, as received, with the reason."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(schema.quarantine).values(
                gateway_id=gateway, channel=channel, topic=topic,
                seq=None if seq is None else str(seq), payload=payload,
                error=error.replace("\x00", "\\0")[:2000], received=received,
                quarantined_at=now_ms()))

    def quarantined(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Quarantined messages, newest first."""
        q = schema.quarantine
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(q).order_by(q.c.id.desc()).limit(limit)).mappings()]

    def move_device(self, device_id: str, gateway: str) -> bool:
        """Give a device to another gateway (an admin's decision); False if it is unknown.

        The registry's other assignments of the device are dropped with it, so that the
        registry does not give it back.
        """
        d = schema.devices
        reg = sa.table(REGISTRY_DEVICES, sa.column("device_id"), sa.column("gateway_id"))
        with self.engine.begin() as conn:
            if conn.execute(sa.update(d).where(d.c.device_id == device_id)
                            .values(gateway_id=gateway)).rowcount == 0:
                return False
            conn.execute(sa.delete(reg).where(reg.c.device_id == device_id,
                                              reg.c.gateway_id != gateway))
        return True

    @staticmethod
    def gateway_clock(row: dict[str, Any]) -> GatewayClock:
        """The measured clock of a gateway row."""
        return GatewayClock(row.get("clock_offset_ms"), row.get("clock_measured_at"),
                            row.get("clock_source") or "", bool(row.get("clock_wrong")))

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
        """Exact row counts of the main tables (tests, tools): a scan of each."""
        out = {}
        with self.engine.connect() as conn:
            for t in COUNTED:
                out[t.name] = _count(conn, t)
        return out

    def row_counts(self, exact_below: int | None = None) -> tuple[dict[str, int], list[str]]:
        """Row counts of the main tables for health and /metrics, and which are estimates.

        A count scans the table: at city scale `readings` holds billions of rows, and a health
        check or a scrape every few seconds would scan them each time (12 million rows took
        PostgreSQL 23 ms, and 3 million rows 311 ms while it was busy storing 9,000
        envelopes/s; `python -m bench city_hour`). On PostgreSQL each table's own figures are
        read first, per partition the larger of the planner's (`pg_class.reltuples`, set by
        ANALYZE and autovacuum) and the statistics system's live rows (counted as
        transactions commit, whether or not autovacuum runs); a table they put at
        EXACT_COUNT_BELOW rows or more is given that estimate, smaller ones are counted.
        SQLite counts.
        """
        if not self.is_pg:
            return self.counts(), []
        limit = EXACT_COUNT_BELOW if exact_below is None else exact_below
        out, estimated = {}, []
        with self.engine.connect() as conn:
            for t in COUNTED:
                guess = conn.scalar(_PG_ROWS_GUESS, {"t": t.name})
                if guess is not None and guess >= limit:
                    out[t.name] = int(guess)
                    estimated.append(t.name)
                else:
                    out[t.name] = _count(conn, t)
        return out, estimated


# The rows of a table (or of the leaves of a partitioned one) by PostgreSQL's own figures.
_PG_ROWS_GUESS = sa.text(
    "SELECT sum(GREATEST(c.reltuples, pg_stat_get_live_tuples(c.oid), 0))::float8"
    " FROM pg_class c WHERE c.oid IN (SELECT relid FROM pg_partition_tree(CAST(:t AS regclass))"
    " WHERE isleaf UNION ALL SELECT CAST(:t AS regclass) WHERE NOT EXISTS ("
    "SELECT FROM pg_partition_tree(CAST(:t AS regclass))))")


def _count(conn: sa.Connection, table: sa.Table) -> int:
    """A table's rows, counted (a scan)."""
    return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


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
