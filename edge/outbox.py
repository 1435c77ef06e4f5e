"""Durable outbox: every reading is on disk before it is published, and leaves only on PUBACK.

Readings and events wait in memory for at most the durability window, then one transaction
writes them as ready-to-send message rows, each with its sequence number. A row is deleted
only after the broker acknowledged its message; rows left at a crash are sent again on restart
with the same sequence number, so the collector's (gateway, seq) key makes re-sending harmless.

Sequence numbers never repeat across restarts: the last one used is stored in the same
transaction as the rows, and numbers are also reserved in blocks in a separate small file, so
even a lost or quarantined outbox file cannot make the gateway reuse one.

Quotas: when the rows exceed the byte cap or the age limit (or the disk runs low), the oldest
telemetry is evicted — events never — and each eviction becomes an explicit `data_gap` event
per device (time range, count) that travels to the collector like any other event.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from devices.contract import DATA, EVENTS, encode_batch
from devices.model import Action, Event, Reading, Severity

log = logging.getLogger(__name__)

PRIO_EVENTS, PRIO_DATA = 0, 1
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY,
    channel  TEXT    NOT NULL,
    prio     INTEGER NOT NULL,
    created  INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    tmin     INTEGER NOT NULL,
    tmax     INTEGER NOT NULL,
    body     BLOB    NOT NULL,
    boot     TEXT    NOT NULL DEFAULT '',
    synced   INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS messages_by_prio ON messages (prio, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gaps (
    device TEXT PRIMARY KEY,
    count  INTEGER NOT NULL,
    tmin   INTEGER NOT NULL,
    tmax   INTEGER NOT NULL,
    reason TEXT    NOT NULL
);
"""
_MIGRATE_V1 = ("ALTER TABLE messages ADD COLUMN boot TEXT NOT NULL DEFAULT ''",
               "ALTER TABLE messages ADD COLUMN synced INTEGER NOT NULL DEFAULT 1")


# seq, channel, prio, created, n, tmin, tmax, body, boot, synced
Row = tuple[int, str, int, int, int, int, int, bytes, str, int]


class OutboxError(RuntimeError):
    """The outbox cannot be used."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored message waiting for its PUBACK."""

    seq: int
    channel: str
    created: int
    n: int
    body: bytes
    boot: str = ""
    synced: bool = True


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits of the outbox; 0 means no limit."""

    max_bytes: int = 0
    max_age_ms: int = 0
    min_free_bytes: int = 0  # free space the outbox leaves on its disk


class SeqAllocator:
    """Hands out sequence numbers that never repeat, reserving them in blocks on disk."""

    def __init__(self, path: Path, floor: int, block: int = 10_000) -> None:
        self.path, self.block = path, block
        self._ceiling = self._read()
        # A healthy outbox knows the last number used; without it, skip past the reservation.
        self._next = floor + 1 if floor > 0 else self._ceiling + 1

    def _read(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["reserved"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    @property
    def last(self) -> int:
        """The last number handed out (0 before the first)."""
        return self._next - 1

    def take(self) -> int:
        """Return the next sequence number."""
        if self._next > self._ceiling:
            self._ceiling = self._next + self.block - 1
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as fh:
                fh.write(json.dumps({"reserved": self._ceiling}))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        seq, self._next = self._next, self._next + 1
        return seq


def gap_spans(bodies: Sequence[bytes]) -> dict[str, tuple[int, int, int]]:
    """Per device: (readings, first time, last time) in evicted data messages."""
    per_device: dict[str, list[int]] = {}
    for body in bodies:
        for r in orjson.loads(body):
            span = per_device.setdefault(r["device"], [0, r["ts"], r["ts"]])
            span[0] += 1
            span[1], span[2] = min(span[1], r["ts"]), max(span[2], r["ts"])
    return {d: (n, t0, t1) for d, (n, t0, t1) in per_device.items()}


def gap_event(device: str, count: int, tmin: int, tmax: int, reason: str, ts: int) -> Event:
    """The explicit record of readings a gateway had to drop: device, time range, count."""
    return Event(device, ts, "data_gap", Action.INFO, Severity.WARNING,
                 evidence={"count": count, "from": tmin, "to": tmax, "reason": reason},
                 message=f"{count} readings evicted from the gateway outbox ({reason})")


class Outbox:
    """The gateway's store-and-forward buffer (one writer: the gateway's event loop)."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL", max_batch: int = 500,
                 quota: Quota | None = None,
                 clock: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.max_batch = max_batch
        self.quota = quota or Quota()
        self.clock = clock
        self.boot, self.synced = "", True  # stamped on rows: the clock they were observed with
        self.incidents: list[Event] = []  # problems of the outbox itself, to report upstream
        self._db: sqlite3.Connection | None = None
        self._seq: SeqAllocator | None = None
        self._pending: dict[str, list[Reading | Event]] = {DATA: [], EVENTS: []}
        self._acked: list[int] = []
        self._unwritten: list[Row] = []  # rows of a commit that failed
        self._evicting = False  # inside an episode of evictions (logged once, gaps merged)
        self._gaps_taken: list[tuple[str, int]] = []  # gaps in rows not yet committed
        self._episode_evicted = 0
        self._bytes = 0
        self.owner = "gateway"  # device id used for events about the outbox itself
        self.protected: frozenset[int] = frozenset()  # seqs awaiting PUBACK: never evicted
        self.counters = {"appended": 0, "stored_messages": 0, "acked_messages": 0, "commits": 0,
                         "evicted_messages": 0, "evicted_readings": 0, "quarantined": 0}

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self) -> Outbox:
        """Open (creating if needed) and check the file; a corrupt file is quarantined."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db, last = self._connect()
        except sqlite3.DatabaseError as exc:
            self._quarantine(str(exc))
            try:
                db, last = self._connect()
            except sqlite3.DatabaseError as again:
                raise OutboxError(f"{self.path}: cannot create a fresh outbox: {again}") \
                    from again
        self._db = db
        self._seq = SeqAllocator(self.path.with_name(self.path.name + ".seq"), floor=last)
        self._bytes = db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM messages") \
            .fetchone()[0]
        return self

    def _connect(self) -> tuple[sqlite3.Connection, int]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check failed: {check}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.executescript(_SCHEMA)
            if version == 1:
                for stmt in _MIGRATE_V1:
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
            return db, max(int(row[0]) if row else 0, top)
        except sqlite3.DatabaseError:
            db.close()
            raise

    def _quarantine(self, why: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{target}{suffix}"))
        self.counters["quarantined"] += 1
        log.error("outbox %s is corrupt (%s); moved to %s and starting a fresh one",
                  self.path, why, target)
        self.incidents.append(Event(
            self.owner, self.clock(), "outbox_quarantined", Action.INFO, Severity.MAJOR,
            evidence={"file": str(target), "error": why[:200]},
            message="outbox file was corrupt; quarantined, readings in it could not be sent"))

    def close(self) -> None:
        """Write what is pending and close (idempotent)."""
        if self._db is not None:
            self.commit()
            self._db.close()
            self._db = None

    # --- producers ---------------------------------------------------------------------------

    def add(self, items: Sequence[Reading | Event]) -> None:
        """Queue readings or events; they reach disk at the next commit."""
        for item in items:
            self._pending[EVENTS if isinstance(item, Event) else DATA].append(item)
        self.counters["appended"] += len(items)

    @property
    def has_urgent(self) -> bool:
        """True when events wait: they are committed at once, not after the window."""
        return bool(self._pending[EVENTS]) or bool(self.incidents)

    # --- the uplink ----------------------------------------------------------------------------

    def ack(self, seq: int) -> None:
        """Record the broker's PUBACK for a message; the row goes at the next commit."""
        self._acked.append(seq)

    def commit(self) -> int:
        """Write pending items as messages, drop acknowledged ones, enforce quotas: one txn."""
        db = self._require()
        if self.incidents:
            self._pending[EVENTS].extend(self.incidents)
            self.incidents = []
        if not self._evicting and not self._gaps_taken:
            self._pending[EVENTS].extend(self._take_gaps(db))
        rows = self._unwritten + self._rows()
        acked, self._acked = self._acked, []
        self._unwritten = []
        if not rows and not acked:
            return 0
        try:
            db.execute("BEGIN")
            db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            self._delete(db, acked)
            if self._gaps_taken:  # the gap events are in these rows: settle what they report
                db.executemany("UPDATE gaps SET count = count - ? WHERE device = ?",
                               [(n, d) for d, n in self._gaps_taken])
                db.execute("DELETE FROM gaps WHERE count <= 0")
            if rows:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)",
                           (str(self._require_seq().last),))
            db.execute("COMMIT")
            self._gaps_taken = []
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            # Nothing accepted is dropped: the same rows (same seqs) are written next time.
            self._unwritten, self._acked = rows, acked + self._acked
            raise
        self._bytes += sum(len(r[7]) for r in rows)
        self.counters["stored_messages"] += len(rows)
        self.counters["acked_messages"] += len(acked)
        self.counters["commits"] += 1
        self.enforce_quota(protect=self.protected)
        return len(rows)

    def _rows(self) -> list[Row]:
        rows: list[Row] = []
        now = self.clock()
        for channel, prio in ((EVENTS, PRIO_EVENTS), (DATA, PRIO_DATA)):
            items, self._pending[channel] = self._pending[channel], []
            for i in range(0, len(items), self.max_batch):
                chunk = items[i : i + self.max_batch]
                ts = [it.ts for it in chunk]
                rows.append((self._require_seq().take(), channel, prio, now, len(chunk),
                             min(ts), max(ts), encode_batch(chunk), self.boot,
                             int(self.synced)))
        return rows

    def _delete(self, db: sqlite3.Connection, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        gone = 0
        for i in range(0, len(seqs), 500):
            chunk = list(seqs[i : i + 500])
            marks = ",".join("?" * len(chunk))
            gone += db.execute(f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM messages "
                               f"WHERE seq IN ({marks})", chunk).fetchone()[0]
            db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
        self._bytes -= gone

    def next_messages(self, limit: int, exclude: set[int], *,
                      live_after: int | None = None) -> list[Pending]:
        """Up to `limit` stored messages not in `exclude`: events, then live data, then backlog.

        Data created at or after `live_after` (epoch ms) counts as live and goes before older
        data (the backlog), so an outage's backlog never starves fresh readings.
        """
        db = self._require()
        exclude = exclude | set(self._acked)  # acknowledged, deleted at the next commit
        fetch = limit + len(exclude)
        order = "prio, seq" if live_after is None else "prio, created < ?, seq"
        args: tuple[int, ...] = (fetch,) if live_after is None else (live_after, fetch)
        cur = db.execute(
            "SELECT seq, channel, created, n, body, boot, synced FROM messages "
            f"ORDER BY {order} LIMIT ?", args)
        out = [Pending(seq, channel, created, n, body, boot, bool(synced))
               for seq, channel, created, n, body, boot, synced in cur if seq not in exclude]
        return out[:limit]

    # --- quotas --------------------------------------------------------------------------------

    def enforce_quota(self, free_bytes: int | None = None,
                      protect: frozenset[int] = frozenset()) -> int:
        """Evict the oldest telemetry while over a limit; return the readings evicted.

        Messages in `protect` (published, PUBACK pending) are never evicted: they may already
        be at the collector, and counting them as lost would misreport the gap. Evictions are
        merged per device in the `gaps` table, in the same transaction, and become `data_gap`
        events once the outbox is back under its limits — so a months-long outage adds one
        record per device, not one per eviction.
        """
        q = self.quota
        if not (q.max_bytes or q.max_age_ms or q.min_free_bytes):
            self._account_eviction(0, 0)
            return 0
        db = self._require()
        oldest_allowed = self.clock() - q.max_age_ms if q.max_age_ms else None
        evicted: list[bytes] = []
        db.execute("BEGIN")
        try:
            while True:
                over_bytes = q.max_bytes and self._bytes > q.max_bytes
                low_disk = (q.min_free_bytes and free_bytes is not None
                            and free_bytes < q.min_free_bytes)
                row = next((r for r in db.execute(
                    "SELECT seq, created, body FROM messages WHERE prio = ? ORDER BY seq "
                    "LIMIT ?", (PRIO_DATA, len(protect) + 1)) if r[0] not in protect), None)
                if row is None:
                    break
                too_old = oldest_allowed is not None and row[1] < oldest_allowed
                if not (over_bytes or low_disk or too_old):
                    break
                db.execute("DELETE FROM messages WHERE seq = ?", (row[0],))
                self._bytes -= len(row[2])
                if free_bytes is not None:
                    free_bytes += len(row[2])
                evicted.append(row[2])
            reason = "max_age" if oldest_allowed is not None and not (
                q.max_bytes and self._bytes > q.max_bytes) else "quota"
            spans = gap_spans(evicted)
            db.executemany(
                "INSERT INTO gaps VALUES (?,?,?,?,?) ON CONFLICT (device) DO UPDATE SET "
                "count = count + excluded.count, tmin = MIN(tmin, excluded.tmin), "
                "tmax = MAX(tmax, excluded.tmax)",
                [(d, n, t0, t1, reason) for d, (n, t0, t1) in spans.items()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        count = sum(n for n, _, _ in spans.values())
        self._account_eviction(len(evicted), count)
        return count

    def _account_eviction(self, messages: int, readings: int) -> None:
        """Count evictions; log once when an episode starts and once when it ends."""
        self.counters["evicted_messages"] += messages
        self.counters["evicted_readings"] += readings
        if readings and not self._evicting:
            self._evicting, self._episode_evicted = True, 0
            log.warning("outbox over its limits: evicting the oldest telemetry; each device's "
                        "loss is recorded and reported as a data gap")
        if readings:
            self._episode_evicted += readings
        elif self._evicting:
            self._evicting = False
            log.info("outbox back under its limits; %d readings were evicted",
                     self._episode_evicted)

    def _take_gaps(self, db: sqlite3.Connection) -> list[Event]:
        """Turn the merged gaps into events (deleted in the same commit that stores them)."""
        rows = db.execute("SELECT device, count, tmin, tmax, reason FROM gaps").fetchall()
        self._gaps_taken = [(r[0], r[1]) for r in rows]
        now = self.clock()
        return [gap_event(d, n, t0, t1, reason, now) for d, n, t0, t1, reason in rows]

    def stats(self) -> dict[str, int]:
        """Depth of the outbox: messages, readings, bytes and the oldest message's time."""
        db = self._require()
        msgs, readings, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(MIN(created), 0) FROM messages"
        ).fetchone()
        queued = sum(len(v) for v in self._pending.values()) + sum(
            r[4] for r in self._unwritten)
        return {"messages": msgs, "readings": readings + queued, "oldest_created": oldest,
                "bytes": self._bytes}

    def _require_seq(self) -> SeqAllocator:
        if self._seq is None:
            raise OutboxError("outbox is not open")
        return self._seq

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db
