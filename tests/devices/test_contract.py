"""MQTT wire contract v1: topics, envelopes, and rejection of bad payloads with stable reasons."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices import contract
from devices.contract import (
    DATA,
    DEVICE_ID_RE,
    EVENTS,
    GATEWAY_ID_RE,
    HEALTH,
    INT64_MAX,
    MAX_PAYLOAD,
    REPLY,
    STATE,
    UPLINK_CHANNELS,
    ClockInfo,
    ContractError,
    DataEnvelope,
    EventsEnvelope,
    StateMessage,
    decode,
    encode_batch,
    envelope,
    is_plausible_time,
    parse_topic,
    state_payload,
    topic,
)
from devices.model import Action, Event, Quality, Reading, Severity
from tests.devices.contract_strategies import canonical_values

GW = "zz-jinshui-01"
TS = 1_700_000_000_000
READINGS = [
    Reading("lift-A1", TS, {"floor": 3, "door_closed": True, "speed": 0.25, "fault_code": None}),
    Reading("lift-A2", TS + 5, {"service_mode": 2}, quality=Quality.UNCERTAIN, mono=123456),
    Reading("dust:01.pm", TS + 9, {"pm10": 41.5}, quality=Quality.BAD, source_flag="D"),
]
EVENTS_ = [
    Event("lift-A1", TS, "trapped_passenger", Action.RAISE, Severity.CRITICAL,
          evidence={"floor": 3, "door_closed": True}, message="passenger trapped", mono=99),
    Event("lift-A1", TS + 60_000, "gbt24476_2", Action.CLEAR, Severity.MAJOR, code=2),
    Event("lift-A2", TS, "device_offline", Action.INFO, Severity.WARNING),
]


def data_payload(**head: Any) -> bytes:
    doc = {"v": 1, "gateway": GW, "seq": 7, "sent": TS, **head}
    doc.setdefault("readings", [r.to_wire() for r in READINGS])
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def reason_of(topic_name: str, payload: bytes) -> ContractError:
    with pytest.raises(ContractError) as info:
        decode(topic_name, payload)
    return info.value


# --- topics --------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel", UPLINK_CHANNELS)
def test_topic_round_trip(channel: str) -> None:
    name = topic(GW, channel)
    assert name == f"citygate/v1/{GW}/{channel}"
    assert parse_topic(name) == (GW, channel)


def test_command_topic_has_a_name() -> None:
    assert topic(GW, "cmd", "reboot") == f"citygate/v1/{GW}/cmd/reboot"
    assert topic(GW, "cmd") == f"citygate/v1/{GW}/cmd"


@pytest.mark.parametrize("bad", ["", "GW-01", "gw 01", "gw/01", "-gw", "_gw", "gw.01", "g" * 64,
                                 "gw+", "gw#", "gw-é"])
def test_topic_rejects_bad_gateway_id(bad: str) -> None:
    with pytest.raises(ContractError) as info:
        topic(bad, DATA)
    assert info.value.reason == "bad_gateway_id"
    assert repr(bad) in info.value.detail


def test_longest_gateway_id_is_fine() -> None:
    assert parse_topic(topic("g" * 63, DATA)) == ("g" * 63, DATA)


def test_subscriptions_cover_every_uplink_channel() -> None:
    subs = contract.subscriptions()
    assert subs == [f"citygate/v1/+/{ch}" for ch in (DATA, EVENTS, HEALTH, STATE, REPLY)]


@pytest.mark.parametrize("name", [
    "citygate/v2/gw/data", "other/v1/gw/data", "citygate/gw/data", "citygate/v1/gw",
    "citygate/v1/gw/data/extra", "", "/citygate/v1/gw/data", "citygate/v1/gw/data/",
])
def test_parse_topic_wrong_shape_or_root(name: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_topic(name)
    assert info.value.reason == "bad_topic"


@pytest.mark.parametrize("channel", ["cmd", "datas", "", "DATA", "+", "#"])
def test_parse_topic_unknown_channel(channel: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_topic(f"citygate/v1/{GW}/{channel}")
    assert info.value.reason == "bad_topic"
    assert "unknown channel" in info.value.detail


@pytest.mark.parametrize("gateway", ["GW", "+", "", "a b"])
def test_parse_topic_bad_gateway_id(gateway: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_topic(f"citygate/v1/{gateway}/data")
    assert info.value.reason == "bad_gateway_id"


@given(gateway=st.from_regex(GATEWAY_ID_RE, fullmatch=True), channel=st.sampled_from(
    UPLINK_CHANNELS))
def test_topic_round_trip_for_any_valid_id(gateway: str, channel: str) -> None:
    assert parse_topic(topic(gateway, channel)) == (gateway, channel)


# --- envelopes -----------------------------------------------------------------------------------

def _wire_reading_matches(w: Any, r: Reading) -> None:
    assert (w.device, w.ts, w.values, w.q, w.mono, w.flag) == (
        r.device, r.ts, r.values, r.quality.value, r.mono, r.source_flag)
    for k, v in r.values.items():
        assert type(w.values[k]) is type(v)


def test_data_envelope_decodes_to_the_same_readings() -> None:
    clock = ClockInfo(synced=False, boot="b00t-1", mono=555)
    payload = envelope(GW, DATA, 42, TS + 100, encode_batch(READINGS), clock=clock, replay=True)
    got = decode(topic(GW, DATA), payload)
    assert (got.gateway, got.channel) == (GW, DATA)
    msg = got.message
    assert isinstance(msg, DataEnvelope)
    assert (msg.v, msg.gateway, msg.seq, msg.sent, msg.replay) == (1, GW, 42, TS + 100, True)
    assert msg.clock == clock
    assert len(msg.readings) == len(READINGS)
    for w, r in zip(msg.readings, READINGS, strict=True):
        _wire_reading_matches(w, r)


def test_events_envelope_decodes_to_the_same_events() -> None:
    payload = envelope(GW, EVENTS, 1, TS, encode_batch(EVENTS_))
    msg = decode(topic(GW, EVENTS), payload).message
    assert isinstance(msg, EventsEnvelope)
    assert msg.clock == ClockInfo()
    assert msg.replay is False
    for w, e in zip(msg.events, EVENTS_, strict=True):
        assert (w.device, w.ts, w.kind, w.action, w.severity, w.code, w.evidence, w.message,
                w.mono) == (e.device, e.ts, e.kind, e.action.value, e.severity.value, e.code,
                            e.evidence, e.message, e.mono)


def test_envelope_is_plain_json_with_the_batch_inside() -> None:
    batch = encode_batch(READINGS[:1])
    doc = orjson.loads(envelope(GW, DATA, 3, TS, batch))
    assert ClockInfo.model_validate(doc.pop("clock")) == ClockInfo()
    assert doc == {"v": 1, "gateway": GW, "seq": 3, "sent": TS, "replay": False,
                   "readings": orjson.loads(batch)}


def test_empty_batch() -> None:
    msg = decode(topic(GW, DATA), envelope(GW, DATA, 1, TS, encode_batch([]))).message
    assert isinstance(msg, DataEnvelope)
    assert msg.readings == []


def test_envelope_rejects_non_batch_channel() -> None:
    with pytest.raises(KeyError):
        envelope(GW, HEALTH, 1, TS, b"[]")


readings_st = st.lists(st.builds(
    Reading,
    device=st.from_regex(DEVICE_ID_RE, fullmatch=True),
    ts=st.integers(0, INT64_MAX),
    values=canonical_values(),
    quality=st.sampled_from(list(Quality)),
    mono=st.one_of(st.none(), st.integers(0, INT64_MAX)),
    source_flag=st.one_of(st.none(), st.text(st.characters(exclude_characters="\x00",
                                                            exclude_categories=["Cs"]),
                                              max_size=8)),
), max_size=8)


@settings(max_examples=150)
@given(readings=readings_st, seq=st.integers(1, 2**62), gateway=st.from_regex(
    GATEWAY_ID_RE, fullmatch=True))
def test_any_readings_survive_the_envelope(
    readings: list[Reading], seq: int, gateway: str
) -> None:
    payload = envelope(gateway, DATA, seq, TS, encode_batch(readings))
    msg = decode(topic(gateway, DATA), payload).message
    assert isinstance(msg, DataEnvelope)
    assert msg.seq == seq
    assert len(msg.readings) == len(readings)
    for w, r in zip(msg.readings, readings, strict=True):
        _wire_reading_matches(w, r)


def test_state_message_decodes() -> None:
    payload = state_payload(GW, "offline", TS, reason="lwt", version="1.2.3", boot="b1",
                            devices={"lift-A1": {"kind": "elevator", "profile": "x"}})
    msg = decode(topic(GW, STATE), payload).message
    assert isinstance(msg, StateMessage)
    assert (msg.state, msg.ts, msg.reason, msg.version, msg.boot) == (
        "offline", TS, "lwt", "1.2.3", "b1")
    assert msg.devices == {"lift-A1": {"kind": "elevator", "profile": "x"}}


def test_health_and_reply_messages_decode() -> None:
    health = orjson.dumps({"v": 1, "gateway": GW, "sent": TS, "counters": {"polls": 10}})
    assert decode(topic(GW, HEALTH), health).message.counters == {"polls": 10.0}  # type: ignore[union-attr]
    reply = orjson.dumps({"v": 1, "gateway": GW, "command": "reboot", "id": "c1", "ok": True})
    assert decode(topic(GW, REPLY), reply).message.ok is True  # type: ignore[union-attr]


# --- rejections ----------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [b"", b"{", b"not json", b"\xff\xfe", b'{"v": 1,}', b"NaN"])
def test_not_json(payload: bytes) -> None:
    assert reason_of(topic(GW, DATA), payload).reason == "bad_json"


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"data"', b"null", b"true", b"[{\"v\": 1}]"])
def test_not_an_object(payload: bytes) -> None:
    err = reason_of(topic(GW, DATA), payload)
    assert err.reason == "bad_envelope"
    assert "not a JSON object" in err.detail


@pytest.mark.parametrize("version", [2, 0, "1", None, True, 1.0, ...])
def test_wrong_or_missing_version(version: Any) -> None:
    err = reason_of(topic(GW, DATA), data_payload(v=version))
    assert err.reason == "bad_version"
    assert "v1" in err.detail


def test_missing_seq() -> None:
    err = reason_of(topic(GW, DATA), data_payload(seq=...))
    assert err.reason == "bad_envelope"
    assert err.detail.startswith("seq:")


@pytest.mark.parametrize("seq", [0, -1, "seven", 1.5, 2.0, "2", True, None, 2**63, 2**64])
def test_bad_seq(seq: Any) -> None:
    err = reason_of(topic(GW, DATA), data_payload(seq=seq))
    assert err.reason == "bad_envelope"
    assert err.detail.startswith("seq:")


@pytest.mark.parametrize("device", ["", "-lift", "lift 1", "lift/1", "lift\n", "x" * 129, 7,
                                    None])
def test_bad_device_id_refuses_that_reading_only(device: Any) -> None:
    readings = [r.to_wire() for r in READINGS]
    readings[1]["device"] = device
    got = decode(topic(GW, DATA), data_payload(readings=readings))
    assert isinstance(got.message, DataEnvelope)
    assert [r.device for r in got.message.readings] == ["lift-A1", "dust:01.pm"]
    assert [(r.index, r.device, r.reason) for r in got.refused] == [(1, "", "bad_device_id")]
    assert got.refused[0].detail.startswith("device:")


def test_bad_event_field_refuses_that_event_only() -> None:
    events = [e.to_wire() for e in EVENTS_]
    events[0]["action"] = "explode"
    payload = orjson.dumps({"v": 1, "gateway": GW, "seq": 1, "sent": TS, "events": events})
    got = decode(topic(GW, EVENTS), payload)
    assert isinstance(got.message, EventsEnvelope)
    assert [(e.kind, e.action) for e in got.message.events] == [
        ("gbt24476_2", "clear"), ("device_offline", "info")]
    assert [(r.index, r.device, r.reason) for r in got.refused] == [(0, "lift-A1", "bad_action")]
    assert got.refused[0].detail.startswith("action:")


def test_data_sent_on_the_events_channel_is_rejected() -> None:
    err = reason_of(topic(GW, EVENTS), data_payload())
    assert err.reason == "bad_envelope"
    assert err.detail.startswith("events:")


def test_gateway_mismatch_between_topic_and_envelope() -> None:
    err = reason_of(topic("other-gw", DATA), data_payload())
    assert err.reason == "gateway_mismatch"
    assert "'other-gw'" in err.detail
    assert repr(GW) in err.detail


def test_bad_gateway_in_envelope() -> None:
    err = reason_of(topic(GW, DATA), data_payload(gateway="Not Valid"))
    assert err.reason == "bad_envelope"
    assert err.detail.startswith("gateway:")


def test_oversized_payload() -> None:
    pad = b" " * (MAX_PAYLOAD + 1 - len(data_payload()))
    payload = data_payload() + pad
    assert len(payload) == MAX_PAYLOAD + 1
    err = reason_of(topic(GW, DATA), payload)
    assert err.reason == "too_large"
    assert str(MAX_PAYLOAD + 1) in err.detail
    # One byte less is accepted (trailing whitespace is valid JSON).
    assert decode(topic(GW, DATA), payload[:-1]).gateway == GW


def test_bad_topic_is_checked_first() -> None:
    assert reason_of("citygate/v1/gw/nope", b"not json").reason == "bad_topic"


def test_contract_error_carries_reason_and_detail() -> None:
    err = ContractError("bad_json", "unexpected end")
    assert (err.reason, err.detail, str(err)) == ("bad_json", "unexpected end",
                                                  "bad_json: unexpected end")
    assert isinstance(err, ValueError)


def test_is_plausible_time() -> None:
    assert is_plausible_time(TS)
    assert is_plausible_time(946_684_800_000)
    assert not is_plausible_time(946_684_799_999)
    assert not is_plausible_time(0)


# --- fuzz: nothing but ContractError -------------------------------------------------------------

REASONS = {"bad_json", "bad_envelope", "bad_version", "gateway_mismatch", "too_large"}


def outcome(channel: str, payload: bytes) -> str:
    """Decode, and say "ok" or the ContractError reason; any other exception escapes."""
    try:
        got = decode(topic(GW, channel), payload)
    except ContractError as exc:
        return exc.reason
    assert got.gateway == GW
    assert got.message.gateway == GW
    return "ok"


@settings(max_examples=300)
@given(channel=st.sampled_from(UPLINK_CHANNELS), payload=st.binary(max_size=300))
def test_decode_arbitrary_bytes_only_raises_contract_error(channel: str, payload: bytes) -> None:
    assert outcome(channel, payload) in REASONS | {"ok"}


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["v", "gateway", "seq", "sent", "clock", "readings", "events", "device",
                         "ts", "values", "q", "kind", "action", "severity", "state", "x"]),
        children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300)
@given(channel=st.sampled_from(UPLINK_CHANNELS), doc=st.dictionaries(
    st.sampled_from(["gateway", "seq", "sent", "clock", "readings", "events", "state", "counters",
                     "devices", "command", "id", "ok", "replay"]),
    json_values, max_size=8), version=st.sampled_from([1, 1.0, True, 2, "1"]))
def test_decode_json_like_documents_only_raises_contract_error(
    channel: str, doc: dict[str, Any], version: Any
) -> None:
    doc = {"v": version, **doc}
    payload = json.dumps(doc).encode()  # the stdlib also writes integers beyond 64 bits
    assert outcome(channel, payload) in REASONS | {"ok"}
