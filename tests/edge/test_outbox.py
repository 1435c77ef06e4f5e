"""Durable outbox: storing, ordering, acknowledging, unique sequence numbers, crashes."""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.contract import DATA, EVENTS
from devices.model import Action, Event, Reading, Severity
from edge.outbox import Outbox, OutboxError, Pending, SeqAllocator

ROOT = Path(__file__).resolve().parents[2]
BASE_TS = 1_700_000_000_000


def reading(i: int, device: str = "lift-1") -> Reading:
    return Reading(device, BASE_TS + i, {"floor": i, "door_closed": i % 2 == 0})


def event(i: int, device: str = "lift-1") -> Event:
    return Event(device, BASE_TS + i, "trapped_passenger", Action.RAISE, Severity.CRITICAL,
                 evidence={"floor": i})


def body(p: Pending) -> list[dict[str, Any]]:
    out = orjson.loads(p.body)
    assert isinstance(out, list)
    return out


def all_messages(ob: Outbox) -> list[Pending]:
    return ob.next_messages(1_000_000, set())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    ob = Outbox(path).open()
    yield ob
    ob.close()


# --- the basic cycle -----------------------------------------------------------------------------

def test_open_creates_the_file_and_is_empty(path: Path) -> None:
    ob = Outbox(path).open()
    try:
        assert path.exists()
        assert all_messages(ob) == []
        assert ob.stats() == {"messages": 0, "readings": 0, "oldest_created": 0, "bytes": 0}
    finally:
        ob.close()


def test_add_commit_next_ack_commit(outbox: Outbox) -> None:
    items = [reading(i) for i in range(3)]
    outbox.add(items)
    assert all_messages(outbox) == []  # nothing on disk before the commit
    assert outbox.commit() == 1
    (msg,) = all_messages(outbox)
    assert msg.channel == DATA
    assert msg.n == 3
    assert body(msg) == [r.to_wire() for r in items]
    assert msg.created == pytest.approx(time.time() * 1000, abs=60_000)

    outbox.ack(msg.seq)
    assert all_messages(outbox) == []  # acked: not handed out again, even before the commit
    assert outbox.stats()["messages"] == 1  # still on disk until the commit
    assert outbox.stats()["bytes"] == len(msg.body)
    assert outbox.commit() == 0
    assert outbox.stats() == {"messages": 0, "readings": 0, "oldest_created": 0, "bytes": 0}
    counts = {k: outbox.counters[k] for k in
              ("appended", "stored_messages", "acked_messages", "commits")}
    assert counts == {"appended": 3, "stored_messages": 1, "acked_messages": 1, "commits": 2}


def test_ack_is_durable_only_after_commit(path: Path) -> None:
    ob = Outbox(path).open()
    ob.add([reading(1)])
    ob.commit()
    (msg,) = all_messages(ob)
    ob.ack(msg.seq)
    del ob  # crash before the commit: the PUBACK is lost, the message is sent again
    gc.collect()
    again = Outbox(path).open()
    try:
        assert [m.seq for m in all_messages(again)] == [msg.seq]
    finally:
        again.close()


def test_commit_with_nothing_to_do(outbox: Outbox) -> None:
    assert outbox.commit() == 0
    assert outbox.counters["commits"] == 0


def test_events_come_before_data(outbox: Outbox) -> None:
    outbox.add([reading(1), reading(2)])
    outbox.commit()
    outbox.add([reading(3), event(4), reading(5)])
    assert outbox.has_urgent
    outbox.commit()
    assert not outbox.has_urgent
    msgs = all_messages(outbox)
    assert [m.channel for m in msgs] == [EVENTS, DATA, DATA]
    assert body(msgs[0]) == [event(4).to_wire()]
    assert [[r["ts"] for r in body(m)] for m in msgs[1:]] == [
        [BASE_TS + 1, BASE_TS + 2], [BASE_TS + 3, BASE_TS + 5]]
    # Within a priority, oldest first.
    assert msgs[1].seq < msgs[2].seq


def test_max_batch_splits(path: Path) -> None:
    ob = Outbox(path, max_batch=3).open()
    try:
        ob.add([reading(i) for i in range(7)] + [event(i) for i in range(4)])
        assert ob.commit() == 5
        msgs = all_messages(ob)
        assert [(m.channel, m.n) for m in msgs] == [
            (EVENTS, 3), (EVENTS, 1), (DATA, 3), (DATA, 3), (DATA, 1)]
        data = [r for m in msgs if m.channel == DATA for r in body(m)]
        assert data == [reading(i).to_wire() for i in range(7)]
        assert ob.stats()["readings"] == 11
    finally:
        ob.close()


def test_next_messages_limit_and_exclude(outbox: Outbox) -> None:
    for i in range(5):
        outbox.add([reading(i)])
        outbox.commit()
    seqs = [m.seq for m in all_messages(outbox)]
    assert len(seqs) == 5
    assert [m.seq for m in outbox.next_messages(2, set())] == seqs[:2]
    # In-flight messages are excluded and the limit still fills from later rows.
    assert [m.seq for m in outbox.next_messages(2, {seqs[0], seqs[1]})] == seqs[2:4]
    outbox.ack(seqs[2])
    assert [m.seq for m in outbox.next_messages(2, {seqs[0], seqs[1]})] == seqs[3:5]
    assert outbox.next_messages(0, set()) == []


def test_stats_counts_readings_on_disk_and_queued(outbox: Outbox) -> None:
    before = int(time.time() * 1000)
    outbox.add([reading(i) for i in range(4)])
    outbox.commit()
    outbox.add([reading(9), event(10)])
    stats = outbox.stats()
    assert stats["messages"] == 1
    assert stats["readings"] == 6  # 4 stored + 2 queued
    assert before <= stats["oldest_created"] <= int(time.time() * 1000)


def test_close_commits_pending_and_is_idempotent(path: Path) -> None:
    ob = Outbox(path).open()
    ob.add([reading(1)])
    ob.close()
    ob.close()
    with pytest.raises(OutboxError, match="not open"):
        ob.commit()
    again = Outbox(path).open()
    try:
        assert [m.n for m in all_messages(again)] == [1]
    finally:
        again.close()


@pytest.mark.parametrize("call", ["commit", "stats", "next_messages"])
def test_use_before_open_raises(path: Path, call: str) -> None:
    ob = Outbox(path)
    method = getattr(ob, call)
    args: tuple[object, ...] = (1, set()) if call == "next_messages" else ()
    with pytest.raises(OutboxError, match="outbox is not open"):
        method(*args)


# --- sequence numbers ----------------------------------------------------------------------------

def _seqs_of_commits(ob: Outbox, commits: int, start: int = 0) -> list[int]:
    seen: list[int] = []
    for i in range(commits):
        ob.add([reading(start + i), event(start + i)])
        ob.commit()
        new = sorted(m.seq for m in all_messages(ob) if m.seq not in seen)
        seen.extend(new)
        for s in new:
            ob.ack(s)
    ob.commit()
    return seen


def test_seq_strictly_increases(outbox: Outbox) -> None:
    seqs = _seqs_of_commits(outbox, 10)
    assert len(seqs) == 20
    assert seqs == sorted(set(seqs))
    assert seqs[0] >= 1


def test_seq_never_repeats_across_close_and_reopen(path: Path) -> None:
    seen: list[int] = []
    for round_ in range(4):
        ob = Outbox(path).open()
        seqs = _seqs_of_commits(ob, 3, start=round_ * 10)
        ob.close()
        assert min(seqs) > max(seen, default=0)
        seen.extend(seqs)
    assert len(seen) == len(set(seen)) == 24


def test_crash_with_unacked_rows_resends_same_seq(path: Path) -> None:
    first = Outbox(path).open()
    first.add([reading(1), event(2)])
    first.commit()
    first.add([reading(3)])
    first.commit()
    first.add([reading(4)])  # never committed: lost in the crash, as designed
    before = [(m.seq, m.channel, m.body) for m in all_messages(first)]
    assert len(before) == 3
    del first  # dropped without close(), as a crashed process would
    gc.collect()

    second = Outbox(path).open()
    try:
        after = [(m.seq, m.channel, m.body) for m in all_messages(second)]
        assert after == before  # the same rows, same sequence numbers, same bytes
        second.add([reading(5)])
        second.commit()
        new = [m.seq for m in all_messages(second) if m.seq not in {s for s, _, _ in before}]
        assert len(new) == 1
        assert new[0] > max(s for s, _, _ in before)
    finally:
        second.close()


def test_second_outbox_while_first_still_open(path: Path) -> None:
    """A crashed process's connection may linger (e.g. a zombie); the rows are still visible."""
    first = Outbox(path).open()
    first.add([reading(1)])
    first.commit()
    second = Outbox(path).open()
    try:
        assert [m.n for m in all_messages(second)] == [1]
    finally:
        second.close()
        first.close()


def test_seq_unique_even_when_outbox_file_is_lost(path: Path) -> None:
    ob = Outbox(path).open()
    old = _seqs_of_commits(ob, 3)
    ob.add([reading(99)])
    ob.commit()
    old += [m.seq for m in all_messages(ob)]
    ob.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert not path.exists()
    assert path.with_name(path.name + ".seq").exists()

    fresh = Outbox(path).open()
    try:
        assert all_messages(fresh) == []
        new = _seqs_of_commits(fresh, 2)
        assert min(new) > max(old)
    finally:
        fresh.close()


def test_seq_file_reserves_before_use(tmp_path: Path) -> None:
    seq_path = tmp_path / "outbox.sqlite.seq"
    alloc = SeqAllocator(seq_path, floor=0, block=4)
    taken = []
    for _ in range(10):
        taken.append(alloc.take())
        reserved = json.loads(seq_path.read_text())["reserved"]
        assert reserved >= taken[-1]  # on disk before the number is handed out
    assert taken == list(range(1, 11))
    assert json.loads(seq_path.read_text()) == {"reserved": 12}
    # A restart continues after the reservation, never inside it.
    assert SeqAllocator(seq_path, floor=0, block=4).take() == 13
    # A database holding higher numbers wins over the reservation file.
    assert SeqAllocator(seq_path, floor=100, block=4).take() == 101


def test_corrupt_seq_file_falls_back_to_the_database(tmp_path: Path) -> None:
    seq_path = tmp_path / "outbox.sqlite.seq"
    seq_path.write_text("{not json")
    assert SeqAllocator(seq_path, floor=42).take() == 43


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "event", "commit", "ack", "reopen"]),
                              st.integers(1, 7)), max_size=30),
       max_batch=st.integers(1, 4))
def test_random_histories_keep_every_unacked_item_once(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], max_batch: int
) -> None:
    path = tmp_path_factory.mktemp("outbox") / "outbox.sqlite"
    ob = Outbox(path, max_batch=max_batch).open()
    counter = 0
    committed: dict[int, list[int]] = {}  # seq -> item ts, as stored
    acked: set[int] = set()
    issued: list[int] = []
    try:
        for op, n in ops:
            if op in ("add", "event"):
                make = reading if op == "add" else event
                ob.add([make(counter + k) for k in range(n)])
                counter += n
            elif op == "commit":
                ob.commit()
            elif op == "ack":
                live = [s for s in committed if s not in acked]
                for s in live[:n]:
                    ob.ack(s)
                    acked.add(s)
                ob.commit()
            else:
                ob.close()
                ob = Outbox(path, max_batch=max_batch).open()
            for m in all_messages(ob):
                if m.seq not in committed:
                    issued.append(m.seq)
                    committed[m.seq] = [int(item["ts"]) for item in body(m)]
                    assert len(committed[m.seq]) == m.n <= max_batch
            on_disk = {m.seq for m in all_messages(ob)}
            assert on_disk == set(committed) - acked
        assert issued == sorted(set(issued))  # new numbers only ever grow
        stored = [ts for s in issued for ts in committed[s]]
        assert len(stored) == len(set(stored))  # no item stored twice
    finally:
        ob.close()


# --- broken files --------------------------------------------------------------------------------

def _quarantined(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def _incident(ob: Outbox) -> dict[str, Any]:
    """Commit, and return the one outbox_quarantined event now waiting to be sent."""
    assert ob.has_urgent  # the incident is committed at once, like any event
    ob.commit()
    events = [e for m in all_messages(ob) if m.channel == EVENTS for e in body(m)]
    (event_,) = [e for e in events if e["kind"] == "outbox_quarantined"]
    return event_


def test_garbage_file_is_quarantined_with_its_path(path: Path) -> None:
    path.parent.mkdir(parents=True)
    garbage = b"this is not a database\x00" * 300
    path.write_bytes(garbage)
    ob = Outbox(path).open()
    try:
        (moved,) = _quarantined(path)
        assert moved.read_bytes() == garbage  # kept for forensics, not deleted
        assert ob.counters["quarantined"] == 1
        assert all_messages(ob) == []
        incident = _incident(ob)
        assert incident["evidence"]["file"] == str(moved)
        assert incident["severity"] == "major"
        # The fresh outbox works.
        ob.add([reading(1)])
        ob.commit()
        assert [m.channel for m in all_messages(ob)] == [EVENTS, DATA]
    finally:
        ob.close()


def test_quick_check_failure_is_quarantined(path: Path) -> None:
    ob = Outbox(path, max_batch=1).open()
    ob.add([reading(i) for i in range(50)])
    ob.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    raw = bytearray(path.read_bytes())
    raw[36:40] = (7).to_bytes(4, "big")  # header: "7 free pages", but there are none
    path.write_bytes(raw)
    ob = Outbox(path).open()
    try:
        (moved,) = _quarantined(path)
        assert moved.read_bytes() == raw
        incident = _incident(ob)
        assert "quick_check failed" in incident["evidence"]["error"]
        assert "freelist" in incident["evidence"]["error"].lower()
    finally:
        ob.close()


def test_seq_unique_after_quarantine(path: Path) -> None:
    ob = Outbox(path).open()
    old = _seqs_of_commits(ob, 3)
    ob.close()
    path.write_bytes(b"\x00garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fresh = Outbox(path).open()
    try:
        new = _seqs_of_commits(fresh, 2)
        assert min(new) > max(old)
    finally:
        fresh.close()


def test_outbox_that_cannot_be_created_raises_with_path(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.symlink_to(tmp_path / "no-such-dir" / "outbox.sqlite")  # dangling: cannot open
    with pytest.raises(OutboxError) as info:
        Outbox(path).open()
    assert str(info.value).startswith(f"{path}: ")


# --- a real process killed with SIGKILL mid-stream -----------------------------------------------

CHILD = r"""
import sys
from devices.model import Action, Event, Reading, Severity
from edge.outbox import Outbox

ob = Outbox(sys.argv[1], max_batch=4).open()
i = 0
while True:
    items = [Reading("lift-%d" % (i % 3), 1_700_000_000_000 + i, {"floor": i})]
    if i % 5 == 0:
        items.append(Event("lift-0", 1_700_000_000_000 + i, "door_fault", Action.RAISE,
                           Severity.MAJOR, evidence={"n": i}))
    ob.add(items)
    ob.commit()
    print(i, flush=True)  # printed only once the commit returned
    i += 1
"""


def _read_until_lines(proc: subprocess.Popen[bytes], count: int, deadline: float) -> bytes:
    """Read the child's stdout until it holds `count` lines, failing at the deadline."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while buf.count(b"\n") < count:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"child printed {buf.count(10)} of {count} lines before the deadline")
            if sel.select(timeout=left):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    err = proc.stderr.read() if proc.stderr else b""
                    pytest.fail(f"child exited early ({proc.wait()}): {err!r}")
                buf += chunk
    finally:
        sel.close()
    return buf


def test_sigkill_mid_stream_keeps_every_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        head = _read_until_lines(proc, 300, time.monotonic() + 60)
        assert proc.poll() is None  # still writing when the kill lands
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.stdout is not None
        rest = proc.stdout.read()  # lines printed before the kill are committed too
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # Only complete lines count: a line cut by the kill says nothing.
    printed = [int(x) for x in (head + rest).split(b"\n")[:-1]]
    assert len(printed) >= 300
    assert printed == list(range(len(printed)))

    ob = Outbox(path, max_batch=4).open()
    try:
        msgs = all_messages(ob)
        readings = [r for m in msgs if m.channel == DATA for r in body(m)]
        events = [e for m in msgs if m.channel == EVENTS for e in body(m)]
        stored = [r["values"]["floor"] for r in readings]
        assert len(stored) == len(set(stored))
        assert set(printed) <= set(stored)
        # At most the one commit in flight at the kill is on disk without its line printed.
        assert len(set(stored) - set(printed)) <= 1
        assert {e["evidence"]["n"] for e in events} >= {i for i in printed if i % 5 == 0}
        seqs = [m.seq for m in msgs]
        assert len(seqs) == len(set(seqs))
        # New numbers after the crash are above everything the killed process used.
        ob.add([reading(10**6)])
        ob.commit()
        newest = max(m.seq for m in all_messages(ob))
        assert newest > max(seqs)
    finally:
        ob.close()
