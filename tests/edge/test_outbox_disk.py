"""The outbox on a hostile disk: full (a real small tmpfs filled by another writer), truncated,
corrupt — every reading is kept, sent, or reported lost with an exact count per device."""

from __future__ import annotations

import errno
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devices.contract import DATA, EVENTS
from devices.model import Reading
from edge.outbox import (
    Outbox,
    OutboxUnavailable,
    OutboxWriteError,
    Pending,
    Quota,
    SeqAllocator,
)
from edge.outbox_disk import OutboxCorrupt, is_corruption, is_disk_full
from tests.edge.smalldisk import fill, small_disk

T0 = 1_763_000_000_000
DEVICES = ("lift-1", "lift-2")


def reading(i: int, device: str) -> Reading:
    return Reading(device, T0 + i * 1000, {"floor": i % 18, "trip_count": i})


def produce(ob: Outbox, start: int, count: int) -> Counter[str]:
    """Add one reading of each device per commit; return what was produced per device."""
    made: Counter[str] = Counter()
    for i in range(start, start + count):
        ob.add([reading(i, d) for d in DEVICES])
        made.update(DEVICES)
        try:
            ob.commit()
        except OutboxWriteError:
            pass
    return made


def messages(ob: Outbox) -> list[Pending]:
    return ob.next_messages(1_000_000, set())


def drain(ob: Outbox) -> tuple[Counter[str], Counter[str], list[int]]:
    """Send everything (ack each message) until empty; return readings and gaps per device
    and the seqs of the data messages sent."""
    stored: Counter[str] = Counter()
    gaps: Counter[str] = Counter()
    seqs: list[int] = []
    for _ in range(100):
        ob.commit()
        batch = messages(ob)
        if not batch:
            return stored, gaps, seqs
        for m in batch:
            for item in orjson.loads(m.body):
                if m.channel == DATA:
                    stored[item["device"]] += 1
                elif item["kind"] == "data_gap":
                    gaps[item["device"]] += item["evidence"]["count"]
            if m.channel == DATA:
                seqs.append(m.seq)
            ob.ack(m.seq)
    raise AssertionError("the outbox never drained")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", "4m") as d:
        yield d


# --- telling a full disk from a corrupt file -----------------------------------------------------

def _sqlite_error(code: int) -> sqlite3.DatabaseError:
    exc = sqlite3.OperationalError("x")
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize(("exc", "corrupt", "full"), [
    (_sqlite_error(sqlite3.SQLITE_FULL), False, True),
    (_sqlite_error(sqlite3.SQLITE_IOERR), False, False),
    (_sqlite_error(sqlite3.SQLITE_IOERR | (3 << 8)), False, False),  # SQLITE_IOERR_WRITE
    (_sqlite_error(sqlite3.SQLITE_CANTOPEN), False, False),
    (_sqlite_error(sqlite3.SQLITE_READONLY), False, False),
    (_sqlite_error(sqlite3.SQLITE_CORRUPT), True, False),
    (_sqlite_error(sqlite3.SQLITE_CORRUPT | (1 << 8)), True, False),  # SQLITE_CORRUPT_VTAB
    (_sqlite_error(sqlite3.SQLITE_NOTADB), True, False),
    (OutboxCorrupt("quick_check failed"), True, False),
    (OSError(errno.ENOSPC, "No space left on device"), False, True),
    (OSError(errno.EIO, "I/O error"), False, False),
])
def test_only_integrity_failures_are_corruption(exc: BaseException, corrupt: bool,
                                                full: bool) -> None:
    assert (is_corruption(exc), is_disk_full(exc)) == (corrupt, full)


def test_a_full_disk_at_open_is_not_corruption_and_says_so(disk: Path) -> None:
    path = disk / "outbox.sqlite"
    ob = Outbox(path).open()
    produce(ob, 0, 20)
    ob.close()
    fill(disk)
    with pytest.raises(OutboxUnavailable, match="the disk holding it is full"):
        Outbox(path).open()
    assert not list(disk.glob("outbox.sqlite.corrupt-*")), "a healthy outbox was moved aside"
    (disk / "filler.bin").unlink()
    again = Outbox(path).open()
    stored, gaps, _ = drain(again)
    assert stored == Counter(dict.fromkeys(DEVICES, 20)) and not gaps
    again.close()


# --- a full disk while running -------------------------------------------------------------------

def test_full_disk_keeps_every_reading_in_memory_then_writes_it(disk: Path) -> None:
    ob = Outbox(disk / "outbox.sqlite", quota=Quota(min_free_bytes=64_000)).open()
    made = produce(ob, 0, 30)
    fill(disk)
    ob.add([reading(30, d) for d in DEVICES])
    with pytest.raises(OutboxWriteError, match="full"):
        ob.commit()
    made.update(DEVICES)
    # The eviction the agent runs next fails as cleanly: nothing counted that was not done.
    with pytest.raises(OutboxWriteError) as info:
        ob.enforce_quota(free_bytes=0, protect=ob.protected)
    assert "cannot rollback" not in str(info.value)
    assert is_disk_full(info.value.__cause__ or info.value)
    assert ob.counters["evicted_readings"] == 0
    assert ob.stats()["bytes"] == sum(len(m.body) for m in messages(ob))
    made += produce(ob, 31, 50)
    assert ob.stats()["readings"] == sum(made.values()) - ob.counters["evicted_readings"]
    (disk / "filler.bin").unlink()
    stored, gaps, _ = drain(ob)
    # Exact: every reading is either sent or reported lost, per device.
    assert stored + gaps == made, (stored, gaps)
    assert sum(gaps.values()) == ob.counters["evicted_readings"]
    ob.close()


def test_eviction_on_a_full_disk_rolls_back_cleanly(disk: Path) -> None:
    ob = Outbox(disk / "outbox.sqlite", quota=Quota(max_bytes=10**9)).open()
    made = produce(ob, 0, 100)
    fill(disk)
    ob.quota = Quota(max_bytes=1)
    before = ob.stats()
    with pytest.raises(OutboxWriteError) as info:
        ob.enforce_quota()
    assert "cannot rollback" not in str(info.value)
    assert is_disk_full(info.value.__cause__ or info.value)
    assert ob.stats() == before  # nothing half-done: bytes, rows, counters
    assert ob.counters["evicted_readings"] == 0
    (disk / "filler.bin").unlink()
    ob.quota = Quota()
    stored, gaps, _ = drain(ob)
    assert stored == made and not gaps
    ob.close()


def test_memory_limit_sheds_the_oldest_and_reports_it_exactly(disk: Path) -> None:
    ob = Outbox(disk / "outbox.sqlite").open()
    ob.memory_readings = 40
    made = produce(ob, 0, 10)
    fill(disk)
    made += produce(ob, 10, 50)  # 100 readings wait: 60 are shed, oldest first
    assert ob.counters["shed_readings"] == 60
    assert ob.stats()["readings"] == 20 + 40
    (disk / "filler.bin").unlink()
    stored, gaps, _ = drain(ob)
    assert stored + gaps == made
    assert gaps == Counter(dict.fromkeys(DEVICES, 30))
    ob.close()


# --- the sequence allocator on a full disk -------------------------------------------------------

def test_allocator_on_a_full_disk_hands_out_nothing_unreserved(disk: Path) -> None:
    path = disk / "outbox.sqlite.seq"
    alloc = SeqAllocator(path, floor=0, block=3)
    assert [alloc.take() for _ in range(3)] == [1, 2, 3]
    fill(disk)
    for _ in range(2):
        with pytest.raises(OSError) as info:
            alloc.take()
        assert info.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"reserved": 3}
    assert not path.with_suffix(".tmp").exists()
    (disk / "filler.bin").unlink()
    assert alloc.take() == 4
    assert json.loads(path.read_text()) == {"reserved": 6}


def test_a_reading_waits_while_no_seq_can_be_reserved(disk: Path) -> None:
    ob = Outbox(disk / "outbox.sqlite").open()
    assert ob._seq is not None
    ob._seq.block = 2
    made = produce(ob, 0, 2)  # uses the reservation up
    fill(disk)
    ob.add([reading(2, d) for d in DEVICES])
    with pytest.raises(OutboxWriteError, match="cannot reserve sequence numbers"):
        ob.commit()
    made.update(DEVICES)
    assert ob.stats()["readings"] == 6  # nothing dropped
    (disk / "filler.bin").unlink()
    stored, gaps, seqs = drain(ob)
    assert stored == made and not gaps
    assert seqs == sorted(set(seqs))
    ob.close()


# --- rows lost with the file ---------------------------------------------------------------------

def _gap_evidence(ob: Outbox) -> dict[str, dict[str, Any]]:
    ob.commit()
    return {e["device"]: e["evidence"] for m in messages(ob) if m.channel == EVENTS
            for e in orjson.loads(m.body) if e["kind"] == "data_gap"}


def test_outbox_truncated_while_stopped_reports_the_exact_gap(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path).open()
    produce(ob, 0, 5)
    for m in messages(ob)[:2]:  # two messages were delivered
        ob.ack(m.seq)
    ob.commit()
    ob.add([reading(i, "lift-1") for i in range(5, 8)])  # three more of one device
    ob.commit()
    last = max(m.seq for m in messages(ob))
    ob.close()
    path.write_bytes(b"")
    again = Outbox(path).open()
    gaps = _gap_evidence(again)
    assert {d: g["count"] for d, g in gaps.items()} == {"lift-1": 6, "lift-2": 3}
    assert gaps["lift-1"] == {"count": 6, "from": T0 + 2000, "to": T0 + 7000,
                              "reason": "outbox_lost"}
    assert again.counters["lost_readings"] == 9
    events = [e for m in messages(again) for e in orjson.loads(m.body)
              if e["kind"] == "outbox_lost"]
    assert [e["evidence"]["readings"] for e in events] == [9]
    again.add([reading(9, "lift-1")])
    again.commit()
    assert min(m.seq for m in messages(again) if m.channel == DATA) == last + 2  # no reuse
    again.close()
    third = Outbox(path).open()  # reported once, not again at the next start
    third.commit()
    kinds = Counter(e["kind"] for m in messages(third) if m.channel == EVENTS
                    for e in orjson.loads(m.body))
    assert kinds == {"data_gap": 2, "outbox_lost": 1}  # the ones still waiting to be sent
    assert third.counters["lost_readings"] == 0
    third.close()


def _break_freelist(path: Path) -> None:
    """Make quick_check fail while every row stays readable."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    raw = bytearray(path.read_bytes())
    raw[36:40] = (7).to_bytes(4, "big")  # header: "7 free pages", but there are none
    path.write_bytes(raw)


def test_quarantined_rows_are_sent_with_their_own_seqs(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path, max_batch=1).open()
    ob.add([reading(i, DEVICES[i % 2]) for i in range(50)])
    ob.commit()
    old = [m.seq for m in messages(ob)]
    ob.close()
    _break_freelist(path)
    again = Outbox(path).open()
    assert again.counters["quarantined"] == 1
    assert again.counters["taken_over_messages"] == 50
    stored, gaps, seqs = drain(again)
    assert seqs == old  # the same messages, with their own sequence numbers
    assert stored == Counter(dict.fromkeys(DEVICES, 25)) and not gaps
    again.close()
    third = Outbox(path).open()  # taken over once: never sent again
    assert messages(third) == [] and third.counters["taken_over_messages"] == 0
    third.close()


def test_unreadable_file_rows_are_reported_lost(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path).open()
    made = produce(ob, 0, 7)
    ob.close()
    path.write_bytes(b"\x00garbage" * 1000)
    again = Outbox(path).open()
    assert again.counters["quarantined"] == 1
    stored, gaps, _ = drain(again)
    assert not stored and gaps == made
    again.close()


def test_a_large_quarantined_file_is_taken_over_in_parts_exactly_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.outbox_disk

    monkeypatch.setattr(edge.outbox_disk, "TAKE_OVER_BYTES", 600)  # a few messages per part
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path, max_batch=2).open()
    made = produce(ob, 0, 40)
    old = [m.seq for m in messages(ob)]
    ob.close()
    _break_freelist(path)
    again = Outbox(path).open()
    assert again.counters["quarantined"] == 1
    stored, gaps, seqs = drain(again)
    assert seqs == old and stored == made and not gaps
    again.close()
