"""Property-based fuzzing of the envelope decoder: mutated envelopes never raise anything but
ContractError; a sound envelope keeps exactly the readings/events the pure checks pass and names
every other one in `refused`, with the same reason a gateway's reading_problem/event_problem
gives; everything accepted fits the stores' bounds."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.contract import (
    DATA,
    EVENTS,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    REFUSAL_REASONS,
    ContractError,
    Received,
    decode,
    event_problem,
    reading_problem,
    topic,
)
from devices.model import Event, Reading
from tests.devices.contract_strategies import (
    HOSTILE_VALUES,
    NAMES,
    hostile,
    wire_events,
    wire_readings,
)

GW = "gw-fuzz"
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
READING_FIELDS = ["device", "ts", "values", "q", "mono", "flag"]
EVENT_FIELDS = ["device", "ts", "kind", "action", "severity", "code", "evidence", "message",
                "mono"]
HEADER = {"v": 1, "gateway": GW, "seq": 7, "sent": 1_763_690_000_000,
          "clock": {"synced": True, "boot": "b-1", "mono": 5}, "replay": False}


@st.composite
def mutated(draw: st.DrawFn, items: st.SearchStrategy[dict[str, Any]], fields: list[str],
            dict_key: str) -> list[Any]:
    """A batch with some items broken: a field or a value made hostile, a field dropped, or
    the item replaced by something that is not an item."""
    batch: list[Any] = draw(st.lists(items, max_size=6))
    for _ in range(draw(st.integers(0, len(batch)))):
        i = draw(st.integers(0, len(batch) - 1))
        item = dict(batch[i]) if isinstance(batch[i], dict) else {}
        how = draw(st.sampled_from(["field", "entry", "drop", "replace"]))
        if how == "field":
            item[draw(st.sampled_from(fields))] = draw(hostile)
        elif how == "entry" and isinstance(item.get(dict_key), dict):
            name = draw(st.sampled_from(NAMES) | st.text(
                st.characters(exclude_categories=["Cs"]), max_size=70))
            item[dict_key] = {**item[dict_key], name: draw(hostile)}
        elif how == "drop" and item:
            del item[draw(st.sampled_from(sorted(item)))]
        else:
            batch[i] = draw(hostile)
            continue
        batch[i] = item
    return batch


def as_reading(item: Any) -> Reading | None:
    """The Reading a gateway would have built from this wire item, if it has every field."""
    if not isinstance(item, dict) or not {"device", "ts", "values"} <= item.keys():
        return None
    return Reading(item["device"], item["ts"], item["values"], item.get("q", "good"),
                   item.get("mono"), item.get("flag"))


def as_event(item: Any) -> Event | None:
    """The Event a gateway would have built from this wire item, if it has every field."""
    if not isinstance(item, dict) or not {"device", "ts", "kind", "action",
                                          "severity"} <= item.keys():
        return None
    return Event(item["device"], item["ts"], item["kind"], item["action"], item["severity"],
                 item.get("code"), item.get("evidence", {}), item.get("message", ""),
                 item.get("mono"))


def check_partition(got: Received, sent: list[Any], accepted: list[Any]) -> None:
    """Every item sent is either accepted (in order) or refused, exactly once."""
    refused = [r.index for r in got.refused]
    assert refused == sorted(set(refused))
    assert all(0 <= i < len(sent) for i in refused)
    assert len(accepted) + len(refused) == len(sent)
    kept = [item for i, item in enumerate(sent) if i not in set(refused)]
    assert [(a.device, a.ts) for a in accepted] == [(k["device"], k["ts"]) for k in kept]
    for r in got.refused:
        assert r.reason in REFUSAL_REASONS
        assert "\x00" not in r.detail and "\x00" not in r.device


def fits_the_stores(device: str, ts: int, mono: int | None) -> None:
    assert 0 <= ts <= INT64_MAX and (mono is None or 0 <= mono <= INT64_MAX)
    assert "\x00" not in device


@FUZZ
@given(batch=mutated(wire_readings(), READING_FIELDS, "values"))
def test_readings_refused_one_by_one_with_the_gateway_check_reason(batch: list[Any]) -> None:
    payload = json.dumps({**HEADER, "readings": batch}).encode()
    got = decode(topic(GW, DATA), payload)  # a sound envelope is never refused whole
    accepted = got.message.readings  # type: ignore[union-attr]
    check_partition(got, batch, accepted)
    reasons = {r.index: r.reason for r in got.refused}
    for i, item in enumerate(batch):
        reading = as_reading(item)
        if reading is not None:
            problem = reading_problem(reading)
            assert reasons.get(i) == (problem[0] if problem else None), (item, problem)
        else:
            assert i in reasons
    for w in accepted:
        fits_the_stores(w.device, w.ts, w.mono)
        assert reading_problem(Reading(w.device, w.ts, w.values, w.q, w.mono, w.flag)) is None  # type: ignore[arg-type]


@FUZZ
@given(batch=mutated(wire_events(), EVENT_FIELDS, "evidence"))
def test_events_refused_one_by_one_with_the_gateway_check_reason(batch: list[Any]) -> None:
    payload = json.dumps({**HEADER, "events": batch}).encode()
    got = decode(topic(GW, EVENTS), payload)
    accepted = got.message.events  # type: ignore[union-attr]
    check_partition(got, batch, accepted)
    reasons = {r.index: r.reason for r in got.refused}
    for i, item in enumerate(batch):
        event = as_event(item)
        if event is not None:
            problem = event_problem(event)
            assert reasons.get(i) == (problem[0] if problem else None), (item, problem)
        else:
            assert i in reasons
    for w in accepted:
        fits_the_stores(w.device, w.ts, w.mono)
        assert w.code is None or INT32_MIN <= w.code <= INT32_MAX
        assert event_problem(Event(w.device, w.ts, w.kind, w.action, w.severity, w.code,  # type: ignore[arg-type]
                                   w.evidence, w.message, w.mono)) is None


@FUZZ
@given(channel=st.sampled_from([DATA, EVENTS]), field=st.sampled_from(
    ["v", "gateway", "seq", "sent", "clock", "replay", "readings", "events"]), value=hostile,
    items=st.lists(wire_readings(), max_size=3))
def test_a_hostile_envelope_field_refuses_whole_or_not_at_all(
        channel: str, field: str, value: Any, items: list[Any]) -> None:
    key = "readings" if channel == DATA else "events"
    doc = {**HEADER, key: items if channel == DATA else [], field: value}
    try:
        got = decode(topic(GW, channel), json.dumps(doc).encode())
    except ContractError as exc:
        error: ContractError | None = exc
    else:
        error = None
    if error is not None:
        assert error.reason in {"bad_envelope", "bad_version", "gateway_mismatch"}
        assert "\x00" not in error.detail
        return
    env = got.message
    assert 1 <= env.seq <= INT64_MAX and 0 <= env.sent <= INT64_MAX  # type: ignore[union-attr]
    clock = env.clock  # type: ignore[union-attr]
    assert clock.mono is None or 0 <= clock.mono <= INT64_MAX
    assert "\x00" not in clock.boot + clock.sent_boot


def exact_path(topic_name: str, payload: bytes) -> Received | ContractError:
    """decode through the pydantic models only (the path of a payload the fast one refused)."""
    from unittest import mock

    from devices import contract

    with mock.patch.object(contract, "_decode_sound", return_value=None):
        try:
            return decode(topic_name, payload)
        except ContractError as exc:
            return exc


def both_paths(channel: str, doc: dict[str, Any]) -> None:
    """The msgspec path and the pydantic path give the same result for the same payload."""
    import orjson

    try:
        payload = orjson.dumps(doc)  # UTF-8 text, no \\u escapes: the fast path's input
    except TypeError:  # an integer beyond 64 bits or a lone surrogate: no JSON writer's output
        payload = json.dumps(doc, ensure_ascii=False).encode(errors="surrogatepass")
    want = exact_path(topic(GW, channel), payload)
    try:
        got: Received | ContractError = decode(topic(GW, channel), payload)
    except ContractError as exc:
        got = exc
    if isinstance(want, ContractError):
        assert isinstance(got, ContractError), (doc, got)
        assert (got.reason, got.detail) == (want.reason, want.detail)
    else:
        assert isinstance(got, Received), (doc, got)
        assert got == want
        assert type(got.message) is type(want.message)


@FUZZ
@given(readings=mutated(wire_readings(), READING_FIELDS, "values"),
       events=mutated(wire_events(), EVENT_FIELDS, "evidence"),
       field=st.sampled_from(["v", "gateway", "seq", "sent", "clock", "replay", None]),
       value=hostile)
def test_the_fast_and_the_exact_decoder_agree(readings: list[Any], events: list[Any],
                                               field: str | None, value: Any) -> None:
    over = {field: value} if field else {}
    both_paths(DATA, {**HEADER, "readings": readings, **over})
    both_paths(EVENTS, {**HEADER, "events": events, **over})
    for r in readings:  # alone: a fault the fast path misses is not hidden by a neighbour's
        both_paths(DATA, {**HEADER, "readings": [r]})
    for e in events:
        both_paths(EVENTS, {**HEADER, "events": [e]})


def test_the_fast_and_the_exact_decoder_agree_on_every_hostile_field() -> None:
    reading = {"device": "lift-1", "ts": 1_763_690_000_000, "values": {"floor": 3},
               "q": "good", "mono": 5, "flag": "N"}
    event = {"device": "lift-1", "ts": 1_763_690_000_000, "kind": "door", "action": "raise",
             "severity": "major", "code": 7, "evidence": {"n": 1}, "message": "m", "mono": 5}
    for value in [*HOSTILE_VALUES, "ab\u00e9", "lift-2", 5, "uncertain", "clear", "info"]:
        for f in READING_FIELDS:
            both_paths(DATA, {**HEADER, "readings": [{**reading, f: value}]})
        for f in EVENT_FIELDS:
            both_paths(EVENTS, {**HEADER, "events": [{**event, f: value}]})
        for f in ["v", "gateway", "seq", "sent", "clock", "replay"]:
            both_paths(DATA, {**HEADER, "readings": [reading], f: value})
        for f in ["synced", "boot", "mono", "sent_boot"]:
            both_paths(EVENTS, {**HEADER, "events": [event],
                                "clock": {**HEADER["clock"], f: value}})  # type: ignore[dict-item]
        both_paths(DATA, {**HEADER, "readings": [{**reading, "values": {"floor": value}}]})
        both_paths(DATA, {**HEADER, "readings": [{**reading, "values": {"speed": value}}]})
        both_paths(EVENTS, {**HEADER, "events": [{**event, "evidence": {"e": value}}]})
