"""Property-based fuzzing of the input codecs: arbitrary registers and bytes never raise anything
but each codec's documented error, and what they let through is what the wire contract accepts.

Bounded (a few hundred examples each) so the suite stays fast; the parking frame codec and the
HJ 212 stream decoder have their own fuzz tests in test_parking.py and test_hj212.py.
"""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from devices import contract
from devices.hj212 import Frame, FrameError, Reassembler, build, decode_line, describe, parse
from devices.hj212.normalise import normalise
from devices.modbus.codec import CodecError, DataType, Point, Table, WordOrder, decode, encode
from devices.profiles import available, load_profile
from devices.profiles.loader import point_problems
from devices.quantities import QUANTITIES, ValueKind

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# --- Modbus registers -------------------------------------------------------------------------


@st.composite
def points(draw: st.DrawFn, *, enums: bool = True, sentinels: bool = True) -> Point:
    """Any point a profile could declare that passes the loader's checks."""
    name = draw(st.sampled_from(sorted(QUANTITIES)))
    q = QUANTITIES[name]
    dtype = draw(st.sampled_from(list(DataType)))
    table = draw(st.sampled_from(list(Table)))
    bits = None
    if draw(st.booleans()) and dtype not in (DataType.F32, DataType.F64):
        size = 16 * {DataType.U32: 2, DataType.I32: 2, DataType.U64: 4,
                     DataType.I64: 4}.get(dtype, 1)
        low = draw(st.integers(0, size - 1))
        bits = (low, draw(st.integers(1, size - low)))
    enum: dict[int, str] = {}
    if enums and draw(st.booleans()):
        labels = (list(q.labels.values()) if q.kind is ValueKind.ENUM
                  else ["true", "false"] if q.kind is ValueKind.BOOL else ["0", "7", "-3"])
        enum = draw(st.dictionaries(st.integers(0, 20), st.sampled_from(labels), max_size=4))
    point = Point(
        quantity=name, address=draw(st.integers(0, 1000)), table=table, type=dtype,
        order=draw(st.sampled_from(list(WordOrder))),
        scale=draw(st.sampled_from([1.0, 0.1, 0.01, 10.0, -1.0, 1e-30, 1e30])),
        offset=draw(st.sampled_from([0.0, -40.0, 1e20])), bits=bits, enum=enum,
        not_available=tuple(draw(st.lists(st.integers(-70000, 70000), max_size=2)))
        if sentinels else (),
    )
    assume(not point_problems(point))
    return point


def registers(point: Point) -> st.SearchStrategy[list[int]]:
    """Registers of the right count and width."""
    return st.lists(st.integers(0, 0xFFFF), min_size=point.count, max_size=point.count)


@FUZZ
@given(data=st.data())
def test_modbus_decode_raises_only_codec_error_and_yields_contract_values(
        data: st.DataObject) -> None:
    point = data.draw(points())
    regs = data.draw(registers(point) | st.lists(st.integers(-(2**70), 2**70), max_size=6))
    try:
        value = decode(point, regs)
    except CodecError:
        return
    assert contract.value_problem(point.quantity, value) is None


@FUZZ
@given(data=st.data())
def test_modbus_encode_decode_round_trip(data: st.DataObject) -> None:
    point = data.draw(points(enums=False, sentinels=False))
    with contextlib.suppress(CodecError):
        value = decode(point, data.draw(registers(point)))
        assume(value is not None)
        again = decode(point, encode(point, value))
        if isinstance(value, float):
            assert again == pytest.approx(value, rel=1e-6, abs=abs(point.scale) * 1e-6)
        else:
            assert again == value


# --- HJ 212 frames --------------------------------------------------------------------------------

SAFE_TEXT = st.text(st.characters(blacklist_characters=";,&=\r\n", blacklist_categories=("Cs",)),
                    max_size=12)  # text as read off a serial line: never a lone surrogate
CODES = st.sampled_from(["a34002", "a34004", "a01001", "a21026", "03", "01", "w01018", "a00000"])
SUFFIXES = st.sampled_from(["Rtd", "Avg", "ZsRtd", "ZsAvg", "Flag", "Min", "Max", "Cou"])
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.integers(-(10**400), 10**400).map(str), SAFE_TEXT)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A well-formed frame with arbitrary (often nonsensical) header and CP contents."""
    cp = {f"{draw(CODES)}-{draw(SUFFIXES)}": draw(NUMBERS) for _ in range(draw(st.integers(0, 6)))}
    if draw(st.booleans()):
        cp["DataTime"] = draw(st.text("0123456789", min_size=0, max_size=18) | SAFE_TEXT)
    try:
        return build(qn=draw(st.none() | SAFE_TEXT), st=draw(st.none() | SAFE_TEXT),
                     cn=draw(st.sampled_from(["2011", "2051", "2061", "2031", "2081", "9014"])
                             | SAFE_TEXT),
                     pw=draw(st.none() | SAFE_TEXT), mn=draw(st.none() | SAFE_TEXT),
                     flag=draw(st.none() | st.integers(0, 255)), cp=cp)
    except FrameError:
        assume(False)
        raise


@FUZZ
@given(raw=st.binary(max_size=1100) | st.text(max_size=300))
def test_hj212_parse_raises_only_frame_error(raw: bytes | str) -> None:
    with contextlib.suppress(FrameError):
        parse(raw)
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
    assert decode_line(text)["valid"] in (True, False)


@FUZZ
@given(raw=frames(), profile=st.sampled_from([p for p in available() if "hj212" in p]))
def test_hj212_normalised_readings_always_pass_the_contract(raw: bytes, profile: str) -> None:
    frame = parse(raw)
    assert describe(frame)["valid"] is True
    out = normalise(frame, load_profile(profile), "dust-1", received_ms=1_700_000_000_000)
    for reading in out.readings:
        assert contract.reading_problem(reading) is None, reading
        assert all(isinstance(v, float) and math.isfinite(v) for v in reading.values.values())


@FUZZ
@given(parts=st.lists(st.builds(
    Frame, qn=st.sampled_from(["1", "2"]), cn=st.just("2011"), mn=st.just("M"),
    flag=st.integers(0, 255), pnum=st.none() | st.integers(-2, 200),
    pno=st.none() | st.integers(-2, 200),
    cp=st.dictionaries(SAFE_TEXT, SAFE_TEXT, max_size=3)), max_size=30))
def test_hj212_reassembler_raises_only_frame_error(parts: list[Frame]) -> None:
    reassembler = Reassembler(max_pending=4, max_parts=64)
    for part in parts:
        with contextlib.suppress(FrameError):
            reassembler.add(part)
    assert reassembler.pending <= 4
