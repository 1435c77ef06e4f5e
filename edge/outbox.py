"""Durable outbox: every message is on disk before it is published, and leaves only on PUBACK.

Readings and events are sealed into messages, each with its sequence number, as soon as the
gateway's send delay allows (`flush`): appended to the write-ahead journal
(edge/outbox_journal.py) and then sendable at once. At most the durability window later one
transaction (`commit`) writes the messages not yet acknowledged as ready-to-send rows and
deletes the acknowledged ones; a message acknowledged before that commit never reaches the
outbox file. A row is deleted only after the broker acknowledged its message; rows left at a
crash, in the outbox or the journal, are sent again on restart with the same sequence number,
so the collector's (gateway, seq) key makes re-sending harmless.

Sequence numbers never repeat across restarts: the last one used is stored in the same
transaction as the rows, and numbers are also reserved in blocks in a separate small file, so
even a lost or quarantined outbox file cannot make the gateway reuse one.

Quotas: when the rows exceed the byte cap or the age limit (or the disk runs low), the oldest
telemetry is evicted — events never — and each eviction becomes an explicit `data_gap` event
per device (time range, count) that travels to the collector like any other event.

A full disk is not a corrupt file (edge/outbox_disk.py): writes that fail keep their rows in
memory, up to `memory_readings`, past which the oldest telemetry is dropped and reported as a
gap. Only a file that fails its integrity check is moved aside, and the rows still readable in
it are taken over and sent with their own sequence numbers. A ledger beside the outbox knows
which data messages it held, so rows lost with the file (truncated, deleted, unreadable) are
reported as gaps with exact counts per device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.contract import DATA, EVENTS, encode_batch
from devices.model import Action, Event, Reading, Severity
from edge.outbox_disk import (
    DRAINED_KEY,
    GAP_UPSERT,
    OutboxCorrupt,
    Spans,
    attach_ledger,
    hold,
    is_corruption,
    is_disk_full,
    ledger_last_seq,
    merge_spans,
    quarantined_files,
    release,
    settle_lost,
    spans_of,
    spans_of_bodies,
    take_over_file,
)
from edge.outbox_journal import Journal

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


MEMORY_READINGS = 50_000  # readings held in memory while the disk refuses writes
FULL_BELOW = 256 * 1024  # free bytes under which a failed open is put down to a full disk



class OutboxError(RuntimeError):
    """The outbox cannot be used."""


class OutboxUnavailable(OutboxError):
    """The outbox file cannot be opened (disk full, unwritable, I/O error): not corruption."""


class OutboxWriteError(OutboxError):
    """A commit failed; what it held stays in memory and is written by a later commit."""


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
        """Return the next sequence number; OSError (disk full) hands out none."""
        if self._next > self._ceiling:
            ceiling = self._next + self.block - 1
            tmp = self.path.with_suffix(".tmp")
            try:
                with open(tmp, "w") as fh:
                    fh.write(json.dumps({"reserved": ceiling}))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            self._ceiling = ceiling  # only a reservation on disk may be used
        seq, self._next = self._next, self._next + 1
        return seq


def gap_spans(bodies: Sequence[bytes]) -> dict[str, tuple[int, int, int]]:
    """Per device: (readings, first time, last time) in evicted data messages."""
    return {d: (n, t0, t1) for d, (n, t0, t1) in spans_of_bodies(bodies).items()}


def gap_event(device: str, count: int, tmin: int, tmax: int, reason: str, ts: int) -> Event:
    """The explicit record of readings a gateway had to drop: device, time range, count."""
    return Event(device, ts, "data_gap", Action.INFO, Severity.WARNING,
                 evidence={"count": count, "from": tmin, "to": tmax, "reason": reason},
                 message=f"{count} readings dropped from the gateway outbox ({reason})")


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
        self.memory_readings = MEMORY_READINGS
        self.boot, self.synced = "", True  # stamped on rows: the clock they were observed with
        self.incidents: list[Event] = []  # problems of the outbox itself, to report upstream
        self._db: sqlite3.Connection | None = None
        self._seq: SeqAllocator | None = None
        self._pending: dict[str, list[Reading | Event]] = {DATA: [], EVENTS: []}
        self._acked: list[int] = []
        self._unwritten: dict[int, Row] = {}  # rows with their seqs, not yet committed
        self._journaled: set[int] = set()  # unwritten rows safe in the journal: sendable
        self._to_journal: list[int] = []  # rows sealed by flush() the journal refused
        self._journal: Journal | None = None
        self._journal_failing = False
        self._held: dict[int, Spans] = {}  # readings per device of unwritten data rows
        self._shed: Spans = {}  # readings dropped from memory, recorded at the next commit
        self._shedding = False
        self.quarantine_left = 0  # moved-aside files whose rows could not be taken over yet
        self._evicting = False  # inside an episode of evictions (logged once, gaps merged)
        self._gaps_taken: list[tuple[str, int]] = []  # gaps in rows not yet committed
        self._episode_evicted = 0
        self._bytes = 0
        self.owner = "gateway"  # device id used for events about the outbox itself
        self.protected: frozenset[int] = frozenset()  # seqs awaiting PUBACK: never evicted
        self.counters = {"appended": 0, "stored_messages": 0, "acked_messages": 0, "commits": 0,
                         "evicted_messages": 0, "evicted_readings": 0, "quarantined": 0,
                         "shed_readings": 0, "lost_readings": 0, "taken_over_messages": 0,
                         "journaled_messages": 0, "acked_before_commit": 0,
                         "recovered_messages": 0}

    @property
    def journal_path(self) -> Path:
        """The write-ahead journal of messages sealed since the last commit."""
        return self.path.with_name(self.path.name + ".journal")

    @property
    def ledger_path(self) -> Path:
        """The ledger of data messages held, beside the outbox file."""
        return self.path.with_name(self.path.name + ".ledger")

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self) -> Outbox:
        """Open (creating if needed) and check the file; a corrupt file is quarantined.

        A file that cannot be opened for any other reason (disk full, I/O error, permissions)
        raises OutboxUnavailable and is left as it is.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db, last = self._connect_checked()
        except (sqlite3.Error, OSError) as exc:
            raise OutboxUnavailable(f"{self.path}: cannot open the outbox: {exc}"
                                    f"{_hint(exc, self.path)}") from exc
        try:
            attach_ledger(db, self.ledger_path, self.synchronous)
            last = max(last, ledger_last_seq(db))
            journal = Journal(self.journal_path, sync=self.synchronous == "FULL")
            recovered, journal_last = journal.open()
        except (sqlite3.Error, OSError) as exc:
            db.close()
            raise OutboxUnavailable(f"{self.path}: cannot open the outbox: {exc}"
                                    f"{_hint(exc, self.path)}") from exc
        try:
            self._db, self._journal = db, journal
            self._seq = SeqAllocator(self.path.with_name(self.path.name + ".seq"),
                                     floor=max(last, journal_last))
            self._bytes = self._stored_bytes()
            self._recover(db, recovered)
            self.take_over()
        except (sqlite3.Error, OSError) as exc:
            self._db, self._journal = None, None
            journal.close()
            db.close()
            raise OutboxUnavailable(f"{self.path}: cannot open the outbox: {exc}"
                                    f"{_hint(exc, self.path)}") from exc
        return self

    def _recover(self, db: sqlite3.Connection, rows: list[Row]) -> None:
        """Take the journal's rows back (sendable at once, committed at the next commit);
        rows a commit already wrote before the crash are left out."""
        if not rows:
            return
        have: set[int] = set()
        seqs = [r[0] for r in rows]
        for i in range(0, len(seqs), 500):
            chunk = seqs[i:i + 500]
            have.update(s for (s,) in db.execute(
                f"SELECT seq FROM messages WHERE seq IN ({','.join('?' * len(chunk))})", chunk))
        for row in rows:
            if row[0] in have:
                continue
            self._unwritten[row[0]] = row
            self._journaled.add(row[0])
            if row[2] == PRIO_DATA:
                self._held[row[0]] = spans_of_bodies([row[7]])
        taken = len(rows) - len(have)
        self.counters["recovered_messages"] += taken
        if taken:
            log.info("outbox journal: %d messages sealed before the last stop are sent again",
                     taken)

    def _connect_checked(self) -> tuple[sqlite3.Connection, int]:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            self._quarantine(str(exc))
        try:
            return self._connect()
        except sqlite3.DatabaseError as again:
            raise OutboxError(f"{self.path}: cannot create a fresh outbox: {again}") from again

    def _connect(self) -> tuple[sqlite3.Connection, int]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxCorrupt(f"quick_check failed: {check}")
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
        log.error("outbox %s is corrupt (%s); moved to %s and starting a fresh one; the rows "
                  "still readable in it will be sent", self.path, why, target)
        self.incidents.append(Event(
            self.owner, self.clock(), "outbox_quarantined", Action.INFO, Severity.MAJOR,
            evidence={"file": str(target), "error": why[:200]},
            message="outbox file was corrupt; quarantined, its readable rows are sent and the "
                    "rest reported as a data gap"))

    def take_over(self) -> int:
        """Take over moved-aside files, then report what the outbox lost; return files left.

        Losses are counted only once every moved-aside file was read: until then its rows
        would be taken for lost.
        """
        self.quarantine_left = self.drain_quarantined()
        if not self.quarantine_left:
            self._reconcile()
        return self.quarantine_left

    def drain_quarantined(self) -> int:
        """Take over the readable rows of moved-aside outbox files; return how many are left.

        Rows keep their sequence numbers (the allocator never hands those out again), so a
        message the collector already has is deduplicated there. A file is taken over a few
        MB per transaction, its progress recorded in the same transaction, so no row is taken
        twice and a full disk only pauses it; the file itself stays for inspection.
        """
        db = self._require()
        left = 0
        for f in quarantined_files(self.path):
            try:
                self._take_over_file(db, f)
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                log.warning("cannot take over the rows of %s yet: %s", f, exc)
                left += 1
            self._bytes = self._stored_bytes()  # parts taken over are committed
        return left

    def _take_over_file(self, db: sqlite3.Connection, f: Path) -> None:
        done = take_over_file(db, f, DRAINED_KEY + f.name)
        if done is not None:
            messages, readings, why = done
            self.counters["taken_over_messages"] += messages
            log.warning("took over %d messages (%d readings and events) from %s%s", messages,
                        readings, f, f"; reading stopped at: {why}" if why else "")

    def _reconcile(self) -> None:
        """Report data messages the ledger holds but the outbox lost; hold the ones it lacks."""
        lost, spans = settle_lost(self._require(), PRIO_DATA, self._require_seq().last)
        readings = sum(n for n, _, _ in spans.values())
        if not readings:
            return
        self.counters["lost_readings"] += readings
        log.error("outbox %s lost %d messages it held (%d readings of %d devices): the file "
                  "was truncated, replaced or partly unreadable; reported as data gaps",
                  self.path, len(lost), readings, len(spans))
        self.incidents.append(Event(
            self.owner, self.clock(), "outbox_lost", Action.INFO, Severity.MAJOR,
            evidence={"messages": len(lost), "readings": readings,
                      "first_seq": lost[0][0], "last_seq": lost[-1][0]},
            message=f"the outbox lost {readings} readings it held; reported as data gaps"))

    @property
    def unwritten_readings(self) -> int:
        """Readings accepted but not yet on disk (pending, or kept by a failed commit)."""
        return sum(r[4] for s, r in self._unwritten.items()
                   if r[2] == PRIO_DATA and s not in self._journaled) + \
            len(self._pending[DATA])

    @property
    def is_open(self) -> bool:
        """True between open() and close()."""
        return self._db is not None

    def close(self) -> None:
        """Write what is pending and close (idempotent)."""
        if self._db is not None:
            try:
                self.commit()
            finally:
                self._db.close()
                self._db = None
                if self._journal is not None:
                    self._journal.close()
                    self._journal = None

    # --- producers ---------------------------------------------------------------------------

    def add(self, items: Sequence[Reading | Event]) -> None:
        """Queue readings or events; they reach disk at the next commit."""
        for item in items:
            self._pending[EVENTS if isinstance(item, Event) else DATA].append(item)
        self.counters["appended"] += len(items)

    @property
    def has_urgent(self) -> bool:
        """True when events or the outbox's own incidents wait (with a durability window of
        0 every item is committed at once; otherwise only incidents are)."""
        return bool(self._pending[EVENTS]) or bool(self.incidents)

    def flush(self) -> int:
        """Seal what is pending into messages and journal them; return how many became
        sendable. They are written to the outbox file by the next commit unless their PUBACK
        comes first. A journal that refuses the write (full disk) keeps them in memory, to be
        journaled next time or committed: they are not sent before one of the two worked."""
        journal = self._journal
        if journal is None:
            raise OutboxError("outbox is not open")
        if self._gaps_taken:  # gap events wait in `pending`: only a commit may settle them
            return 0
        before = len(self._unwritten)
        try:
            self._rows()
        except OSError as exc:  # no sequence number could be reserved: the items wait
            self._journal_failed(exc)
            return 0
        self._to_journal.extend(list(self._unwritten)[before:])
        if not self._to_journal:
            return 0
        rows = [self._unwritten[s] for s in self._to_journal if s in self._unwritten]
        try:
            journal.append(rows)
        except OSError as exc:
            self._journal_failed(exc)
            self._shed_excess()
            return 0
        if self._journal_failing:
            self._journal_failing = False
            log.info("outbox journal writes work again")
        self._journaled.update(r[0] for r in rows)
        self._to_journal = []
        self.counters["journaled_messages"] += len(rows)
        return len(rows)

    def _journal_failed(self, exc: OSError) -> None:
        if not self._journal_failing:
            self._journal_failing = True
            log.error("outbox cannot seal or journal messages (%s: %s): they wait for the next "
                      "commit before they are sent", self.journal_path, exc)

    # --- the uplink ----------------------------------------------------------------------------

    def ack(self, seq: int) -> None:
        """Record the broker's PUBACK for a message; the row goes at the next commit (one not
        yet committed is never written)."""
        if self._unwritten.pop(seq, None) is not None:
            self._journaled.discard(seq)
            self._held.pop(seq, None)
            self.counters["acked_before_commit"] += 1
            self.counters["acked_messages"] += 1
            return
        self._acked.append(seq)

    def commit(self) -> int:
        """Write pending items as messages, drop acknowledged ones, enforce quotas: one txn.

        Raises OutboxWriteError when the disk refuses the write: nothing accepted is dropped
        (the same rows, with the same seqs, are written next time) until more than
        `memory_readings` readings wait, when the oldest telemetry is shed and reported.
        """
        db = self._require()
        if self.incidents:
            self._pending[EVENTS].extend(self.incidents)
            self.incidents = []
        if not self._evicting and not self._gaps_taken:
            self._pending[EVENTS].extend(self._take_gaps(db))
        try:
            self._rows()
        except OSError as exc:  # no sequence number could be reserved: the items wait
            self._shed_excess()
            raise OutboxWriteError(f"{self.path}: cannot reserve sequence numbers: {exc}") \
                from exc
        rows, acked, shed = list(self._unwritten.values()), self._acked, self._shed
        self._acked = []
        if not rows and not acked and not shed:
            self._reset_journal()  # what it held was acknowledged before any commit
            return 0
        try:
            gone = self._write(db, rows, acked, shed)
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._acked = acked + self._acked
            self._relieve(exc)
            self._shed_excess()
            if isinstance(exc, sqlite3.Error):
                raise OutboxWriteError(f"{self.path}: {exc}") from exc
            raise
        self._unwritten, self._shed = {}, {}
        self._journaled, self._to_journal = set(), []
        for r in rows:
            self._held.pop(r[0], None)
        self._reset_journal()
        self._shedding = False
        self._gaps_taken = []
        self._bytes += sum(len(r[7]) for r in rows) - gone
        self.counters["stored_messages"] += len(rows)
        self.counters["acked_messages"] += len(acked)
        self.counters["commits"] += 1
        self.enforce_quota(protect=self.protected)
        return len(rows)

    def _reset_journal(self) -> None:
        """Empty the journal: every row in it is committed or acknowledged."""
        journal = self._journal
        if journal is None or not journal.dirty:
            return
        try:
            journal.reset(self._require_seq().last)
        except OSError as exc:  # its rows are re-sent after a crash: harmless duplicates
            log.warning("outbox journal %s cannot be emptied: %s", self.journal_path, exc)

    def _write(self, db: sqlite3.Connection, rows: list[Row], acked: list[int],
               shed: Spans) -> int:
        """One transaction: new rows and their ledger entries, acks, shed and settled gaps."""
        db.execute("BEGIN")
        db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        gone = self._delete(db, acked)
        held = [(r[0], self._held[r[0]]) for r in rows if r[0] in self._held]
        if rows or held:
            hold(db, held, self._require_seq().last)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)",
                       (str(self._require_seq().last),))
        if shed:
            db.executemany(GAP_UPSERT, [(d, n, t0, t1, "disk_full")
                                         for d, (n, t0, t1) in shed.items()])
        if self._gaps_taken:  # the gap events are in these rows: settle what they report
            db.executemany("UPDATE gaps SET count = count - ? WHERE device = ?",
                           [(n, d) for d, n in self._gaps_taken])
            db.execute("DELETE FROM gaps WHERE count <= 0")
        db.execute("COMMIT")
        return gone

    def _rows(self) -> None:
        """Turn pending items into rows with sequence numbers (kept until they are written)."""
        now = self.clock()
        for channel, prio in ((EVENTS, PRIO_EVENTS), (DATA, PRIO_DATA)):
            items = self._pending[channel]
            while items:
                chunk = items[: self.max_batch]
                seq = self._require_seq().take()  # OSError: the chunk stays pending
                ts = [it.ts for it in chunk]
                self._unwritten[seq] = (seq, channel, prio, now, len(chunk), min(ts), max(ts),
                                        encode_batch(chunk), self.boot, int(self.synced))
                if channel == DATA:
                    self._held[seq] = spans_of(chunk)
                del items[: self.max_batch]

    def _shed_excess(self) -> None:
        """Past `memory_readings` waiting, drop the oldest telemetry, recorded as a gap."""
        excess = self.unwritten_readings - self.memory_readings
        if excess <= 0:
            return
        dropped, keep = 0, {}
        for seq, row in self._unwritten.items():  # oldest first; journaled rows are on disk
            if dropped < excess and row[2] == PRIO_DATA and seq not in self._journaled:
                merge_spans(self._shed, self._held.pop(seq))
                dropped += row[4]
            else:
                keep[seq] = row
        self._unwritten = keep
        self._to_journal = [s for s in self._to_journal if s in keep]
        data = self._pending[DATA]
        if dropped < excess:
            cut = excess - dropped
            merge_spans(self._shed, spans_of(data[:cut]))
            del data[:cut]
            dropped += cut
        self.counters["shed_readings"] += dropped
        if not self._shedding:
            self._shedding = True
            log.error("outbox cannot write and holds %d readings in memory: dropping the "
                      "oldest telemetry, reported as data gaps once writes work",
                      self.memory_readings)

    def _relieve(self, exc: BaseException) -> None:
        """On a full disk, give back the space of a checkpointed write-ahead log."""
        if self._db is not None and is_disk_full(exc):
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _delete(self, db: sqlite3.Connection, seqs: Sequence[int]) -> int:
        """Delete acknowledged messages (inside the caller's transaction); return their bytes."""
        if not seqs:
            return 0
        gone = 0
        for i in range(0, len(seqs), 500):
            chunk = list(seqs[i : i + 500])
            marks = ",".join("?" * len(chunk))
            gone += db.execute(f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM messages "
                               f"WHERE seq IN ({marks})", chunk).fetchone()[0]
            db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
        release(db, seqs)
        return int(gone)

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
        sendable = [self._unwritten[s] for s in self._journaled if s not in exclude]
        if sendable:  # journaled, not yet committed: merged in the same order
            out += [Pending(r[0], r[1], r[3], r[4], r[7], r[8], bool(r[9])) for r in sendable]

            def key(p: Pending) -> tuple[int, bool, int]:
                return (p.channel != EVENTS,
                        live_after is not None and p.created < live_after, p.seq)
            out.sort(key=key)
        return out[:limit]

    # --- quotas --------------------------------------------------------------------------------

    def enforce_quota(self, free_bytes: int | None = None,
                      protect: frozenset[int] = frozenset()) -> int:
        """Evict the oldest telemetry while over a limit; return the readings evicted.

        Messages in `protect` (published, PUBACK pending) are never evicted: they may already
        be at the collector, and counting them as lost would misreport the gap; nor are
        messages already acknowledged (deleted at the next commit): they are not lost at all.
        Evictions are merged per device in the `gaps` table, in the same transaction, and
        become `data_gap` events once the outbox is back under its limits — so a months-long
        outage adds one record per device, not one per eviction. A failed eviction changes
        nothing: the transaction is rolled back and OutboxWriteError raised.
        """
        q = self.quota
        if not (q.max_bytes or q.max_age_ms or q.min_free_bytes):
            self._account_eviction(0, 0)
            return 0
        db = self._require()
        protect = protect | frozenset(self._acked)
        oldest_allowed = self.clock() - q.max_age_ms if q.max_age_ms else None
        evicted: list[tuple[int, bytes]] = []
        causes: set[str] = set()  # what made it evict: the gap's reason
        size = self._bytes
        db.execute("BEGIN")
        try:
            while True:
                over_bytes = q.max_bytes and size > q.max_bytes
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
                causes.add("quota" if over_bytes else "min_free_disk" if low_disk else "max_age")
                db.execute("DELETE FROM messages WHERE seq = ?", (row[0],))
                size -= len(row[2])
                if free_bytes is not None:
                    free_bytes += len(row[2])
                evicted.append((row[0], row[2]))
            reason = next((c for c in ("quota", "min_free_disk", "max_age") if c in causes), "")
            spans = gap_spans([body for _, body in evicted])
            release(db, [seq for seq, _ in evicted])
            db.executemany(GAP_UPSERT, [(d, n, t0, t1, reason)
                                         for d, (n, t0, t1) in spans.items()])
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:  # a failed COMMIT (disk full) has already rolled back
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._relieve(exc)
                raise OutboxWriteError(f"{self.path}: evicting: {exc}") from exc
            raise
        self._bytes = size
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
            r[4] for r in self._unwritten.values())
        return {"messages": msgs, "readings": readings + queued, "oldest_created": oldest,
                "bytes": self._bytes}

    def _stored_bytes(self) -> int:
        db = self._require()
        return int(db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM messages")
                   .fetchone()[0])

    def _require_seq(self) -> SeqAllocator:
        if self._seq is None:
            raise OutboxError("outbox is not open")
        return self._seq

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db


def _hint(exc: BaseException, path: Path) -> str:
    """What a person should check, for an outbox that cannot be opened."""
    try:  # SQLite reports a full disk while mapping its shared memory as an I/O error
        st = os.statvfs(path.parent)
        full = st.f_bavail * st.f_frsize < FULL_BELOW
    except OSError:
        full = False
    if is_disk_full(exc) or full:
        return " (the disk holding it is full: free space there; the file was left as it is)"
    return " (the file was left as it is)"
