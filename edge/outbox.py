"""Durable outbox: every reading is on disk before it is published, and leaves only on PUBACK.

Readings and events wait in memory for at most the durability window, then one transaction
writes them as ready-to-send message rows, each with its sequence number. A row is deleted
only after the broker acknowledged its message; rows left at a crash are sent again on restart
with the same sequence number, so the collector's (gateway, seq) key makes re-sending harmless.

Sequence numbers never repeat across restarts, even if the outbox file is lost: they are
reserved in blocks in a separate small file, written before any number of a block is used.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.contract import DATA, EVENTS, encode_batch
from devices.model import Event, Reading

log = logging.getLogger(__name__)

PRIO_EVENTS, PRIO_LIVE = 0, 1
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY,
    channel  TEXT    NOT NULL,
    prio     INTEGER NOT NULL,
    created  INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    tmin     INTEGER NOT NULL,
    tmax     INTEGER NOT NULL,
    body     BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_prio ON messages (prio, seq);
"""


class OutboxError(RuntimeError):
    """The outbox file cannot be used."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored message waiting for its PUBACK."""

    seq: int
    channel: str
    created: int
    n: int
    body: bytes


class SeqAllocator:
    """Hands out sequence numbers that never repeat, reserving them in blocks on disk."""

    def __init__(self, path: Path, floor: int, block: int = 10_000) -> None:
        self.path, self.block = path, block
        reserved = self._read()
        self._next = max(floor, reserved) + 1
        self._ceiling = self._next - 1

    def _read(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["reserved"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

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


class Outbox:
    """The gateway's store-and-forward buffer (one writer: the gateway's event loop)."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL", max_batch: int = 500) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._db: sqlite3.Connection | None = None
        self._seq: SeqAllocator | None = None
        self._pending: dict[str, list[Reading | Event]] = {DATA: [], EVENTS: []}
        self._acked: list[int] = []
        self.counters = {"appended": 0, "stored_messages": 0, "acked_messages": 0, "commits": 0}

    def open(self) -> Outbox:
        """Open (creating if needed) and check the outbox file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxError(f"{self.path}: quick_check failed: {check}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            top = db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            db.close()
            raise OutboxError(f"{self.path}: {exc}") from exc
        self._db = db
        self._seq = SeqAllocator(self.path.with_name(self.path.name + ".seq"), floor=top)
        return self

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
        return bool(self._pending[EVENTS])

    # --- the uplink ----------------------------------------------------------------------------

    def ack(self, seq: int) -> None:
        """Record the broker's PUBACK for a message; the row goes at the next commit."""
        self._acked.append(seq)

    def commit(self) -> int:
        """Write pending items as messages and delete acknowledged ones, in one transaction."""
        db = self._require()
        rows = []
        now = int(time.time() * 1000)
        for channel, prio in ((EVENTS, PRIO_EVENTS), (DATA, PRIO_LIVE)):
            items, self._pending[channel] = self._pending[channel], []
            for i in range(0, len(items), self.max_batch):
                chunk = items[i : i + self.max_batch]
                ts = [it.ts for it in chunk]
                rows.append((self._take_seq(), channel, prio, now, len(chunk), min(ts), max(ts),
                             encode_batch(chunk)))
        acked, self._acked = self._acked, []
        if not rows and not acked:
            return 0
        db.execute("BEGIN")
        db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?)", rows)
        db.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in acked])
        db.execute("COMMIT")
        self.counters["stored_messages"] += len(rows)
        self.counters["acked_messages"] += len(acked)
        self.counters["commits"] += 1
        return len(rows)

    def next_messages(self, limit: int, exclude: set[int]) -> list[Pending]:
        """Return up to `limit` stored messages not in `exclude`, most urgent first."""
        db = self._require()
        exclude = exclude | set(self._acked)  # acknowledged, deleted at the next commit
        fetch = limit + len(exclude)
        cur = db.execute(
            "SELECT seq, channel, created, n, body FROM messages ORDER BY prio, seq LIMIT ?",
            (fetch,),
        )
        out = [Pending(*row) for row in cur if row[0] not in exclude]
        return out[:limit]

    def stats(self) -> dict[str, int]:
        """Depth of the outbox: messages, readings and the oldest message's creation time."""
        db = self._require()
        msgs, readings, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(MIN(created), 0) FROM messages"
        ).fetchone()
        queued = sum(len(v) for v in self._pending.values())
        return {"messages": msgs, "readings": readings + queued, "oldest_created": oldest}

    def _take_seq(self) -> int:
        assert self._seq is not None
        return self._seq.take()

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db
