"""The outbox's write-ahead journal: a message is sent before its group commit, yet a crash of
the process neither loses it nor lets its sequence number be used again.

Each message sealed between two commits is appended here, in one write call, before it is
published. With `synchronous = NORMAL` nothing is synced: the page cache outlives a crash of
the process (`kill -9`, the OOM killer, a watchdog restart), exactly as SQLite's own WAL does
with that setting; `FULL` syncs every append, as SQLite syncs every commit. The commit writes
the rows still unacknowledged into the outbox and empties the journal, which then holds one
record: the last sequence number used. Rows acknowledged before the commit never reach the
outbox file at all — that is what keeps SD-card wear down while every message is sent at once.

At open, the rows found past the last sequence number recorded are committed into the outbox
and sent again with their own numbers (the collector's `(gateway, seq)` key drops those it
already has), and the allocator starts past every number in the journal. A torn tail (a power
cut or a full disk in the middle of a write) ends the reading: nothing after it is trusted.

A record is `<length u32><crc32 u32>` and `length` bytes: the JSON header of a row, a newline
and its body; or `{"last": seq}` alone.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<II")
MAX_RECORD = 64 * 1024 * 1024  # a length past this is a damaged record, not a message

# seq, channel, prio, created, n, tmin, tmax, body, boot, synced (edge.outbox.Row)
Row = tuple[int, str, int, int, int, int, int, bytes, str, int]


def encode_row(row: Row) -> bytes:
    """One framed record holding a row."""
    seq, channel, prio, created, n, tmin, tmax, body, boot, synced = row
    payload = orjson.dumps([seq, channel, prio, created, n, tmin, tmax, boot, synced]) + \
        b"\n" + body
    return _frame(payload)


def _frame(payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode(data: bytes) -> tuple[list[Row], int, int]:
    """Rows past the last recorded sequence number, that number, and the bytes left unread
    (a torn or damaged tail)."""
    rows: dict[int, Row] = {}
    last, pos = 0, 0
    while pos + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length
        if length > MAX_RECORD or end > len(data):
            break
        payload = data[pos + _HEAD.size:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            record = _parse(payload)
        except (ValueError, TypeError):
            break
        if isinstance(record, int):
            last = max(last, record)
        else:
            rows[record[0]] = record
        pos = end
    # A row at or below a recorded last number was settled by the commit that recorded it.
    found = sorted((r for s, r in rows.items() if s > last), key=lambda r: r[0])
    return found, max([last, *rows]), len(data) - pos


def _parse(payload: bytes) -> Row | int:
    head, sep, body = payload.partition(b"\n")
    doc: Any = orjson.loads(head)
    if isinstance(doc, dict):
        return int(doc["last"])
    if not sep or not isinstance(doc, list) or len(doc) != 9:
        raise ValueError("not a journal row")
    seq, channel, prio, created, n, tmin, tmax, boot, synced = doc
    return (int(seq), str(channel), int(prio), int(created), int(n), int(tmin), int(tmax),
            bytes(body), str(boot), int(synced))


class Journal:
    """Append-only file of the rows sealed since the last commit (one writer)."""

    def __init__(self, path: Path, *, sync: bool = False) -> None:
        self.path = path
        self.sync = sync
        self._fd: int | None = None
        self._size = 0
        self.dirty = False  # rows were appended since the last reset

    def open(self) -> tuple[list[Row], int]:
        """Open (creating if needed); return the rows to recover and the last number used."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read()
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        rows, last, torn = decode(data)
        if torn:
            log.warning("outbox journal %s: %d bytes at its end are torn or damaged and were "
                        "ignored (a power cut or a full disk during a write)", self.path, torn)
        self._size = len(data) - torn
        self.dirty = bool(rows)
        return rows, last

    def append(self, rows: Sequence[Row]) -> None:
        """Append rows in one write; on failure nothing of them stays in the file."""
        if not rows:
            return
        fd = self._require()
        data = b"".join(encode_row(r) for r in rows)
        try:
            written = os.pwrite(fd, data, self._size)
            if written != len(data):
                raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
            if self.sync:
                os.fdatasync(fd)
        except OSError:
            try:  # give back what a partial write took; the rows stay in memory
                os.ftruncate(fd, self._size)
            except OSError:
                log.warning("outbox journal %s: cannot cut a failed write off", self.path)
            raise
        self._size += len(data)
        self.dirty = True

    def reset(self, last_seq: int) -> None:
        """Empty the journal once its rows are committed or acknowledged; keep `last_seq`.

        The record is written over the start of the file before the file is cut, so no
        moment leaves the file without the last number (rows past the cut are at or below
        it, and ignored at open).
        """
        fd = self._require()
        record = _frame(orjson.dumps({"last": last_seq}))
        os.pwrite(fd, record, 0)
        os.ftruncate(fd, len(record))
        if self.sync:
            os.fdatasync(fd)
        self._size = len(record)
        self.dirty = False

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _require(self) -> int:
        if self._fd is None:
            raise OSError(f"{self.path}: the journal is not open")
        return self._fd
