"""Send before the group commit: the journal makes a sealed message sendable at once, a PUBACK
before the commit keeps it off the outbox file, and a crash neither loses a journaled message
nor lets its sequence number be used again."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from devices.contract import DATA, EVENTS
from devices.model import Action, Event, Reading, Severity
from edge.outbox import Outbox, OutboxWriteError
from edge.outbox_journal import Journal, decode, encode_row

BASE_TS = 1_700_000_000_000


def reading(i: int, device: str = "lift-1") -> Reading:
    return Reading(device, BASE_TS + i, {"floor": i})


def event(i: int) -> Event:
    return Event("lift-1", BASE_TS + i, "trapped_passenger", Action.RAISE, Severity.CRITICAL)


def rows_on_disk(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [s for (s,) in db.execute("SELECT seq FROM messages ORDER BY seq")]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    ob = Outbox(path).open()
    yield ob
    ob.close()


def test_a_flushed_event_is_sendable_before_any_commit(outbox: Outbox, path: Path) -> None:
    outbox.add([reading(1), event(2)])
    assert outbox.flush() == 2
    sendable = outbox.next_messages(10, set())
    assert [m.channel for m in sendable] == [EVENTS, DATA]  # events still go first
    assert rows_on_disk(path) == []  # nothing committed yet: it is in the journal
    assert outbox.flush() == 0  # nothing new


def test_acked_before_the_commit_never_reaches_the_outbox_file(outbox: Outbox,
                                                                path: Path) -> None:
    outbox.add([reading(i) for i in range(5)])
    outbox.flush()
    (msg,) = outbox.next_messages(10, set())
    outbox.ack(msg.seq)
    assert outbox.commit() == 0
    assert rows_on_disk(path) == []
    assert outbox.next_messages(10, set()) == []
    assert outbox.counters["acked_before_commit"] == 1
    assert outbox.journal_path.stat().st_size < 64  # emptied: only the last number is left


def test_the_commit_writes_what_is_not_acknowledged_and_empties_the_journal(
        outbox: Outbox, path: Path) -> None:
    outbox.add([reading(1)])
    outbox.flush()
    outbox.add([reading(2)])
    outbox.flush()
    first, second = outbox.next_messages(10, set())
    outbox.ack(first.seq)
    assert outbox.commit() == 1
    assert rows_on_disk(path) == [second.seq]
    assert [m.seq for m in outbox.next_messages(10, set())] == [second.seq]
    assert decode(outbox.journal_path.read_bytes())[0] == []


def test_a_crash_after_the_send_loses_nothing_and_reuses_no_number(path: Path) -> None:
    ob = Outbox(path).open()
    ob.add([reading(1)])
    ob.flush()
    ob.add([event(2)])
    ob.flush()
    sent = {m.seq: orjson.loads(m.body) for m in ob.next_messages(10, set())}
    # crash: no commit, no close (the process dies; the file stays as the kernel has it)
    again = Outbox(path).open()
    try:
        recovered = {m.seq: orjson.loads(m.body) for m in again.next_messages(10, set())}
        assert recovered == sent
        assert again.counters["recovered_messages"] == 2
        again.commit()
        assert rows_on_disk(path) == sorted(sent)
        again.add([reading(3)])
        again.flush()
        fresh = [m.seq for m in again.next_messages(10, set()) if m.seq not in sent]
        assert fresh and fresh[0] > max(sent)
    finally:
        again.close()


def test_numbers_sent_and_acknowledged_before_a_crash_are_never_reused(path: Path) -> None:
    ob = Outbox(path).open()
    ob.add([reading(0)])
    ob.commit()  # the outbox file knows this number as its last
    (kept,) = ob.next_messages(10, set())
    for i in range(3):
        ob.add([reading(i)])
        ob.flush()
    sent = [m.seq for m in ob.next_messages(10, {kept.seq})]
    for seq in sent:
        ob.ack(seq)
    ob.commit()  # nothing to write: the journal keeps only the last number
    assert rows_on_disk(path) == [kept.seq]
    again = Outbox(path).open()  # crash, then restart
    try:
        again.add([reading(9)])
        again.flush()
        (msg,) = again.next_messages(10, {kept.seq})
        assert msg.seq > max(sent)
    finally:
        again.close()


def test_a_crash_after_the_commit_but_before_the_journal_was_emptied(path: Path,
                                                                      monkeypatch: pytest
                                                                      .MonkeyPatch) -> None:
    ob = Outbox(path).open()
    ob.add([reading(1)])
    ob.flush()
    monkeypatch.setattr(Journal, "reset", lambda self, last: None)  # dies in between
    ob.commit()
    monkeypatch.undo()
    again = Outbox(path).open()
    try:
        assert len(again.next_messages(10, set())) == 1  # on disk once, not twice
        assert again.counters["recovered_messages"] == 0
        again.commit()
        assert len(rows_on_disk(path)) == 1
    finally:
        again.close()


def test_a_torn_tail_is_ignored_and_said(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox(path).open()
    ob.add([reading(1)])
    ob.flush()
    whole = ob.next_messages(10, set())
    with open(ob.journal_path, "ab") as fh:  # a second record cut short by a power cut
        fh.write(encode_row((99, DATA, 1, 0, 1, 0, 0, b"[]", "", 1))[:-3])
    with caplog.at_level(logging.WARNING, logger="edge.outbox_journal"):
        again = Outbox(path).open()
    try:
        assert [m.seq for m in again.next_messages(10, set())] == [m.seq for m in whole]
        assert "torn or damaged" in caplog.text
    finally:
        again.close()


def test_a_journal_that_refuses_writes_holds_messages_until_a_commit(
        outbox: Outbox, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Journal, rows: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Journal, "append", full)
    outbox.add([reading(1)])
    assert outbox.flush() == 0
    assert outbox.next_messages(10, set()) == []  # not on disk anywhere: not sent
    assert outbox.unwritten_readings == 1
    monkeypatch.undo()
    assert outbox.flush() == 1  # journaled at the next try
    assert len(outbox.next_messages(10, set())) == 1


def test_gap_events_are_sent_only_once_committed(outbox: Outbox, path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A gap event settles its count in the commit that stores it: sent before that commit and
    # crashed, it would be reported twice.
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO gaps VALUES ('lift-1', 3, 1, 2, 'quota')")

    def refused(*_: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Outbox, "_write", refused)
    with pytest.raises(OutboxWriteError):
        outbox.commit()
    outbox.add([reading(1)])
    assert outbox.flush() == 0
    assert outbox.next_messages(10, set()) == []
    monkeypatch.undo()
    assert outbox.commit() == 2  # the gap event and the reading, with the gap settled
    kinds = [orjson.loads(m.body)[0].get("kind") for m in outbox.next_messages(10, set())]
    assert kinds == ["data_gap", None]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 0


def test_records_round_trip_and_garbage_stops_the_reading() -> None:
    row = (7, EVENTS, 0, 123, 2, 1, 2, b'[{"a":1}]', "boot", 1)
    data = encode_row(row) + os.urandom(40)
    rows, last, torn = decode(data)
    assert rows == [row] and last == 7 and torn == 40
