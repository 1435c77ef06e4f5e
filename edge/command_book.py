"""The gateway's durable record of device commands: one row per idempotency key.

Its own SQLite file beside the outbox (`commands.sqlite`), so a restart keeps every command
and every result not yet acknowledged by the broker. Invariants kept here:
- a key is executed at most once: `admit` of a known key returns the row already there;
- a command is marked `running` (committed, synchronous=FULL) before its bus transaction, so
  a crash during it becomes `failed: interrupted` at the next start, never a second write;
- nothing is executed at or after its expiry: `admit` and `start` both check the clock.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from devices.commands import ACCEPTED, EXPIRED, FAILED, CommandResult, DeviceCommand

SCHEMA_VERSION = 1
RUNNING = "running"  # local only: the transaction is under way
DELIVERED = "delivered"  # local only: handed to a parking node, its acknowledgement awaited
KEEP_MS = 14 * 86_400_000  # finished and reported rows are kept two weeks (the key memory)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    device TEXT NOT NULL,
    body BLOB NOT NULL,
    expires INTEGER NOT NULL,
    received INTEGER NOT NULL,
    status TEXT NOT NULL,
    result BLOB,
    reported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS commands_unreported ON commands (reported, status);
"""


class CommandBookError(Exception):
    """The command file cannot be used (corrupt or unwritable); the path says which."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A command as recorded, with its latest result (None while accepted or running)."""

    command: DeviceCommand
    status: str
    result: CommandResult | None
    reported: bool


class CommandBook:
    """Open with `open()`, close with `close()`; one writer (the gateway's event loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> CommandBook:
        """Open (creating) the file, check it and recover what a stop left running."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a result must survive a power cut
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise CommandBookError(f"{self.path} is damaged; move it aside")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, CommandBookError) as exc:
            db.close()
            raise CommandBookError(f"{self.path}: {exc}") from None
        self._db = db
        return self

    def close(self) -> None:
        """Close the file (idempotent)."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def is_open(self) -> bool:
        """Whether the file is open (commands are refused while it is not)."""
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection (CommandBookError when closed)."""
        if self._db is None:
            raise CommandBookError(f"{self.path} is not open")
        return self._db

    def admit(self, cmd: DeviceCommand, now: int) -> tuple[Entry, bool]:
        """Record a received command; (entry, True) when it is new, the recorded entry and
        False when its key was seen before (it is then never executed again)."""
        known = self.entry(cmd.key)
        if known is not None:
            return known, False
        status = EXPIRED if cmd.expired(now) else ACCEPTED
        result = CommandResult(status, now)
        self.db.execute("INSERT INTO commands (key, id, device, body, expires, received, status,"
                        " result) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (cmd.key, cmd.id, cmd.device, cmd.to_json(), cmd.expires, now, status,
                         orjson.dumps(result.detail())))
        return Entry(cmd, status, result, False), True

    def start(self, key: str, now: int) -> bool:
        """Mark a command running just before its transaction; False (and it is recorded as
        expired) when its expiry has passed, or when it is not waiting any more."""
        cur = self.db.execute("UPDATE commands SET status = ? WHERE key = ? AND status = ? "
                              "AND expires > ?", (RUNNING, key, ACCEPTED, now))
        if cur.rowcount == 1:
            return True
        self.finish(key, CommandResult(EXPIRED, now), only_if=ACCEPTED)
        return False

    def finish(self, key: str, result: CommandResult, only_if: str | None = None) -> None:
        """Record a command's final result (to be reported); a final one is never replaced."""
        waiting = (only_if,) if only_if is not None else (ACCEPTED, RUNNING, DELIVERED)
        marks = ", ".join("?" for _ in waiting)
        self.db.execute(f"UPDATE commands SET status = ?, result = ?, reported = 0 WHERE key = ?"
                        f" AND status IN ({marks})",
                        (result.status, orjson.dumps(result.detail()), key, *waiting))

    def deliver(self, key: str, now: int) -> bool:
        """Mark a node command delivered just before it goes into a CoAP reply (again, for a
        re-delivery); False (and it is recorded as expired if it was never delivered) when its
        expiry has passed or it is not waiting any more."""
        cur = self.db.execute("UPDATE commands SET status = ? WHERE key = ? AND status IN (?, ?)"
                              " AND expires > ?", (DELIVERED, key, ACCEPTED, DELIVERED, now))
        if cur.rowcount == 1:
            return True
        self.finish(key, CommandResult(EXPIRED, now), only_if=ACCEPTED)
        return False

    def reported(self, key: str, status: str) -> None:
        """The broker acknowledged the reply of this status."""
        self.db.execute("UPDATE commands SET reported = 1 WHERE key = ? AND status = ?",
                        (key, status))

    def entry(self, key: str) -> Entry | None:
        """The recorded command of a key."""
        row = self.db.execute("SELECT body, status, result, reported FROM commands WHERE key = ?",
                              (key,)).fetchone()
        return None if row is None else _entry(row)

    def unreported(self, limit: int = 100) -> list[Entry]:
        """Results the broker has not acknowledged yet (accepted ones included)."""
        rows = self.db.execute("SELECT body, status, result, reported FROM commands WHERE "
                               "reported = 0 AND status != ? ORDER BY received LIMIT ?",
                               (RUNNING, limit)).fetchall()
        return [_entry(r) for r in rows]

    def recover(self, now: int) -> list[DeviceCommand]:
        """At start: running ones failed (interrupted), overdue ones expired; return those
        still waiting for the bus or a node's acknowledgement (a delivered one is kept even
        past its expiry: the node may have applied it), oldest first. Old reported rows are
        dropped."""
        self.db.execute("UPDATE commands SET status = ?, result = ?, reported = 0 WHERE "
                        "status = ?", (FAILED, orjson.dumps(CommandResult(
                            FAILED, now, reason="interrupted", message="the gateway stopped "
                            "during the transaction; not retried").detail()), RUNNING))
        self.db.execute("UPDATE commands SET status = ?, result = ?, reported = 0 WHERE "
                        "status = ? AND expires <= ?", (EXPIRED, orjson.dumps(
                            CommandResult(EXPIRED, now).detail()), ACCEPTED, now))
        self.db.execute("DELETE FROM commands WHERE reported = 1 AND received < ?",
                        (now - KEEP_MS,))
        rows = self.db.execute("SELECT body, status, result, reported FROM commands WHERE "
                               "status IN (?, ?) ORDER BY received", (ACCEPTED, DELIVERED)
                               ).fetchall()
        return [_entry(r).command for r in rows]


def _entry(row: tuple[bytes, str, bytes | None, int]) -> Entry:
    from devices.commands import parse_command, parse_result

    body, status, result, reported = row
    return Entry(parse_command(body), status,
                 parse_result(orjson.loads(result)) if result else None, bool(reported))
