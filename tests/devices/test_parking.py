"""Parking sensor codec: frames, bodies, CBOR, config response and the stream decoder."""

from __future__ import annotations

import contextlib
import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices import parking
from devices.parking import (
    MessageType,
    ParkingFrameError,
    ResetCause,
    SensorReport,
    StreamDecoder,
)

EXAMPLE = SensorReport(
    sensor_id=0x00012D4F,
    msg_type=MessageType.OCCUPANCY_CHANGE,
    occupied=True,
    mag=(312, -145, 688),
    baseline=(205, -160, 402),
    battery_mv=3582,
    rssi_dbm=-97,
    temperature_c=23.5,
    send_counter=1042,
    park_counter=87,
    reset_cause=ResetCause.DEEP_SLEEP_WAKE,
)
# The worked example in docs/protocols/parking-serial.md.
EXAMPLE_HEX = (
    "a55a1d0100012d4f01010138ff6f02b000cdff6001920dfe9f00eb04120057049a3b"
)

i16 = st.integers(-32768, 32767)
reports = st.builds(
    SensorReport,
    sensor_id=st.integers(0, 2**32 - 1),
    msg_type=st.sampled_from(MessageType),
    occupied=st.booleans(),
    mag=st.tuples(i16, i16, i16),
    baseline=st.tuples(i16, i16, i16),
    battery_mv=st.none() | st.integers(0, 0xFFFE),
    rssi_dbm=st.none() | st.integers(-127, 127),
    temperature_c=st.none() | st.integers(-32767, 32767).map(lambda dc: dc / 10),
    send_counter=st.integers(0, 0xFFFF),
    park_counter=st.integers(0, 0xFFFF),
    reset_cause=st.integers(0, 255),
)


def _frame(body: bytes, length: int | None = None) -> bytes:
    """A frame around any body, with a correct CRC."""
    covered = bytes([len(body) if length is None else length]) + body
    return parking.SYNC + covered + parking.crc16_ccitt_false(covered).to_bytes(2, "big")


# --- fixed vectors ------------------------------------------------------------------------------


def test_documented_example_frame() -> None:
    frame = parking.encode_frame(EXAMPLE)
    assert frame.hex() == EXAMPLE_HEX
    assert len(frame) == 34
    assert parking.decode_frame(bytes.fromhex(EXAMPLE_HEX)) == EXAMPLE


def test_crc_is_ccitt_false() -> None:
    assert parking.crc16_ccitt_false(b"123456789") == 0x29B1
    assert parking.crc16_ccitt_false(b"") == 0xFFFF


def test_sentinels_mean_not_available() -> None:
    report = SensorReport(sensor_id=1, msg_type=MessageType.HEARTBEAT, occupied=False,
                          mag=(0, 0, 0), baseline=(0, 0, 0))
    body = parking.encode_body(report)
    assert body[19:21] == b"\xff\xff"  # battery
    assert body[21:22] == b"\x80"  # RSSI -128
    assert body[22:24] == b"\x80\x00"  # temperature -3276.8
    assert parking.decode_body(body) == report


def test_unknown_reset_cause_is_kept_as_int() -> None:
    report = parking.decode_frame(parking.encode_frame(
        SensorReport(1, MessageType.STARTUP, False, (0, 0, 0), (0, 0, 0), reset_cause=200)))
    assert report.reset_cause == 200
    assert not isinstance(report.reset_cause, ResetCause)


@pytest.mark.parametrize(
    ("field", "value"),
    [("sensor_id", -1), ("sensor_id", 2**32), ("mag", (0, 0, 40000)), ("battery_mv", 0xFFFF),
     ("rssi_dbm", -128), ("temperature_c", 3276.8), ("temperature_c", float("nan")),
     ("send_counter", 65536), ("reset_cause", 256), ("mag", (1, 2))],
)
def test_report_rejects_out_of_range(field: str, value: object) -> None:
    kwargs: dict[str, object] = {
        "sensor_id": 1, "msg_type": MessageType.HEARTBEAT, "occupied": False,
        "mag": (0, 0, 0), "baseline": (0, 0, 0),
    }
    SensorReport(**kwargs)  # type: ignore[arg-type]  # the base case is valid
    kwargs[field] = value
    with pytest.raises(ValueError, match=field.split("_", maxsplit=1)[0]):
        SensorReport(**kwargs)  # type: ignore[arg-type]


# --- round trips --------------------------------------------------------------------------------


@given(reports)
def test_frame_round_trip(report: SensorReport) -> None:
    frame = parking.encode_frame(report)
    assert len(frame) == parking.BODY_LEN_V1 + 5
    assert parking.decode_frame(frame) == report


@given(reports)
def test_body_round_trip(report: SensorReport) -> None:
    assert parking.decode_body(parking.encode_body(report)) == report


@given(reports)
def test_cbor_round_trip(report: SensorReport) -> None:
    assert parking.decode_cbor(parking.encode_cbor(report)) == report


@given(st.integers(parking.HEARTBEAT_MIN_S, parking.HEARTBEAT_MAX_S))
def test_config_round_trip(heartbeat_s: int) -> None:
    payload = parking.config_response(heartbeat_s)
    assert len(payload) == 5
    assert parking.decode_config(payload) == heartbeat_s
    assert parking.decode_config(payload + b"\x00\x01") == heartbeat_s  # newer fields ignored


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="heartbeat_s"):
        parking.config_response(59)
    for data, reason in [(b"", "truncated"), (b"\x02\x00\x00\x07\x08", "bad_version"),
                         (b"\x01\x00\x07", "truncated"), (b"\x01\x00\x00\x00\x01", "bad_field")]:
        with pytest.raises(ParkingFrameError) as info:
            parking.decode_config(data)
        assert info.value.reason == reason


# --- every corruption class ----------------------------------------------------------------------

GOOD = parking.encode_frame(EXAMPLE)
BODY = parking.encode_body(EXAMPLE)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x5a\xa5" + GOOD[2:], "bad_sync"),
        (b"\x00" + GOOD, "bad_sync"),
        (GOOD[:1], "truncated"),
        (GOOD[:2], "truncated"),
        (GOOD[:-1], "truncated"),
        (GOOD[:3] + b"", "truncated"),
        (GOOD + b"\x00", "bad_length"),
        (_frame(BODY, length=0)[:3] + b"\x00\x00", "bad_length"),
        (parking.SYNC + b"\x41" + bytes(67), "bad_length"),  # 65 > 64
        (_frame(BODY + b"\x00"), "bad_length"),  # v1 body must be exactly 29 bytes
        (_frame(BODY[:-1]), "bad_length"),
        (GOOD[:10] + bytes([GOOD[10] ^ 0x01]) + GOOD[11:], "bad_crc"),
        (GOOD[:-1] + bytes([GOOD[-1] ^ 0xFF]), "bad_crc"),
        (_frame(b"\x02" + BODY[1:]), "bad_version"),
        (_frame(b"\x02" + bytes(40)), "bad_version"),  # a longer future version
        (_frame(BODY[:5] + b"\x04" + BODY[6:]), "bad_type"),
        (_frame(BODY[:5] + b"\x00" + BODY[6:]), "bad_type"),
    ],
)
def test_decode_frame_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(ParkingFrameError) as info:
        parking.decode_frame(data)
    assert info.value.reason == reason
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "truncated"), (BODY[:-1], "truncated"), (BODY + b"\x00", "bad_length"),
     (b"\x09" + BODY[1:], "bad_version"), (BODY[:5] + b"\x07" + BODY[6:], "bad_type")],
)
def test_decode_body_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(ParkingFrameError) as info:
        parking.decode_body(data)
    assert info.value.reason == reason


def _cbor(**changes: object) -> bytes:
    doc = cbor2.loads(parking.encode_cbor(EXAMPLE))
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return cbor2.dumps(doc)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_cbor"),
        (b"\xa1", "bad_cbor"),
        (cbor2.dumps([1, 2, 3]), "bad_cbor"),
        (parking.encode_cbor(EXAMPLE) + b"\x00", "bad_cbor"),
        (b"\xa2\x61\x76\x01\x61\x76\x01", "bad_cbor"),  # duplicate key
        (cbor2.dumps({"x": "y" * 300}), "bad_cbor"),  # over the size limit
        (_cbor(v=2), "bad_version"),
        (_cbor(v=True), "bad_version"),
        (_cbor(t=9), "bad_type"),
        (_cbor(i=None), "bad_field"),
        (_cbor(i=-1), "bad_field"),
        (_cbor(i=1.5), "bad_field"),
        (_cbor(o=1), "bad_field"),
        (_cbor(m=[1, 2]), "bad_field"),
        (_cbor(m=[1, 2, 40000]), "bad_field"),
        (_cbor(b=[1, 2, True]), "bad_field"),
        (_cbor(bv=65535), "bad_field"),
        (_cbor(r=-128), "bad_field"),
        (_cbor(tc="hot"), "bad_field"),
    ],
)
def test_decode_cbor_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(ParkingFrameError) as info:
        parking.decode_cbor(data)
    assert info.value.reason == reason


def test_cbor_optional_and_unknown_keys() -> None:
    report = parking.decode_cbor(_cbor(bv=None, r=None, tc=None, sc=None, extra=[1, {"a": 2}]))
    assert report.battery_mv is None
    assert report.rssi_dbm is None
    assert report.temperature_c is None
    assert report.send_counter == 0


# --- stream decoder ------------------------------------------------------------------------------


def _summary(results: list[SensorReport | ParkingFrameError]) -> list[object]:
    return [r if isinstance(r, SensorReport) else (r.reason, r.discarded) for r in results]


def _stream(seed: int, frames: int = 40) -> tuple[bytes, list[SensorReport]]:
    """Good frames mixed with garbage, corrupt frames and fake sync bytes."""
    rng = random.Random(seed)
    out, sent = bytearray(), []
    for n in range(frames):
        report = SensorReport(n, MessageType.HEARTBEAT, bool(n % 2), (n, -n, 3 * n),
                              (1, 2, 3), send_counter=n)
        frame = parking.encode_frame(report)
        roll = rng.random()
        if roll < 0.15:
            out += bytes(rng.randrange(256) for _ in range(rng.randint(1, 50)))
        elif roll < 0.25:
            out += b"\xa5\x5a" + bytes([rng.randrange(256)])  # fake sync
        elif roll < 0.35:
            bad = bytearray(frame)
            bad[rng.randrange(3, len(bad))] ^= 1 << rng.randrange(8)
            out += bad
            continue
        out += frame
        sent.append(report)
    return bytes(out), sent


def test_stream_clean_frames() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(GOOD * 3) == [EXAMPLE] * 3
    assert decoder.stats.frames_ok == 3
    assert decoder.buffered == 0


def test_stream_byte_by_byte_equals_one_chunk() -> None:
    data, sent = _stream(seed=1)
    reference = StreamDecoder()
    whole = reference.feed(data) + reference.idle()
    decoder = StreamDecoder()
    pieces: list[SensorReport | ParkingFrameError] = []
    for i in range(len(data)):
        pieces += decoder.feed(data[i : i + 1])
        assert decoder.buffered < parking.MAX_FRAME_LEN
    pieces += decoder.idle()
    assert _summary(pieces) == _summary(whole)
    assert [r for r in whole if isinstance(r, SensorReport)] == sent


@given(st.integers(0, 10_000), st.lists(st.integers(1, 80), min_size=1, max_size=50))
def test_stream_random_chunking(seed: int, cuts: list[int]) -> None:
    data, sent = _stream(seed, frames=15)
    reference = StreamDecoder()
    whole = reference.feed(data) + reference.idle()
    decoder, pos, pieces = StreamDecoder(), 0, []
    while pos < len(data):
        size = cuts[pos % len(cuts)]
        pieces += decoder.feed(data[pos : pos + size])
        pos += size
        assert decoder.buffered < parking.MAX_FRAME_LEN
    pieces += decoder.idle()
    assert decoder.buffered == 0
    assert _summary(pieces) == _summary(whole)
    assert [r for r in whole if isinstance(r, SensorReport)] == sent
    assert decoder.stats.bytes_in == len(data)


def test_stream_garbage_then_frame_reports_one_sync_error() -> None:
    decoder = StreamDecoder()
    results = decoder.feed(b"hello world" + GOOD)
    assert _summary(results) == [("bad_sync", 11), EXAMPLE]
    assert decoder.stats.errors == {"bad_sync": 1}
    assert decoder.stats.bytes_discarded == 11


def test_stream_corrupt_frame_is_one_error_and_next_frame_survives() -> None:
    bad = bytearray(GOOD)
    bad[12] ^= 0x40
    decoder = StreamDecoder()
    results = decoder.feed(bytes(bad) + GOOD)
    assert _summary(results) == [("bad_crc", 1), EXAMPLE]
    assert decoder.stats.errors == {"bad_crc": 1}


def test_stream_frame_hidden_behind_fake_sync() -> None:
    # A fake header whose length would swallow the real frame: the CRC fails and the
    # decoder rescans from the next byte, finding the real frame inside.
    decoder = StreamDecoder()
    results = decoder.feed(b"\xa5\x5a\x30" + GOOD + bytes(40))
    assert EXAMPLE in results


def test_stream_idle_line_releases_frame_held_by_false_sync() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b"\xa5\x5a\x40" + GOOD) == []  # could still be a 64-byte body
    results = decoder.idle()
    assert _summary(results) == [("truncated", 1), EXAMPLE]
    assert decoder.buffered == 0
    assert decoder.idle() == []


def test_stream_skips_future_version_whole() -> None:
    future = _frame(b"\x02" + bytes(50))
    decoder = StreamDecoder()
    assert _summary(decoder.feed(future + GOOD)) == [("bad_version", len(future)), EXAMPLE]


def test_stream_babbler_keeps_buffer_bounded() -> None:
    rng = random.Random(7)
    decoder = StreamDecoder()
    for _ in range(200):
        chunk = bytes(rng.choice(b"\xa5\x5a\x40\x1d\x00") for _ in range(512))
        decoder.feed(chunk)
        assert decoder.buffered < parking.MAX_FRAME_LEN
    assert decoder.feed(b"\x00" * 80 + GOOD)[-1] == EXAMPLE
    assert decoder.stats.bytes_in == 200 * 512 + 80 + len(GOOD)


def test_stream_waits_for_split_frame() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(GOOD[:20]) == []
    assert decoder.buffered == 20
    assert decoder.feed(GOOD[20:]) == [EXAMPLE]
    assert decoder.buffered == 0


# --- fuzz: only ParkingFrameError comes out ------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_fuzz_decode_frame(data: bytes) -> None:
    with contextlib.suppress(ParkingFrameError):
        parking.decode_frame(data)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=40), st.integers(0, len(GOOD) - 1), st.integers(0, 255))
def test_fuzz_mutated_frames(prefix: bytes, index: int, value: int) -> None:
    """Any single-byte change is caught (CRC-16 catches every burst up to 16 bits)."""
    mutated = bytearray(GOOD)
    mutated[index] = value
    try:
        result = parking.decode_frame(bytes(mutated))
    except ParkingFrameError:
        assert bytes(mutated) != GOOD
    else:
        assert bytes(mutated) == GOOD
        assert result == EXAMPLE
    with pytest.raises(ParkingFrameError):
        parking.decode_frame(prefix + GOOD)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_decode_body_and_cbor(data: bytes) -> None:
    for decode in (parking.decode_body, parking.decode_cbor, parking.decode_config):
        with contextlib.suppress(ParkingFrameError):
            decode(data)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from("vitombrcpsx"), inner, max_size=6),
                    max_leaves=20))
def test_fuzz_cbor_structures(doc: object) -> None:
    with contextlib.suppress(ParkingFrameError):
        parking.decode_cbor(cbor2.dumps(doc))


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=100) | st.just(GOOD) | st.just(b"\xa5\x5a"), max_size=20))
def test_fuzz_feed_never_raises(chunks: list[bytes]) -> None:
    decoder = StreamDecoder()
    good = 0
    for chunk in chunks:
        for result in decoder.feed(chunk):
            assert isinstance(result, SensorReport | ParkingFrameError)
            good += isinstance(result, SensorReport)
        assert decoder.buffered < parking.MAX_FRAME_LEN
    assert decoder.stats.frames_ok == good
