"""What the contract accepts, both stores hold: poison envelopes are refused (whole when their
own fields are bad, reading by reading or event by event otherwise) and the rest is stored,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import schema
from collector.ngsi.history import HistoryKeeper
from collector.store import Accepted, Store
from devices.contract import DATA, EVENTS, HEALTH, REPLY, STATE, ContractError, decode, topic
from tests.collector.conftest import pg_server, pg_url, store  # noqa: F401  (fixtures)

GW = "gw-poison"
T0 = 1_763_690_000_000
RECEIVED = T0 + 1000


def envelope(seq: int, key: str, items: list[Any], head: dict[str, Any] | None = None) -> bytes:
    doc = {"v": 1, "gateway": GW, "seq": seq, "sent": T0, key: items, **(head or {})}
    return json.dumps(doc).encode()  # the stdlib writes integers beyond 64 bits too


def lift(device: str = "lift-1", **over: Any) -> dict[str, Any]:
    return {"device": device, "ts": T0 - 5000, "values": {"floor": 3, "door_closed": True},
            **over}


def fault(device: str = "lift-1", **over: Any) -> dict[str, Any]:
    return {"device": device, "ts": T0 - 5000, "kind": "gbt24476_2", "action": "raise",
            "severity": "major", "code": 2, **over}


def stored(store: Store, table: sa.Table) -> int:  # noqa: F811
    with store.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def ingest(store: Store, channel: str, payload: bytes) -> list[tuple[int, str]]:  # noqa: F811
    """Decode and store as the collector does; the refused (index, reason) pairs."""
    got = decode(topic(GW, channel), payload)
    store.ingest([Accepted(GW, got.message, RECEIVED)])
    return [(r.index, r.reason) for r in got.refused]


BAD_HEADS: list[dict[str, Any]] = [
    {"seq": 2**63}, {"seq": 2**64}, {"sent": 2**63}, {"sent": -1},
    {"clock": {"synced": False, "boot": "b\x00", "mono": 5}},
    {"clock": {"synced": False, "boot": "b", "mono": 2**63}},
]


def test_an_envelope_with_a_bad_field_of_its_own_is_refused_whole(
        store: Store) -> None:  # noqa: F811
    for n, head in enumerate(BAD_HEADS, 1):
        with pytest.raises(ContractError) as info:
            ingest(store, DATA, envelope(1, "readings", [lift()], head))
        assert info.value.reason == "bad_envelope", head
        assert ingest(store, DATA, envelope(n, "readings", [lift()])) == []
        assert stored(store, schema.readings) == 2 * n


BAD_READINGS = [
    (lift(ts=-631_152_000_000), "bad_ts"),  # an HJ 212 DataTime in 1950
    (lift(ts=2**63), "bad_ts"),
    (lift(mono=2**63), "bad_mono"),
    (lift(flag="ABCDEFGHI"), "too_long"),  # an HJ 212 data flag longer than 8 characters
    (lift(flag="N\x00"), "nul_in_text"),
    (lift(values={"floor": "B2"}), "type_mismatch"),
    (lift(values={"floor": 2.5}), "not_integral"),
    (lift(values={"speed": 1.7e308}), "out_of_range"),
    (lift(values={"speed": True}), "type_mismatch"),
    (lift(values={"trip_count": 2**63}), "out_of_range"),
    (lift(values={"battery_mv": 2**31}), "out_of_range"),
    (lift(values={"display_text": "B\x002"}), "nul_in_text"),
    (lift(values={"floor\x00": 1}), "bad_quantity"),
    (lift(device="lift\x00"), "bad_device_id"),
]


def test_a_bad_reading_is_refused_and_its_neighbours_stored(store: Store) -> None:  # noqa: F811
    for seq, (bad, reason) in enumerate(BAD_READINGS, 1):
        batch = [lift("lift-1"), bad, lift("lift-3")]
        assert ingest(store, DATA, envelope(seq, "readings", batch)) == [(1, reason)], bad
        assert stored(store, schema.readings) == 4 * seq  # two values of each neighbour
        assert stored(store, schema.batches) == seq


def test_an_envelope_whose_every_reading_is_refused_still_claims_its_seq(
        store: Store) -> None:  # noqa: F811
    batch = [lift(ts=-1), lift(values={"floor": "B2"})]
    assert ingest(store, DATA, envelope(4, "readings", [lift()])) == []
    assert ingest(store, DATA, envelope(5, "readings", batch)) == [
        (0, "bad_ts"), (1, "type_mismatch")]
    assert ingest(store, DATA, envelope(6, "readings", [lift()])) == []
    assert (stored(store, schema.batches), stored(store, schema.readings)) == (3, 4)
    assert store.seq_gaps(GW) == []  # 5 was received, with nothing to store
    assert ingest(store, DATA, envelope(5, "readings", batch)) == [  # re-delivered: no change
        (0, "bad_ts"), (1, "type_mismatch")]
    assert stored(store, schema.batches) == 3


BAD_EVENTS = [
    (fault(code=2**31), "bad_code"),  # the events.code column is 32-bit on PostgreSQL
    (fault(code=-(2**31) - 1), "bad_code"),
    (fault(code=2**63), "bad_code"),
    (fault(kind="trapped\x00"), "nul_in_text"),
    (fault(message="door\x00open"), "nul_in_text"),
    (fault(evidence={"error": "x\x00"}), "nul_in_text"),
    (fault(evidence={"k\x00": 1}), "nul_in_text"),
    (fault(ts=-1), "bad_ts"),
]


def test_a_bad_event_is_refused_and_its_neighbours_stored(store: Store) -> None:  # noqa: F811
    for seq, (bad, reason) in enumerate(BAD_EVENTS, 1):
        batch = [fault("lift-1"), bad, fault("lift-3", code=2**31 - 1)]
        assert ingest(store, EVENTS, envelope(seq, "events", batch)) == [(1, reason)], bad
        assert stored(store, schema.events) == 2 * seq
        assert stored(store, schema.active_faults) == 2


@pytest.mark.parametrize(("channel", "doc"), [
    (STATE, {"state": "online", "devices": {"lift-1": {"kind": "elev\x00ator"}}}),
    (STATE, {"state": "online", "devices": {"lift\x00": {"kind": "elevator"}}}),
    (STATE, {"state": "online", "reason": "x\x00"}),
    (STATE, {"state": "online", "ts": 2**63}),
    (HEALTH, {"sent": T0, "counters": {"polls\x00": 1}}),
    (HEALTH, {"sent": T0, "counters": {"polls": 1e300}}),
    (HEALTH, {"sent": T0, "devices": {"lift-1": {"error": "x\x00"}}}),
    (HEALTH, {"sent": 2**63}),
    (REPLY, {"command": "config", "id": "c\x00", "ok": True}),
    (REPLY, {"command": "config", "id": "c1", "ok": False, "detail": {"reason": "a\x00"}}),
    (REPLY, {"command": "config", "id": "c1", "ok": False, "detail": {"k\x00": 1}}),
    (REPLY, {"command": "config", "id": "c1", "ok": False, "detail": {"r": "x" * 65_537}}),
    (REPLY, {"command": "config", "id": "c1", "ok": False, "detail": {"a": [[[[[[[[[[[[[[[[
        [1]]]]]]]]]]]]]]]]]}}),
])
def test_state_health_and_reply_messages_are_bounded_too(
        channel: str, doc: dict[str, Any]) -> None:
    payload = json.dumps({"v": 1, "gateway": GW, **doc}).encode()
    with pytest.raises(ContractError) as info:
        decode(topic(GW, channel), payload)
    assert info.value.reason == "bad_envelope"


def test_a_refused_config_may_explain_itself_at_length() -> None:
    payload = json.dumps({"v": 1, "gateway": GW, "command": "config", "id": "c1", "ok": False,
                          "detail": {"reason": "; ".join(["x" * 60] * 1000)}}).encode()
    assert decode(topic(GW, REPLY), payload).message.ok is False  # type: ignore[union-attr]


def test_aggregates_of_the_largest_values_do_not_overflow(store: Store) -> None:  # noqa: F811
    keeper = HistoryKeeper(store)
    store.row_writers.append(keeper.write_rows)
    top = [{"device": "meter-1", "ts": T0 - 30_000 + i, "values": {"flue_flow": 1e15}}
           for i in range(1000)]
    assert ingest(store, DATA, envelope(1, "readings", top)) == []
    assert ingest(store, DATA, envelope(2, "readings", [
        {"device": "meter-1", "ts": T0 - 30_000, "values": {"flue_flow": 1.7e308}}])) == [
        (0, "out_of_range")]
    assert store.row_writer_errors == 0
    with store.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT n, vsum, vmax FROM history_1m")).one()
    assert (row.n, row.vsum, row.vmax) == (1000, 1e18, 1e15)


hostile: st.SearchStrategy[Any] = st.sampled_from(
    [2**63, 2**31, -1, 1.7e308, "a\x00", "x" * 2000, True, 2.5, "B2", None, [], {}])


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_whatever_the_contract_accepts_the_store_holds(
        store: Store, data: st.DataObject) -> None:  # noqa: F811
    seq = data.draw(st.integers(1, 2**62))
    readings = [lift(f"lift-{i}") for i in range(3)]
    events = [fault(f"lift-{i}") for i in range(3)]
    for batch, fields in ((readings, ["ts", "mono", "flag", "device"]),
                          (events, ["ts", "code", "kind", "message", "device"])):
        i = data.draw(st.integers(0, 2))
        batch[i] = {**batch[i], data.draw(st.sampled_from(fields)): data.draw(hostile)}
    i = data.draw(st.integers(0, 2))
    readings[i] = {**readings[i], "values": {
        data.draw(st.sampled_from(["floor", "speed", "door_closed", "x_new"])): data.draw(hostile)}}
    for channel, key, batch, table in ((DATA, "readings", readings, schema.readings),
                                       (EVENTS, "events", events, schema.events)):
        before = stored(store, table)
        got = decode(topic(GW, channel), envelope(seq, key, batch))  # every header is sound
        result = store.ingest([Accepted(GW, got.message, RECEIVED)])
        items = getattr(got.message, key)
        assert len(items) + len(got.refused) == len(batch)
        if result.duplicates:  # hypothesis drew a seq this store has already seen
            continue
        expected = len(items) if channel == EVENTS else sum(
            v is not None and q != "x_new" for r in items for q, v in r.values.items())
        assert stored(store, table) - before == expected
