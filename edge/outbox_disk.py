"""What the outbox does when its disk misbehaves: tell a full disk from a corrupt file, keep a
ledger of what the outbox held, and read what is still readable from a moved-aside file.

The ledger (`outbox.sqlite.ledger`, attached to the outbox's connection and written in the same
transactions) holds, for each data message not yet acknowledged or evicted, its sequence number
and its readings per device — no bodies, so it stays small. A message in the ledger but not in
the outbox was lost with the outbox file (truncated, deleted, unreadable parts of a corrupt
file): the gateway reports it as a `data_gap` with exact counts per device.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

LEDGER = "ledger"  # schema name of the attached ledger database
# One table, one b-tree, small rows: a commit usually writes a single ledger page (SD-card
# wear). The last sequence number committed is kept in a row keyed above every real one, so
# it sits in the same rightmost leaf as the rows being added (a meta table, or a row at the
# left end, would cost more page writes per commit). A row's `devices` is
# [first ts, last ts, {device: readings}]: exact counts per device, the message's time range.
LEDGER_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {LEDGER}.held (seq INTEGER PRIMARY KEY, devices BLOB NOT NULL)",
)
LAST_SEQ_ROW = 2**62
DRAINED_KEY = "drained:"  # meta key prefix: a moved-aside file whose rows were taken over
GAP_UPSERT = ("INSERT INTO gaps VALUES (?,?,?,?,?) ON CONFLICT (device) DO UPDATE SET "
              "count = count + excluded.count, tmin = MIN(tmin, excluded.tmin), "
              "tmax = MAX(tmax, excluded.tmax)")

# Only these say the file itself is damaged; SQLITE_FULL, SQLITE_IOERR, SQLITE_CANTOPEN,
# SQLITE_READONLY and the rest are about the disk or the process, and moving the file aside
# for them would throw away a healthy outbox.
_CORRUPTION = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

# devices -> [readings, first ts, last ts]
Spans = dict[str, list[int]]


class OutboxCorrupt(sqlite3.DatabaseError):
    """The outbox file failed its integrity check."""


def is_corruption(exc: BaseException) -> bool:
    """True when `exc` says the database file is damaged (not the disk full or unwritable)."""
    if isinstance(exc, OutboxCorrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _CORRUPTION


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` is SQLITE_FULL or ENOSPC."""
    import errno

    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) == sqlite3.SQLITE_FULL


def spans_of(items: Iterable[Any]) -> Spans:
    """Per device: [readings, first ts, last ts] of readings (objects with device and ts)."""
    out: Spans = {}
    for r in items:
        span = out.setdefault(r.device, [0, r.ts, r.ts])
        span[0] += 1
        span[1], span[2] = min(span[1], r.ts), max(span[2], r.ts)
    return out


def spans_of_bodies(bodies: Iterable[bytes]) -> Spans:
    """Per device: [readings, first ts, last ts] in encoded data message bodies."""
    out: Spans = {}
    for body in bodies:
        for r in orjson.loads(body):
            span = out.setdefault(r["device"], [0, r["ts"], r["ts"]])
            span[0] += 1
            span[1], span[2] = min(span[1], r["ts"]), max(span[2], r["ts"])
    return out


def merge_spans(into: Spans, more: Spans) -> Spans:
    """Add `more` to `into` (in place) and return it."""
    for device, (n, t0, t1) in more.items():
        span = into.setdefault(device, [0, t0, t1])
        span[0] += n
        span[1], span[2] = min(span[1], t0), max(span[2], t1)
    return into


def attach_ledger(db: sqlite3.Connection, path: Path, synchronous: str) -> None:
    """Attach the ledger beside the outbox; a damaged ledger is replaced by an empty one."""
    db.execute(f"ATTACH DATABASE ? AS {LEDGER}", (str(path),))
    try:
        db.execute(f"PRAGMA {LEDGER}.journal_mode=WAL")
        db.execute(f"PRAGMA {LEDGER}.synchronous={synchronous}")
        check = db.execute(f"PRAGMA {LEDGER}.quick_check").fetchone()[0]
        if check != "ok":
            raise OutboxCorrupt(f"ledger quick_check failed: {check}")
        for stmt in LEDGER_SCHEMA:
            db.execute(stmt)
    except sqlite3.DatabaseError as exc:
        db.execute(f"DETACH DATABASE {LEDGER}")
        if not is_corruption(exc):
            raise
        # The ledger is rebuilt from the outbox: only a loss of both at once goes unreported.
        log.error("outbox ledger %s is damaged (%s); starting a new one", path, exc)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        attach_ledger(db, path, synchronous)


def ledger_last_seq(db: sqlite3.Connection) -> int:
    """The last sequence number the ledger saw committed (0 when new)."""
    row = db.execute(f"SELECT devices FROM {LEDGER}.held WHERE seq = ?",
                     (LAST_SEQ_ROW,)).fetchone()
    return int(row[0]) if row else 0


def hold(db: sqlite3.Connection, held: Sequence[tuple[int, Spans]], last_seq: int) -> None:
    """Record committed data messages (inside the caller's transaction)."""
    db.executemany(f"INSERT OR REPLACE INTO {LEDGER}.held VALUES (?, ?)",
                   [(seq, _encode(spans)) for seq, spans in held])
    db.execute(f"INSERT OR REPLACE INTO {LEDGER}.held VALUES (?, ?)", (LAST_SEQ_ROW, last_seq))


def release(db: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Forget messages acknowledged or evicted (inside the caller's transaction)."""
    for i in range(0, len(seqs), 500):
        chunk = list(seqs[i : i + 500])
        db.execute(f"DELETE FROM {LEDGER}.held WHERE seq IN ({','.join('?' * len(chunk))})",
                   chunk)


def lost_messages(db: sqlite3.Connection) -> list[tuple[int, Spans]]:
    """Messages the ledger holds that the outbox no longer has."""
    rows = db.execute(f"SELECT seq, devices FROM {LEDGER}.held WHERE seq < ? AND seq NOT IN "
                      "(SELECT seq FROM main.messages) ORDER BY seq", (LAST_SEQ_ROW,)).fetchall()
    return [(int(seq), _decode(devices)) for seq, devices in rows]


def settle_lost(db: sqlite3.Connection, prio_data: int,
                last_seq: int) -> tuple[list[tuple[int, Spans]], Spans]:
    """In one transaction: record messages the outbox lost as `outbox_lost` gaps and forget
    them, and hold the data messages the ledger lacks; return the lost ones and their spans."""
    lost, unheld = lost_messages(db), unheld_messages(db, prio_data)
    spans: Spans = {}
    if not lost and not unheld:
        return lost, spans
    for _, s in lost:
        merge_spans(spans, s)
    db.execute("BEGIN")
    try:
        release(db, [seq for seq, _ in lost])
        hold(db, unheld, last_seq)
        db.executemany(GAP_UPSERT, [(d, n, t0, t1, "outbox_lost")
                                    for d, (n, t0, t1) in spans.items()])
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return lost, spans


def _encode(spans: Spans) -> bytes:
    counts = {d: n for d, (n, _, _) in spans.items()}
    t0 = min((s[1] for s in spans.values()), default=0)
    t1 = max((s[2] for s in spans.values()), default=0)
    return orjson.dumps([t0, t1, counts])


def _decode(devices: bytes) -> Spans:
    t0, t1, counts = orjson.loads(devices)
    return {d: [int(n), int(t0), int(t1)] for d, n in counts.items()}


def unheld_messages(db: sqlite3.Connection, prio_data: int) -> list[tuple[int, Spans]]:
    """Data messages in the outbox the ledger does not know (a new or rebuilt ledger)."""
    rows = db.execute(f"SELECT seq, body FROM main.messages WHERE prio = ? AND seq NOT IN "
                      f"(SELECT seq FROM {LEDGER}.held)", (prio_data,)).fetchall()
    return [(int(seq), spans_of_bodies([body])) for seq, body in rows]


# --- moved-aside files ---------------------------------------------------------------------------

TAKE_OVER_BYTES = 4 * 1024 * 1024  # bodies read from a moved-aside file per transaction


def read_quarantined(path: Path, after: int) -> tuple[list[tuple[Any, ...]], int, str, bool]:
    """Rows still readable in a moved-aside outbox after seq `after`, a few MB at a time.

    Returns the rows, the seq to continue after, why reading stopped early ("" if it did not)
    and whether the end of the file was reached. Rows are read in sequence order; a damaged
    page ends a pass and reading resumes after the last good sequence number, so one bad page
    costs only the rows on it.
    """
    rows: list[tuple[Any, ...]] = []
    why, size = "", 0
    try:
        db = _open_moved_aside(path)
    except sqlite3.Error as exc:
        return rows, after, str(exc), True
    try:
        for _ in range(2):
            try:
                for row in _rows_after(db, after):
                    rows.append(row)
                    after, size = row[0], size + len(row[7])
                    if size >= TAKE_OVER_BYTES:
                        return rows, after, why, False
                return rows, after, why, True
            except sqlite3.DatabaseError as exc:
                why = str(exc)
                after += 1  # skip past the row that could not be read
        return rows, after, why, True
    finally:
        db.close()


def read_quarantined_gaps(path: Path) -> list[tuple[Any, ...]]:
    """The merged gaps (evictions not yet reported) in a moved-aside outbox, if readable."""
    try:
        db = _open_moved_aside(path)
    except sqlite3.Error:
        return []
    try:
        return db.execute("SELECT device, count, tmin, tmax, reason FROM gaps").fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        db.close()


def _open_moved_aside(path: Path) -> sqlite3.Connection:
    # Without a write-ahead log beside it the file is read as it is, creating nothing next to it;
    # with one, SQLite must replay the log to see the last commits.
    wal = Path(f"{path}-wal").exists()
    return sqlite3.connect(f"file:{path}{'' if wal else '?immutable=1'}", uri=True)


def _rows_after(db: sqlite3.Connection, after: int) -> Iterator[tuple[Any, ...]]:
    cur = db.execute("SELECT seq, channel, prio, created, n, tmin, tmax, body, boot, synced "
                     "FROM messages WHERE seq > ? ORDER BY seq", (after,))
    yield from cur


def take_over_file(db: sqlite3.Connection, f: Path,
                   key: str) -> tuple[int, int, str] | None:
    """Copy the readable rows of moved-aside file `f` into the outbox, a part per transaction
    with its progress under meta `key`; return (messages, readings and events, why reading
    stopped early), or None when the file was taken over before."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is not None and row[0] == "done":
        return None
    after, done, messages, readings, why = int(row[0]) if row else -1, False, 0, 0, ""
    while not done:
        rows, after, stop, done = read_quarantined(f, after)
        why = why or stop
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        if done:
            db.executemany(GAP_UPSERT, read_quarantined_gaps(f))
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                   (key, "done" if done else str(after)))
        db.execute("COMMIT")
        messages, readings = messages + len(rows), readings + sum(r[4] for r in rows)
    return messages, readings, why


def quarantined_files(outbox: Path) -> list[Path]:
    """Moved-aside outbox files beside `outbox` (their -wal and -shm excluded)."""
    return sorted(p for p in outbox.parent.glob(f"{outbox.name}.corrupt-*")
                  if not p.name.endswith(("-wal", "-shm")))
