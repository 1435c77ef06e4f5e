"""HJ 212 codec: CRC, parse/build, 2005 tolerance, corrupt frames, stream, split, answers."""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.hj212 import (
    MAX_FRAME,
    MAX_SEGMENT,
    REASONS,
    Frame,
    FrameError,
    Reassembler,
    StreamDecoder,
    build,
    build_data_answer,
    crc16,
    decode_line,
    parse,
    split,
    wrap_segment,
)

MN = "010000A8900016F000169DC0"
WORKED = (
    "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    "Flag=5;CP=&&RtdInterval=30&&1C80"
)
# /work/shared/data/hj212-samples.md: (frame, HJ 212 CRC, what CRC-16/MODBUS would give)
SAMPLES = {
    "P02": (
        "##0162QN=20231008123340461;ST=22;CN=2011;PW=123456;MN=010000A8900016F000169DC0;"
        "Flag=5;CP=&&DataTime=20231008123340;w01008-SampleTime=20231008123340,"
        "w01008-Rtd=123.456&&F441", 0xF441, 0xBAAF,
    ),
    "P03": (
        "##0094QN=20231008125115215;ST=22;CN=9011;PW=123456;MN=010000A8900016F000169DC0;"
        "Flag=4;CP=&&QnRtn=1&&CC01", 0xCC01, 0x2473,
    ),
    "P04": (
        "##0137QN=20231008130452757;ST=22;CN=2081;PW=123456;MN=010000A8900016F000169DC0;"
        "Flag=5;CP=&&DataTime=20231008130452;RestartTime=20231007130452&&3AC0", 0x3AC0, 0x3749,
    ),
    "P05": (
        "##0162QN=20231008132300648;ST=22;CN=2011;PW=123456;MN=010000A8900016F000169DC0;"
        "Flag=5;CP=&&DataTime=20231008132300;w01008-SampleTime=20231008132300,"
        "w01008-Rtd=123.456&&2800", 0x2800, 0x9CFA,
    ),
}


def annex_a_crc(data: bytes) -> int:
    """Bit-by-bit transcription of HJ 212-2017 Annex A, independent of the codec's table."""
    register = 0xFFFF
    for byte in data:
        register = (register >> 8) ^ byte
        for _ in range(8):
            shifted_out = register & 1
            register >>= 1
            if shifted_out:
                register ^= 0xA001
    return register


def modbus_crc(data: bytes) -> int:
    register = 0xFFFF
    for byte in data:
        register ^= byte
        for _ in range(8):
            register = (register >> 1) ^ 0xA001 if register & 1 else register >> 1
    return register


def segment_of(frame: str) -> bytes:
    return frame[6 : 6 + int(frame[2:6])].encode()


def capture(segment: str) -> bytes:
    """A frame built without the codec (as a field capture would arrive)."""
    data = segment.encode()
    return b"##%04d%s%04X\r\n" % (len(data), data, annex_a_crc(data))


def reason_of(frame: bytes | str) -> str:
    with pytest.raises(FrameError) as info:
        parse(frame)
    assert info.value.reason in REASONS
    assert str(info.value).startswith(info.value.reason + ": ")
    return info.value.reason


# ------------------------------------------------------------------------------------ CRC


def test_crc_worked_example_is_annex_a_not_modbus() -> None:
    segment = segment_of(WORKED)
    assert crc16(segment) == 0x1C80
    assert modbus_crc(segment) == 0x0759  # the mistake this guards against
    assert parse(WORKED).cp == {"RtdInterval": "30"}
    assert reason_of(WORKED[:-4] + "0759") == "bad_crc"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_crc_of_every_sample(name: str) -> None:
    frame, expected, modbus = SAMPLES[name]
    assert len(segment_of(frame)) == int(frame[2:6])
    assert crc16(segment_of(frame)) == expected
    assert modbus_crc(segment_of(frame)) == modbus
    assert parse(frame + "\r\n").mn == MN


@given(st.binary(max_size=300))
def test_crc_table_matches_bitwise_annex_a(data: bytes) -> None:
    assert crc16(data) == annex_a_crc(data)


# ---------------------------------------------------------------------------------- parse


def test_parse_sample_fields() -> None:
    frame = parse(SAMPLES["P02"][0])
    assert (frame.qn, frame.st, frame.cn, frame.pw, frame.mn) == (
        "20231008123340461", "22", "2011", "123456", MN,
    )
    assert (frame.flag, frame.pnum, frame.pno) == (5, None, None)
    assert frame.cp_groups == [
        {"DataTime": "20231008123340"},
        {"w01008-SampleTime": "20231008123340", "w01008-Rtd": "123.456"},
    ]
    assert frame.cp["w01008-Rtd"] == "123.456"
    assert frame.data_time == datetime(2023, 10, 8, 12, 33, 40)


@pytest.mark.parametrize(
    ("flag", "answer", "is_split", "version"),
    [(4, False, False, 1), (5, True, False, 1), (6, False, True, 1), (7, True, True, 1),
     (0, False, False, 0), (1, True, False, 0), (None, False, False, None)],
)
def test_flag_bits(flag: int | None, answer: bool, is_split: bool, version: int | None) -> None:
    frame = Frame(flag=flag)
    assert (frame.answer_required, frame.is_split, frame.version) == (answer, is_split, version)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20240229235959", datetime(2024, 2, 29, 23, 59, 59)),
     ("20040516020111123", datetime(2004, 5, 16, 2, 1, 11, 123000)),
     ("20230229000000", None), ("2024010100000", None), ("２０２４０１０１０００００００", None)],
)
def test_data_time_forms(text: str, expected: datetime | None) -> None:
    assert Frame(cp={"DataTime": text}).data_time == expected


def test_lower_case_crc_accepted() -> None:
    assert parse(WORKED[:-4] + "1c80").cp == {"RtdInterval": "30"}
    assert parse(WORKED[:-4].encode() + b"1c80\r\n").qn == "20160801085857223"


# ------------------------------------------------------------------------------ 2005 traffic


def test_2005_realtime_without_qn_or_flag_and_old_codes() -> None:
    frame = parse(capture(
        "ST=31;CN=2011;PW=123456;MN=88888880000001;CP=&&DataTime=20040516020111123;"
        "01-Rtd=12.3,01-Flag=N;02-Rtd=45.6,02-Flag=N;S01-Rtd=9.8;B02-Cou=1234.5&&"
    ))
    assert (frame.qn, frame.flag, frame.version, frame.answer_required) == (None, None, None, False)
    assert frame.cp["01-Rtd"] == "12.3"
    assert frame.cp["B02-Cou"] == "1234.5"
    assert frame.cp["S01-Rtd"] == "9.8"
    assert frame.data_time == datetime(2004, 5, 16, 2, 1, 11, 123000)
    assert build_data_answer(frame) is None


def test_2005_header_order_with_pnum_first() -> None:
    frame = parse(capture(
        "QN=20040516010101001;PNUM=2;PNO=1;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=3;"
        "CP=&&DataTime=20040516010101;011-Rtd=3.1&&"
    ))
    assert (frame.pnum, frame.pno, frame.cn, frame.is_split) == (2, 1, "2011", True)


def test_2005_alarm_2072_and_heartbeat_8013_with_empty_pw_mn() -> None:
    alarm = parse(capture(
        "ST=32;CN=2072;PW=123456;MN=88888880000001;CP=&&AlarmTime=20040506010101;"
        "AlarmType=1;02-Ala=250.0&&"
    ))
    assert (alarm.cn, alarm.cp["02-Ala"]) == ("2072", "250.0")
    beat = parse(capture("ST=91;CN=8013;PW=;MN=;CP=&&&&"))
    assert (beat.cn, beat.pw, beat.mn, beat.cp, beat.cp_groups) == ("8013", "", "", {}, [])


def test_unknown_codes_and_fields_tolerated() -> None:
    frame = parse(capture(
        "QN=1;ST=77;CN=6666;PW=x;MN=abc;Vendor=Q;Flag=4;CP=&&zz999-Foo=?,a50001-Rtd=61.2&&"
    ))
    assert (frame.st, frame.cn, frame.cp["zz999-Foo"], frame.cp["a50001-Rtd"]) == (
        "77", "6666", "?", "61.2",
    )


def test_gbk_text_in_cp_value() -> None:
    data = "ST=32;CN=2011;PW=1;MN=2;CP=&&Info=设备正常&&".encode("gbk")
    frame = parse(b"##%04d%s%04X" % (len(data), data, annex_a_crc(data)))
    assert frame.cp["Info"] == "设备正常"


# ---------------------------------------------------------------------------- corrupt frames


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (WORKED[:-4] + "1C81", "bad_crc"),
        (WORKED[:-4] + "1CX0", "bad_crc"),
        ("##0102" + WORKED[6:], "bad_length"),
        ("##0100" + WORKED[6:], "bad_length"),
        (WORKED + "\r\nJUNK", "bad_length"),
        ("##01a1" + WORKED[6:], "bad_header"),
        (WORKED[2:], "bad_header"),
        ("", "bad_header"),
        ("##1025" + "x" * 1029, "too_long"),
        (capture("ST=32;CN=1062;PW=1;MN=2;Flag=5;CP=RtdInterval=30&&"), "bad_cp"),
        (capture("ST=32;CN=1062;PW=1;MN=2;Flag=5;CP=&&RtdInterval=30"), "bad_cp"),
        (capture("ST=32;CN=1062;PW=1;MN=2;Flag=5;CP=&&RtdInterval30&&"), "bad_cp"),
        (capture("ST=32;CN=1062;PW=1;MN=2;Flag=5;RtdInterval=30&&"), "bad_segment"),
        (capture("ST=32;CN=1062;PW;Flag=5;CP=&&&&"), "bad_segment"),
        (capture("ST=32;ST=31;Flag=5;CP=&&&&"), "bad_segment"),
        (capture("ST=32;Flag=X;CP=&&&&"), "bad_segment"),
        (capture("ST=32;Flag=256;CP=&&&&"), "bad_segment"),
        (capture("ST=32;Flag=6;PNUM=2;CP=&&&&"), "bad_segment"),
        (capture("ST=32;Flag=6;PNUM=2;PNO=3;CP=&&&&"), "bad_segment"),
        (capture("ST=32;Flag=6;PNUM=0;PNO=0;CP=&&&&"), "bad_segment"),
        ("##0004\udcff&&&&0000", "bad_segment"),
    ],
)
def test_corrupt_frame_reason(frame: str | bytes, reason: str) -> None:
    assert reason_of(frame) == reason


def test_every_cut_of_a_frame_is_truncated() -> None:
    for cut in range(2, len(WORKED)):
        assert reason_of(WORKED[:cut]) == "truncated", cut


def test_undecodable_segment_is_bad_segment() -> None:
    data = b"ST=32;CN=2011;CP=&&a=\xff\xff\xff&&"
    assert reason_of(b"##%04d%s%04X" % (len(data), data, annex_a_crc(data))) == "bad_segment"


def test_segment_size_limit() -> None:
    filler = "x" * (MAX_SEGMENT - len("ST=32;CP=&&k=&&"))
    assert len(parse(build(st="32", cn=None, pw=None, mn=None, cp={"k": filler})).cp["k"]) > 1000
    with pytest.raises(FrameError) as info:
        build(st="32", cn=None, pw=None, mn=None, cp={"k": filler + "x"})
    assert info.value.reason == "too_long"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"cp": {"a;b": "1"}}, "bad_cp"), ({"cp": {"a": "1,2"}}, "bad_cp"),
     ({"cp": {"": "1"}}, "bad_cp"), ({"cp": {}, "pw": "a;b"}, "bad_segment"),
     ({"cp": {}, "flag": 256}, "bad_segment"), ({"cp": {}, "pnum": 2}, "bad_segment"),
     ({"cp": {}, "pnum": 2, "pno": 3}, "bad_segment")],
)
def test_build_rejects_what_would_not_parse_back(kwargs: dict, reason: str) -> None:
    base = {"st": "22", "cn": "2011", "pw": "1", "mn": MN}
    with pytest.raises(FrameError) as info:
        build(**{**base, **kwargs})
    assert info.value.reason == reason


# ----------------------------------------------------------------------------- build/round trip


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_build_reproduces_samples_byte_for_byte(name: str) -> None:
    frame = parse(SAMPLES[name][0])
    rebuilt = build(qn=frame.qn, st=frame.st, cn=frame.cn, pw=frame.pw, mn=frame.mn,
                    flag=frame.flag, cp=frame.cp)
    assert rebuilt == SAMPLES[name][0].encode() + b"\r\n"


def test_build_worked_example_and_2005_style() -> None:
    built = build(qn="20160801085857223", st="32", cn="1062", pw="100000", mn=MN, flag=5,
                  cp={"RtdInterval": "30"})
    assert built == WORKED.encode() + b"\r\n"
    segment = "ST=91;CN=8013;PW=;MN=;CP=&&&&"
    assert build(st="91", cn="8013", pw="", mn="", cp={}) == capture(segment)
    assert wrap_segment(segment) == capture(segment)


CP_KEY = st.text(st.characters(codec="ascii", exclude_characters="=;,&#\r\n"), min_size=1,
                 max_size=12)
CP_VALUE = st.text(st.characters(codec="utf-8", exclude_characters=";,&#"), max_size=12)
HEADER = st.text(st.characters(codec="ascii", exclude_characters=";&#"), max_size=24)
CP_DICT = st.dictionaries(CP_KEY, CP_VALUE, max_size=20)


def build_checked(*, cp_rendered: str, **kwargs: Any) -> Frame | None:
    """Build; expect too_long exactly when the independently rendered segment exceeds 1024."""
    header = "".join(f"{key}={kwargs[name]};" for key, name in
                     (("QN", "qn"), ("ST", "st"), ("CN", "cn"), ("PW", "pw"), ("MN", "mn"),
                      ("Flag", "flag")) if kwargs.get(name) is not None)
    segment = f"{header}CP=&&{cp_rendered}&&".encode()
    if len(segment) > MAX_SEGMENT:
        with pytest.raises(FrameError) as info:
            build(**kwargs)
        assert info.value.reason == "too_long"
        return None
    built = build(**kwargs)
    assert built == b"##%04d%s%04X\r\n" % (len(segment), segment, annex_a_crc(segment))
    return parse(built)


@given(cp=CP_DICT, qn=st.none() | HEADER, pw=HEADER, mn=HEADER,
       flag=st.none() | st.integers(0, 255))
def test_round_trip_cp_dict(cp: dict[str, str], qn: str | None, pw: str, mn: str,
                            flag: int | None) -> None:
    # A dict is laid out one group per factor code ("a1-Rtd,a1-Flag") in insertion order.
    rendered = ""
    last_code = None
    for key, value in cp.items():
        code = key.split("-")[0] if "-" in key else None
        sep = "," if code is not None and code == last_code else ";"
        rendered += (sep if rendered else "") + f"{key}={value}"
        last_code = code
    frame = build_checked(cp_rendered=rendered, qn=qn, st="39", cn="2011", pw=pw, mn=mn,
                          flag=flag, cp=cp)
    if frame is not None:
        assert (frame.qn, frame.st, frame.cn, frame.pw, frame.mn, frame.flag) == (
            qn, "39", "2011", pw, mn, flag,
        )
        assert frame.cp == cp
        assert list(frame.cp) == list(cp)


@given(groups=st.lists(st.dictionaries(CP_KEY, CP_VALUE, min_size=1, max_size=5), max_size=8))
def test_round_trip_cp_groups(groups: list[dict[str, str]]) -> None:
    rendered = ";".join(",".join(f"{k}={v}" for k, v in group.items()) for group in groups)
    frame = build_checked(cp_rendered=rendered, st="31", cn="2061", pw="1", mn="2", flag=4,
                          cp=groups)
    if frame is not None:
        assert frame.cp_groups == groups
        merged: dict[str, str] = {}
        for group in groups:
            merged.update(group)
        assert frame.cp == merged


# ------------------------------------------------------------------------------- 9014 answer


def test_data_answer_for_flag_5() -> None:
    answer = build_data_answer(parse(WORKED))
    segment = f"QN=20160801085857223;ST=91;CN=9014;PW=100000;MN={MN};Flag=4;CP=&&&&"
    assert answer == capture(segment)
    reply = parse(answer)
    assert (reply.qn, reply.cn, reply.flag, reply.answer_required) == (
        "20160801085857223", "9014", 4, False,
    )


def test_no_data_answer_for_flag_4() -> None:
    assert parse(SAMPLES["P03"][0]).flag == 4
    assert build_data_answer(parse(SAMPLES["P03"][0])) is None


# ------------------------------------------------------------------------------ stream decoder


def good_frames() -> list[bytes]:
    return [WORKED.encode() + b"\r\n"] + [frame.encode() + b"\r\n" for frame, _, _ in
                                         SAMPLES.values()]


def feed_in(decoder: StreamDecoder, data: bytes, sizes: list[int]) -> list[Frame | FrameError]:
    out: list[Frame | FrameError] = []
    pos = 0
    for size in sizes:
        out += decoder.feed(data[pos : pos + size])
        pos += size
    out += decoder.feed(data[pos:])
    assert decoder.buffered <= MAX_FRAME
    return out


def test_stream_byte_by_byte_with_garbage_between() -> None:
    frames = good_frames()
    garbage = [b"", b"noise\r\n", b"\x00\xff", b"#", b"AT+OK\r\n"]
    data = b"".join(g + f for g, f in zip(garbage, frames, strict=True))
    decoder = StreamDecoder()
    out = feed_in(decoder, data, [1] * len(data))
    assert out == [parse(f) for f in frames]
    assert decoder.frames_ok == len(frames)
    assert sum(decoder.errors_by_reason.values()) == 0
    assert decoder.bytes_discarded == sum(map(len, garbage))


def test_stream_frame_truncated_by_next_frame() -> None:
    decoder = StreamDecoder()
    first, second = good_frames()[:2]
    out = decoder.feed(first[:60] + second)
    assert [type(item) for item in out] == [FrameError, Frame]
    assert isinstance(out[0], FrameError)
    assert out[0].reason == "truncated"
    assert out[1] == parse(second)
    assert decoder.errors_by_reason["truncated"] == 1
    assert decoder.bytes_discarded == 60


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [(WORKED[:-4].encode() + b"1C81\r\n", "bad_crc"), (b"##9999", "too_long"),
     (b"##01x1", "bad_header"), (b"##0102" + WORKED[6:].encode() + b"\r\n", "bad_length")],
)
def test_stream_reports_error_then_resyncs(prefix: bytes, reason: str) -> None:
    decoder = StreamDecoder()
    frame = good_frames()[1]
    out = decoder.feed(prefix + frame)
    assert [item.reason for item in out if isinstance(item, FrameError)] == [reason]
    assert out[-1] == parse(frame)
    assert decoder.errors_by_reason[reason] == 1


def test_stream_babbling_line_is_bounded_and_reported_once() -> None:
    decoder = StreamDecoder()
    out = []
    for _ in range(20):
        out += decoder.feed(b"x" * 1000)
        assert decoder.buffered == 0
    assert [item.reason for item in out if isinstance(item, FrameError)] == ["too_long"]
    assert decoder.bytes_discarded == 20_000
    assert decoder.feed(good_frames()[0]) == [parse(WORKED)]


def test_stream_crlf_split_across_chunks_is_not_garbage() -> None:
    decoder = StreamDecoder()
    frame = good_frames()[0]
    assert decoder.feed(frame[:-2]) == [parse(WORKED)]
    assert decoder.feed(b"\r") == []
    assert decoder.feed(b"\n" + frame) == [parse(WORKED)]
    assert decoder.bytes_discarded == 0


def test_stream_flush_reports_partial_frame() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b"xx" + good_frames()[0][:40]) == []
    out = decoder.flush()
    assert len(out) == 1
    assert isinstance(out[0], FrameError)
    assert out[0].reason == "truncated"
    assert (decoder.buffered, decoder.bytes_discarded) == (0, 42)


GARBAGE = st.binary(max_size=40).map(lambda b: b.replace(b"#", b""))


@settings(deadline=None)
@given(data=st.data(), cps=st.lists(st.dictionaries(CP_KEY, CP_VALUE, max_size=8), min_size=1,
                                    max_size=5))
def test_stream_random_chunks_find_exactly_the_valid_frames(
    data: st.DataObject, cps: list[dict[str, str]]
) -> None:
    frames = [build(qn=str(i), st="39", cn="2011", pw="1", mn=MN, flag=5, cp=cp)
              for i, cp in enumerate(cps)]
    garbage = [data.draw(GARBAGE) for _ in frames]
    stream = b"".join(g + f for g, f in zip(garbage, frames, strict=True))
    sizes = data.draw(st.lists(st.integers(1, 64), max_size=len(stream)))
    decoder = StreamDecoder()
    out = feed_in(decoder, stream, sizes)
    assert out == [parse(frame) for frame in frames]
    assert decoder.bytes_discarded == sum(map(len, garbage))


@settings(deadline=None)
@given(data=st.data())
def test_stream_skips_cut_frames_and_keeps_the_rest(data: st.DataObject) -> None:
    frames = good_frames()
    # Before each valid frame: garbage, or another frame cut before its CRC is complete.
    noise = [data.draw(GARBAGE | st.sampled_from(frames).flatmap(
        lambda f: st.integers(1, len(f) - 3).map(lambda cut: f[:cut]))) for _ in frames]
    stream = b"".join(n + f for n, f in zip(noise, frames, strict=True))
    sizes = data.draw(st.lists(st.integers(1, 200), max_size=len(stream)))
    decoder = StreamDecoder()
    out = feed_in(decoder, stream, sizes) + decoder.flush()
    assert [item for item in out if isinstance(item, Frame)] == [parse(f) for f in frames]
    assert all(item.reason in {"truncated", "bad_crc", "bad_header"}
               for item in out if isinstance(item, FrameError))


@settings(deadline=None)
@given(data=st.data())
def test_stream_survives_corruption(data: st.DataObject) -> None:
    stream = bytearray(b"".join(good_frames()))
    for _ in range(data.draw(st.integers(0, 8))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    noise = data.draw(st.binary(max_size=200))
    sizes = data.draw(st.lists(st.integers(1, 300), max_size=50))
    decoder = StreamDecoder()
    out = feed_in(decoder, noise + bytes(stream), sizes) + decoder.flush()
    errors = sum(decoder.errors_by_reason.values())
    assert decoder.frames_ok + errors == len(out)
    assert all(isinstance(item, Frame | FrameError) for item in out)


# ---------------------------------------------------------------------------- split/reassemble

BIG_CP = {"DataTime": "20240101120000",
          **{f"a{i:05d}-{s}": v for i in range(120) for s, v in (("Rtd", "12.345"), ("Flag", "N"))}}


def test_split_small_cp_is_one_plain_frame() -> None:
    packets = split(st="22", cn="2011", pw="1", mn=MN, cp={"a34002-Rtd": "1"}, qn="1", flag=5)
    assert len(packets) == 1
    assert (parse(packets[0]).pnum, parse(packets[0]).flag) == (None, 5)


@pytest.mark.parametrize("order", ["in_order", "reversed", "shuffled"])
def test_split_and_reassemble(order: str) -> None:
    packets = [parse(p) for p in split(st="39", cn="2011", pw="1", mn=MN, cp=BIG_CP,
                                       qn="20240101120000001", flag=5)]
    assert len(packets) > 2
    assert all(p.is_split and p.answer_required and p.pnum == len(packets) for p in packets)
    assert [p.pno for p in packets] == list(range(1, len(packets) + 1))
    assert all(p.cp["DataTime"] == "20240101120000" for p in packets)
    ordered = {"in_order": packets, "reversed": packets[::-1],
               "shuffled": packets[1::2] + packets[::2]}[order]
    reassembler = Reassembler()
    results = [reassembler.add(p) for p in ordered]
    assert results[:-1] == [None] * (len(packets) - 1)
    merged = results[-1]
    assert merged is not None
    assert merged.cp == BIG_CP
    assert list(merged.cp) == list(BIG_CP)
    assert merged.cp_groups == [{"DataTime": "20240101120000"}] + [
        {f"a{i:05d}-Rtd": "12.345", f"a{i:05d}-Flag": "N"} for i in range(120)
    ]
    assert (merged.flag, merged.pnum, merged.pno, merged.is_split) == (5, None, None, False)
    assert reassembler.pending == 0


@settings(deadline=None)
@given(cp=st.dictionaries(CP_KEY.map(lambda k: k.replace("-", "_")), CP_VALUE, max_size=40),
       seed=st.randoms())
def test_split_round_trip_property(cp: dict[str, str], seed: random.Random) -> None:
    packets = split(st="31", cn="2051", pw="p", mn="m", cp=cp, qn="q", max_segment=200)
    frames = [parse(p) for p in packets]
    assert all(len(p) - 12 <= 200 for p in packets)
    seed.shuffle(frames)
    reassembler = Reassembler()
    results = [reassembler.add(f) for f in frames]
    assert results[-1] is not None
    assert results[-1].cp == cp
    assert all(r is None for r in results[:-1])


def test_split_group_too_big_for_any_packet() -> None:
    with pytest.raises(FrameError) as info:
        split(st="31", cn="2011", pw="1", mn="2", cp={"a-Rtd": "x" * 300, "b-Rtd": "1"},
              qn="q", max_segment=200)
    assert info.value.reason == "too_long"


def part(pno: int, *, pnum: int = 3, qn: str = "20240101000000000", mn: str = "M") -> Frame:
    return Frame(qn=qn, st="39", cn="2011", mn=mn, flag=7, pnum=pnum, pno=pno,
                 cp={f"a{pno}-Rtd": "1"}, cp_groups=[{f"a{pno}-Rtd": "1"}])


def test_reassembler_passes_unsplit_and_ignores_duplicates() -> None:
    reassembler = Reassembler()
    plain = parse(WORKED)
    assert reassembler.add(plain) is plain
    assert reassembler.add(part(1)) is None
    assert reassembler.add(part(1)) is None
    assert reassembler.add(part(2, mn="other")) is None
    assert reassembler.add(part(2)) is None
    merged = reassembler.add(part(3))
    assert merged is not None
    assert merged.cp == {"a1-Rtd": "1", "a2-Rtd": "1", "a3-Rtd": "1"}
    assert merged.flag == 5
    assert reassembler.pending == 1  # the "other" MN set


def test_reassembler_idle_expiry_cap_and_explicit_expire() -> None:
    reassembler = Reassembler(max_pending=2, max_idle_frames=3)
    reassembler.add(part(1, qn="1"))
    for _ in range(4):
        reassembler.add(parse(WORKED))
    assert (reassembler.pending, reassembler.dropped_sets) == (0, 1)
    assert reassembler.add(part(2, qn="1")) is None  # late packet starts a new set
    reassembler.add(part(1, qn="2"))
    reassembler.add(part(1, qn="3"))  # evicts the oldest set (qn "1")
    assert (reassembler.pending, reassembler.dropped_sets) == (2, 2)
    assert reassembler.expire("3") == 1
    assert reassembler.pending == 1
    with pytest.raises(FrameError) as info:
        Reassembler(max_parts=4).add(part(1, pnum=5))
    assert info.value.reason == "too_long"


# ------------------------------------------------------------------------------- decode_line


def test_decode_line_valid_and_json() -> None:
    decoded = decode_line("  " + SAMPLES["P04"][0] + "\r\n")
    assert decoded == {
        "valid": True, "error": None, "st": "22", "cn": "2081", "mn": MN, "flag": 5,
        "cp": {"DataTime": "20231008130452", "RestartTime": "20231007130452"},
    }
    assert json.loads(json.dumps(decoded)) == decoded


def test_decode_line_invalid_keeps_what_it_could_read() -> None:
    decoded = decode_line(WORKED[:-4] + "0759")
    assert decoded == {
        "valid": False, "error": "bad_crc: CRC 0759 does not match computed 1C80", "st": "32",
        "cn": "1062", "mn": MN, "flag": 5, "cp": {"RtdInterval": "30"},
    }
    assert decode_line("hello") == {"valid": False, "error": decode_line("hello")["error"],
                                    "st": None, "cn": None, "mn": None, "flag": None, "cp": {}}
    assert str(decode_line("hello")["error"]).startswith("bad_header: ")


# ----------------------------------------------------------------------------------- fuzzing


def outcome(raw: bytes | str) -> Frame | str:
    """The parsed Frame or the FrameError reason; any other exception propagates."""
    try:
        return parse(raw)
    except FrameError as exc:
        return exc.reason


@given(st.binary(max_size=1200) | st.text(max_size=300))
def test_parse_raises_only_frame_error(raw: bytes | str) -> None:
    assert isinstance(outcome(raw), Frame) or outcome(raw) in REASONS


TOKENS = ["CP=&&", "&&", ";", ",", "=", "QN", "ST", "Flag", "PNUM", "PNO", "DataTime", "5",
          "20240101000000", "-Rtd", "²", "é", "\x00"]


@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)
       | st.text(st.characters(codec="utf-8", exclude_characters="#"), max_size=200))
def test_parse_of_any_segment_with_valid_envelope(text: str) -> None:
    data = text.encode()[:MAX_SEGMENT]
    result = outcome(b"##%04d%s%04X" % (len(data), data, annex_a_crc(data)))
    if isinstance(result, Frame):
        assert b"CP=&&" in data
        assert data.endswith(b"&&")
    else:
        assert result in {"bad_segment", "bad_cp"}


@given(st.text(max_size=300))
def test_decode_line_never_raises(line: str) -> None:
    decoded = decode_line(line)
    assert set(decoded) == {"valid", "error", "st", "cn", "mn", "flag", "cp"}
    json.dumps(decoded)


@settings(deadline=None)
@given(chunks=st.lists(st.binary(max_size=400), max_size=20))
def test_stream_feed_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    decoder = StreamDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
        assert decoder.buffered <= MAX_FRAME
