"""The ingest feed: what ingest workers stored, handed in commit order to the one hub process.

With several ingest processes (`collector run --workers N`, collector.workers) the broker splits
the messages between them, so no process sees a gateway's whole stream. The features' stored
and state hooks (alarms and incidents, environment rules, parking, lift statistics, hub feeds)
keep state in memory and must see every stored message exactly once, in order, in one place:

- each worker writes, as the last statement of its ingest transaction, one `ingest_feed` row
  holding what that transaction newly stored (the fresh envelopes as received, and the gateway
  states). The row commits with the data or not at all, so a re-delivered message, which is
  not fresh, is never fed twice and a killed worker's batch is fed once when it is stored;
- before that insert the transaction takes a transaction-level advisory lock, held until its
  commit, so feed ids are handed out in commit order: a reader that has seen id k will never
  see a smaller id commit later, and `id > cursor` misses nothing;
- the hub process (FeedReader) reads the rows after its cursor, decodes them with the same
  contract as ingest, calls the hooks, then moves its cursor (kept in `ingest_feed_cursor`, so
  a restarted hub resumes where it stopped) and deletes what it consumed.

A hub killed between its hooks and its cursor update feeds those rows again when it returns;
the alarm engine treats a repeated raise as the same occurrence, so that does not open a second
incident. PostgreSQL only: SQLite has one writer, and so one ingest process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
import sqlalchemy as sa

from collector.ingest import Entry, entry_of
from collector.migrations import MigrationSet, migrate
from collector.store import Accepted, GatewayMessage, IngestResult, Store
from devices import contract
from devices.contract import ContractError

log = logging.getLogger(__name__)

FEED_LOCK = 0x43474645  # "CGFE": orders feed ids by commit
CURSOR = "hub"
_DDL = (
    "CREATE TABLE IF NOT EXISTS ingest_feed (id BIGSERIAL PRIMARY KEY, worker TEXT NOT NULL,"
    " items BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ingest_feed_cursor (name TEXT PRIMARY KEY,"
    " last_id BIGINT NOT NULL)",
    f"INSERT INTO ingest_feed_cursor (name, last_id) VALUES ('{CURSOR}', 0)"
    " ON CONFLICT DO NOTHING",
    # how many worker sessions the broker may hold (collector.workers)
    "CREATE TABLE IF NOT EXISTS ingest_pool (name TEXT PRIMARY KEY, workers INTEGER NOT NULL)",
)


def _feed_tables(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":  # one SQLite writer: no workers, no feed
        for ddl in _DDL:  # IF NOT EXISTS: adopts the tables of collectors that made them
            conn.execute(sa.text(ddl))


# Part of every collector's schema (collector.features.schema), applied by the one runner.
# Versions above the legacy global range (1-64), like every set made after it.
FEED = MigrationSet("ingest_feed", [
    (90, "ingest feed: what workers stored, the hub's cursor, the worker pool (PostgreSQL)",
     _feed_tables),
])


def ensure_feed(engine: sa.Engine) -> None:
    """Bring the feed tables up to date on a store opened with another schema."""
    migrate(engine, [FEED])


class FeedWriter:
    """Worker side: adds the feed row to each ingest transaction (a `Store.tx_writers` entry).

    `expect(entries)` is told what is about to be stored, so the row carries each fresh
    envelope's bytes as received rather than a re-encoding.
    """

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._local = threading.local()  # NATS ingest stores from two threads

    def expect(self, entries: Sequence[Entry]) -> None:
        """The entries of this thread's next `Store.ingest` call."""
        self._local.payloads = {id(e.record): e for e in entries if e.record is not None}
        self._local.state_ts = [(e.record.gateway, e.record.message.ts) for e in entries
                          if isinstance(e.record, GatewayMessage)
                          and isinstance(e.record.message, contract.StateMessage)]

    def __call__(self, cur: Any, result: IngestResult) -> None:
        items: list[Any] = []
        payloads: dict[int, Entry] = getattr(self._local, "payloads", {})
        for a in result.fresh:
            entry = payloads.get(id(a))
            if entry is not None:
                topic, payload = entry.topic, entry.payload.decode()
            else:  # the store rewrote it (devices it does not own left out): feed what it kept
                channel = contract.DATA if isinstance(a.envelope, contract.DataEnvelope) \
                    else contract.EVENTS
                topic = contract.topic(a.gateway, channel)
                payload = msgspec.json.encode(a.envelope).decode()
            items.append(["m", a.gateway, topic, payload, a.received, a.live])
        stamps = iter(getattr(self._local, "state_ts", []))
        for gw, state, devices in result.states:
            ts = next((t for g, t in stamps if g == gw), 0)
            items.append(["s", gw, state, devices, ts])
        if not items:
            return
        cur.execute(f"SELECT pg_advisory_xact_lock({FEED_LOCK})")
        cur.execute("INSERT INTO ingest_feed (worker, items) VALUES (%s, %s)",
                    (self.worker, orjson.dumps(items)))


@dataclass
class FeedStats:
    """What the hub process did with the feed."""

    rows: int = 0
    messages: int = 0
    states: int = 0
    undecodable: int = 0
    hook_errors: int = 0
    last_id: int = 0
    lag_s: float = 0.0  # age of the newest fed message when it was fed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return {"rows": self.rows, "messages": self.messages, "states": self.states,
                "undecodable": self.undecodable, "hook_errors": self.hook_errors,
                "last_id": self.last_id, "lag_s": round(self.lag_s, 3)}


class FeedReader:
    """Hub side: feeds committed rows to the hooks in commit order, exactly once per row."""

    def __init__(self, store: Store, on_stored: Callable[[list[Accepted]], None],
                 on_state: Callable[[str, str, list[str]], None], *, limit: int = 20) -> None:
        self.store = store
        self.on_stored, self.on_state = on_stored, on_state
        self.limit = limit
        self.stats = FeedStats()
        self._cursor: int | None = None
        self._states: dict[str, tuple[int, str, tuple[str, ...]]] = {}

    def poll(self) -> int:
        """Feed the rows committed since the last poll; how many rows were fed."""
        with self.store.raw() as conn:
            cur = conn.cursor()
            if self._cursor is None:
                cur.execute("SELECT last_id FROM ingest_feed_cursor WHERE name = %s", (CURSOR,))
                row = cur.fetchone()
                self._cursor = int(row[0]) if row else 0
            cur.execute("SELECT id, items FROM ingest_feed WHERE id > %s ORDER BY id LIMIT %s",
                        (self._cursor, self.limit))
            rows = cur.fetchall()
        if not rows:
            return 0
        self._feed([orjson.loads(bytes(items)) for _, items in rows])
        last = int(rows[-1][0])
        with self.store.raw() as conn:
            cur = conn.cursor()
            cur.execute("UPDATE ingest_feed_cursor SET last_id = %s WHERE name = %s",
                        (last, CURSOR))
            cur.execute("DELETE FROM ingest_feed WHERE id <= %s", (last,))
        self._cursor = self.stats.last_id = last
        self.stats.rows += len(rows)
        return len(rows)

    def _feed(self, batches: list[list[Any]]) -> None:
        stored: list[Accepted] = []
        for items in batches:
            for item in items:
                if item[0] == "m":
                    accepted = self._decode(item)
                    if accepted is not None:
                        stored.append(accepted)
                elif item[0] == "s":
                    self._state(item[1], item[2], list(item[3]), int(item[4]))
        if stored:
            self.stats.messages += len(stored)
            self.stats.lag_s = max(0.0, time.time() - stored[-1].received / 1000)
            self._hook(self.on_stored, stored)

    def _decode(self, item: list[Any]) -> Accepted | None:
        _, gateway, topic, payload, received, live = item
        raw = payload.encode()
        try:
            rec = contract.decode(topic, raw)
        except ContractError:  # stored by a worker whose contract accepted it: a version skew
            self.stats.undecodable += 1
            return None
        record = entry_of(rec, topic, raw, received, live).record
        if not isinstance(record, Accepted) or record.gateway != gateway:
            self.stats.undecodable += 1
            return None
        return record

    def _state(self, gateway: str, state: str, devices: list[str], ts: int) -> None:
        """Every worker receives every (retained) gateway state, each at its own pace: feed
        a gateway's state once, and never one older than the newest fed."""
        key = (ts, state, tuple(devices))
        last = self._states.get(gateway)
        if last is not None and (ts < last[0] or key == last):
            return
        self._states[gateway] = key
        self.stats.states += 1
        self._hook(self.on_state, gateway, state, devices)

    def _hook(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception:  # one feature's failure never stops the feed
            self.stats.hook_errors += 1
            if self.stats.hook_errors == 1:
                log.exception("collector: a feed hook failed (counted from now on)")
