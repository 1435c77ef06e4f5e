"""Register codec: data types, word orders, scale/offset, enums, bit fields and sentinels."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.contract import MAX_NUMBER
from devices.modbus.codec import (
    CodecError,
    DataType,
    Point,
    Table,
    WordOrder,
    bit_field_registers,
    decode,
    decode_raw,
    encode,
)
from devices.model import Value
from devices.quantities import DIRECTIONS, SERVICE_MODES, quantity

ORDERS = list(WordOrder)
ABCD, CDAB, BADC, DCBA = WordOrder.ABCD, WordOrder.CDAB, WordOrder.BADC, WordOrder.DCBA

# Integer types, with the canonical integer quantity used to carry them, and their range.
INT_RANGES = {
    DataType.U16: (0, 2**16 - 1),
    DataType.I16: (-(2**15), 2**15 - 1),
    DataType.U32: (0, 2**32 - 1),
    DataType.I32: (-(2**31), 2**31 - 1),
    DataType.U64: (0, 2**64 - 1),
    DataType.I64: (-(2**63), 2**63 - 1),
}


def _code(labels: dict[int, str], label: str) -> int:
    return next(code for code, name in labels.items() if name == label)


# --- hand-computed register values for known numbers --------------------------------------------

# (type, value, {order: registers}) — written out by hand from the byte layout, not computed.
KNOWN_INTS = [
    (DataType.U16, 0x1234, {ABCD: [0x1234], CDAB: [0x1234], BADC: [0x3412], DCBA: [0x3412]}),
    # -292 = 0xFEDC
    (DataType.I16, -292, {ABCD: [0xFEDC], CDAB: [0xFEDC], BADC: [0xDCFE], DCBA: [0xDCFE]}),
    (DataType.U32, 0x12345678, {
        ABCD: [0x1234, 0x5678], CDAB: [0x5678, 0x1234],
        BADC: [0x3412, 0x7856], DCBA: [0x7856, 0x3412],
    }),
    # -123456789 = 0xF8A432EB
    (DataType.I32, -123456789, {
        ABCD: [0xF8A4, 0x32EB], CDAB: [0x32EB, 0xF8A4],
        BADC: [0xA4F8, 0xEB32], DCBA: [0xEB32, 0xA4F8],
    }),
    (DataType.U64, 0x0102030405060708, {
        ABCD: [0x0102, 0x0304, 0x0506, 0x0708], CDAB: [0x0708, 0x0506, 0x0304, 0x0102],
        BADC: [0x0201, 0x0403, 0x0605, 0x0807], DCBA: [0x0807, 0x0605, 0x0403, 0x0201],
    }),
    # -0x0102030405060708 = 0xFEFDFCFBFAF9F8F8
    (DataType.I64, -0x0102030405060708, {
        ABCD: [0xFEFD, 0xFCFB, 0xFAF9, 0xF8F8], CDAB: [0xF8F8, 0xFAF9, 0xFCFB, 0xFEFD],
        BADC: [0xFDFE, 0xFBFC, 0xF9FA, 0xF8F8], DCBA: [0xF8F8, 0xF9FA, 0xFBFC, 0xFDFE],
    }),
    # Above 2**53: a float detour would lose the low bits.
    (DataType.U64, 0xFFFFFFFFFFFFFFFF - 2, {
        ABCD: [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD], CDAB: [0xFFFD, 0xFFFF, 0xFFFF, 0xFFFF],
        BADC: [0xFFFF, 0xFFFF, 0xFFFF, 0xFDFF], DCBA: [0xFDFF, 0xFFFF, 0xFFFF, 0xFFFF],
    }),
]
# 123.456 as IEEE 754: f32 0x42F6E979, f64 0x405EDD2F1A9FBE77.
KNOWN_FLOATS = [
    (DataType.F32, {
        ABCD: [0x42F6, 0xE979], CDAB: [0xE979, 0x42F6],
        BADC: [0xF642, 0x79E9], DCBA: [0x79E9, 0xF642],
    }),
    (DataType.F64, {
        ABCD: [0x405E, 0xDD2F, 0x1A9F, 0xBE77], CDAB: [0xBE77, 0x1A9F, 0xDD2F, 0x405E],
        BADC: [0x5E40, 0x2FDD, 0x9F1A, 0x77BE], DCBA: [0x77BE, 0x9F1A, 0x2FDD, 0x5E40],
    }),
]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("dtype", "value", "regs"), KNOWN_INTS,
                         ids=[f"{t}-{v:#x}" for t, v, _ in KNOWN_INTS])
def test_known_integers_in_every_word_order(
    dtype: DataType, value: int, regs: dict[WordOrder, list[int]], order: WordOrder
) -> None:
    point = Point("trip_count", 100, type=dtype, order=order)
    assert encode(point, value) == regs[order]
    assert decode_raw(point, regs[order]) == value
    if abs(value) > MAX_NUMBER:  # beyond what a reading carries: no value, a clear error
        with pytest.raises(CodecError, match="out_of_range"):
            decode(point, regs[order])
        return
    assert decode(point, regs[order]) == value
    assert isinstance(decode(point, regs[order]), int)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("dtype", "regs"), KNOWN_FLOATS, ids=["f32", "f64"])
def test_known_floats_in_every_word_order(
    dtype: DataType, regs: dict[WordOrder, list[int]], order: WordOrder
) -> None:
    point = Point("speed", 0, type=dtype, order=order)
    assert encode(point, 123.456) == regs[order]
    got = decode(point, regs[order])
    assert isinstance(got, float)
    if dtype is DataType.F64:
        assert got == 123.456
    else:
        assert got == struct.unpack(">f", struct.pack(">f", 123.456))[0]
        assert got == pytest.approx(123.456, rel=1e-7)


@pytest.mark.parametrize("order", ORDERS)
def test_bool_register_in_every_word_order(order: WordOrder) -> None:
    point = Point("door_closed", 4, type=DataType.BOOL, order=order)
    assert point.count == 1
    assert decode(point, [0]) is False
    assert decode(point, [1]) is True
    assert decode(point, [0x0100]) is True  # any non-zero register is "on"
    assert decode(point, [0xFFFF]) is True
    assert encode(point, True) == [1]
    assert encode(point, False) == [0]


def test_word_orders_disagree_on_the_same_registers() -> None:
    regs = [0x1234, 0x5678]
    decoded = {o: decode(Point("trip_count", 0, type=DataType.U32, order=o), regs) for o in ORDERS}
    assert decoded == {ABCD: 0x12345678, CDAB: 0x56781234, BADC: 0x34127856, DCBA: 0x78563412}


@pytest.mark.parametrize(("dtype", "count"), [
    (DataType.U16, 1), (DataType.I16, 1), (DataType.BOOL, 1),
    (DataType.U32, 2), (DataType.I32, 2), (DataType.F32, 2),
    (DataType.U64, 4), (DataType.I64, 4), (DataType.F64, 4),
])
def test_register_count_and_end(dtype: DataType, count: int) -> None:
    point = Point("trip_count", 10, type=dtype)
    assert point.count == count
    assert point.end == 10 + count
    # In the single-bit tables every point is one bit, whatever its declared type.
    assert Point("trip_count", 10, table=Table.COIL, type=dtype).count == 1


def test_table_function_codes() -> None:
    assert [t.function for t in (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT)] == [
        1, 2, 3, 4]
    assert Table.COIL.is_bits
    assert Table.DISCRETE.is_bits
    assert not Table.HOLDING.is_bits
    assert not Table.INPUT.is_bits


@pytest.mark.parametrize("table", [Table.COIL, Table.DISCRETE])
def test_bit_tables_decode_to_bool(table: Table) -> None:
    point = Point("alarm_button", 7, table=table, type=DataType.BOOL)
    assert decode(point, [1]) is True
    assert decode(point, [0]) is False
    assert encode(point, True) == [1]


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", list(INT_RANGES))
@given(data=st.data())
def test_integer_round_trip(dtype: DataType, order: WordOrder, data: st.DataObject) -> None:
    lo, hi = INT_RANGES[dtype]
    value = data.draw(st.integers(max(lo, -MAX_NUMBER), min(hi, MAX_NUMBER)))  # beyond: refused
    point = Point("trip_count", 0, type=dtype, order=order)
    regs = encode(point, value)
    assert len(regs) == point.count
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(point, regs) == value


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", list(INT_RANGES))
@given(data=st.data())
def test_integer_registers_round_trip(
    dtype: DataType, order: WordOrder, data: st.DataObject
) -> None:
    point = Point("trip_count", 0, type=dtype, order=order)
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=point.count,
                              max_size=point.count))
    if abs(decode_raw(point, regs)) > MAX_NUMBER:  # beyond what a reading carries
        with pytest.raises(CodecError):
            decode(point, regs)
        return
    value = decode(point, regs)
    assert encode(point, value) == regs


@pytest.mark.parametrize("order", ORDERS)
@given(value=st.floats(-999999986991104.0, 999999986991104.0, width=32))  # ±MAX_NUMBER
def test_f32_round_trip(order: WordOrder, value: float) -> None:
    point = Point("speed", 0, type=DataType.F32, order=order)
    assert decode(point, encode(point, value)) == value


@pytest.mark.parametrize("order", ORDERS)
@given(value=st.floats(-MAX_NUMBER, MAX_NUMBER))
def test_f64_round_trip(order: WordOrder, value: float) -> None:
    point = Point("speed", 0, type=DataType.F64, order=order)
    assert decode(point, encode(point, value)) == value


@pytest.mark.parametrize("order", ORDERS)
@given(value=st.booleans())
def test_bool_round_trip(order: WordOrder, value: bool) -> None:
    point = Point("door_closed", 0, type=DataType.BOOL, order=order)
    assert decode(point, encode(point, value)) is value


# --- scale and offset ----------------------------------------------------------------------------

def test_scale_applies_to_signed_raw() -> None:
    point = Point("machine_room_temp", 17, type=DataType.I16, scale=0.1)
    assert decode(point, [235]) == pytest.approx(23.5)
    assert decode(point, [0xFFCE]) == pytest.approx(-5.0)  # raw -50
    assert encode(point, 23.5) == [235]
    assert encode(point, -5.0) == [0xFFCE]


def test_scale_and_offset_together() -> None:
    # A common transmitter layout: raw tenths of a degree from -40 °C.
    point = Point("temperature", 0, scale=0.1, offset=-40.0)
    assert decode(point, [650]) == pytest.approx(25.0)
    assert decode(point, [0]) == pytest.approx(-40.0)
    assert encode(point, 25.0) == [650]
    assert encode(point, -40.0) == [0]


def test_offset_on_integer_quantity_stays_integer() -> None:
    point = Point("floor", 3, offset=-2)  # raw 0 is the second basement
    assert decode(point, [0]) == -2
    assert decode(point, [5]) == 3
    assert isinstance(decode(point, [5]), int)
    assert encode(point, -2) == [0]


def test_scaled_u32_running_hours() -> None:
    point = Point("running_hours", 10, type=DataType.U32, scale=0.1)
    assert decode(point, [0x0001, 0x0000]) == pytest.approx(6553.6)
    assert encode(point, 6553.6) == [0x0001, 0x0000]


@given(raw=st.integers(0, 0xFFFF))
def test_scaled_offset_registers_round_trip(raw: int) -> None:
    point = Point("temperature", 0, scale=0.1, offset=-40.0)
    assert encode(point, decode(point, [raw])) == [raw]


# --- enums ---------------------------------------------------------------------------------------

VENDOR_MODES = Point(
    "service_mode", 0,
    enum={0: "normal", 1: "inspection", 2: "fire_return", 9: "out_of_service"},
)


def test_enum_maps_vendor_codes_to_canonical_codes() -> None:
    assert decode(VENDOR_MODES, [0]) == _code(SERVICE_MODES, "normal") == 1
    assert decode(VENDOR_MODES, [1]) == _code(SERVICE_MODES, "inspection") == 2
    assert decode(VENDOR_MODES, [2]) == _code(SERVICE_MODES, "fire_return") == 3
    assert decode(VENDOR_MODES, [9]) == _code(SERVICE_MODES, "out_of_service") == 0


def test_enum_unmapped_raw_is_unknown_or_none() -> None:
    assert decode(VENDOR_MODES, [5]) == _code(SERVICE_MODES, "unknown")
    # direction has no "unknown" label: an unmapped code yields no value at all.
    direction = Point("direction", 2, enum={0: "none", 1: "up", 2: "down"})
    assert decode(direction, [7]) is None
    assert decode(direction, [2]) == _code(DIRECTIONS, "down")


def test_enum_encode_maps_canonical_code_back_to_vendor_code() -> None:
    assert encode(VENDOR_MODES, 1) == [0]
    assert encode(VENDOR_MODES, 0) == [9]
    with pytest.raises(CodecError, match="service_mode"):
        encode(VENDOR_MODES, _code(SERVICE_MODES, "earthquake"))


@given(raw=st.sampled_from([0, 1, 2, 9]))
def test_enum_round_trip(raw: int) -> None:
    assert encode(VENDOR_MODES, decode(VENDOR_MODES, [raw])) == [raw]


def test_enum_on_bool_quantity_can_invert() -> None:
    # Some controllers report "door open" where the canonical quantity is "door closed".
    point = Point("door_closed", 5, enum={0: "true", 1: "false"})
    assert decode(point, [0]) is True
    assert decode(point, [1]) is False
    assert encode(point, True) == [0]
    assert encode(point, False) == [1]


def test_enum_labels_match_canonical_model() -> None:
    assert quantity("service_mode").labels == SERVICE_MODES
    for code, label in SERVICE_MODES.items():
        point = Point("service_mode", 0, enum={100 + code: label})
        assert decode(point, [100 + code]) == code


# --- bit fields ----------------------------------------------------------------------------------

STATUS_WORD = [
    Point("door_closed", 5, bits=(0, 1)),
    Point("door_zone", 5, bits=(1, 1)),
    Point("direction", 5, bits=(2, 2), enum={0: "none", 1: "up", 2: "down"}),
    Point("passenger_present", 5, type=DataType.BOOL, bits=(4, 1)),
    Point("floor", 5, bits=(8, 8)),
]


def test_bit_fields_share_one_register() -> None:
    values: dict[str, Value] = {"door_closed": True, "door_zone": False, "direction": 2,
              "passenger_present": True, "floor": 0x2A}
    word = bit_field_registers(STATUS_WORD, values)
    #      floor 0x2A << 8 | passenger 1 << 4 | direction 2 << 2 | zone 0 << 1 | closed 1
    assert word == 0x2A00 | 0x10 | 0x08 | 0x00 | 0x01 == 0x2A19
    assert {p.quantity: decode(p, [word]) for p in STATUS_WORD} == values


def test_bit_field_decode_from_hand_built_word() -> None:
    word = 0b0000_0011_0000_0110  # floor 3, direction up (1 << 2), door zone, door open
    decoded = {p.quantity: decode(p, [word]) for p in STATUS_WORD}
    assert decoded == {"door_closed": False, "door_zone": True, "direction": 1,
                       "passenger_present": False, "floor": 3}


@given(closed=st.booleans(), zone=st.booleans(), direction=st.sampled_from([0, 1, 2]),
       present=st.booleans(), floor=st.integers(0, 255))
def test_bit_fields_round_trip(
    closed: bool, zone: bool, direction: int, present: bool, floor: int
) -> None:
    values: dict[str, Value] = {"door_closed": closed, "door_zone": zone, "direction": direction,
              "passenger_present": present, "floor": floor}
    word = bit_field_registers(STATUS_WORD, values)
    assert 0 <= word <= 0xFFFF
    for p in STATUS_WORD:
        assert decode(p, [word]) == values[p.quantity]
        # A single bit-field point encodes into its own bits of the register.
        assert decode(p, encode(p, values[p.quantity])) == values[p.quantity]


def test_bit_field_registers_rejects_non_bit_field() -> None:
    with pytest.raises(CodecError, match="floor is not a bit field"):
        bit_field_registers([Point("floor", 3)], {"floor": 1})


def test_bit_field_sentinel_applies_to_whole_register() -> None:
    point = Point("door_closed", 5, bits=(0, 1), not_available=(0xFFFF,))
    assert decode(point, [0xFFFF]) is None
    assert decode(point, [0xFFFE]) is False


# --- sentinels, NaN, wrong counts ----------------------------------------------------------------

def test_not_available_sentinels() -> None:
    speed = Point("speed", 12, scale=0.01, not_available=(0xFFFF,))
    assert decode(speed, [0xFFFF]) is None
    assert decode(speed, [0xFFFE]) == pytest.approx(655.34)
    assert encode(speed, None) == [0xFFFF]
    floor = Point("floor", 3, type=DataType.I16, not_available=(-32768,))
    assert decode(floor, [0x8000]) is None
    assert decode(floor, [0x8001]) == -32767
    assert encode(floor, None) == [0x8000]
    counter = Point("trip_count", 8, type=DataType.U32, order=CDAB,
                    not_available=(0xFFFFFFFF,))
    assert decode(counter, [0xFFFF, 0xFFFF]) is None
    assert decode(counter, [0xFFFE, 0xFFFF]) == 0xFFFFFFFE


def test_sentinel_without_declaration_is_a_value() -> None:
    assert decode(Point("door_cycles", 0), [0xFFFF]) == 0xFFFF
    with pytest.raises(CodecError, match="not available"):
        encode(Point("door_cycles", 0), None)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [DataType.F32, DataType.F64])
def test_nan_and_inf_decode_to_none(dtype: DataType, special: float, order: WordOrder) -> None:
    point = Point("temperature", 0, type=dtype, order=order)
    assert decode(point, encode(point, special)) is None


def test_nan_hand_built_registers() -> None:
    assert decode(Point("speed", 0, type=DataType.F32), [0x7FC0, 0x0000]) is None
    assert decode(Point("speed", 0, type=DataType.F32, order=CDAB), [0x0000, 0x7FC0]) is None
    assert decode(Point("speed", 0, type=DataType.F32), [0x7F80, 0x0000]) is None  # +inf
    assert decode(Point("speed", 0, type=DataType.F32), [0xFF80, 0x0000]) is None  # -inf
    assert decode(Point("speed", 0, type=DataType.F64), [0x7FF8, 0, 0, 0]) is None
    # The largest finite f32 is not a sentinel, but beyond what a reading carries.
    with pytest.raises(CodecError, match=r"speed: 3.4\d*e\+38 is beyond ±1e\+15"):
        decode(Point("speed", 0, type=DataType.F32), [0x7F7F, 0xFFFF])


@pytest.mark.parametrize(("dtype", "n"), [
    (DataType.U16, 0), (DataType.U16, 2), (DataType.I16, 2), (DataType.BOOL, 2),
    (DataType.U32, 1), (DataType.I32, 3), (DataType.F32, 4),
    (DataType.U64, 2), (DataType.I64, 5), (DataType.F64, 2),
])
def test_wrong_register_count_raises(dtype: DataType, n: int) -> None:
    point = Point("trip_count", 0, type=dtype)
    with pytest.raises(CodecError, match=f"trip_count: expected {point.count} registers, got {n}"):
        decode(point, [0] * n)


def test_codec_error_is_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_encode_text_into_number_raises() -> None:
    with pytest.raises(CodecError, match="cannot encode text"):
        encode(Point("speed", 0), "fast")


def test_a_value_that_does_not_fit_its_bit_field_is_refused_not_masked() -> None:
    # 1 at scale 0.1 is raw 10, which a 3-bit field cannot hold: masked it would read back as 0
    point = Point("battery_mv", 0, type=DataType.U16, scale=0.1, bits=(0, 3))
    assert decode(point, encode(point, 0)) == 0
    with pytest.raises(CodecError, match="does not fit its 3-bit field"):
        encode(point, 1)
    with pytest.raises(CodecError, match="does not fit"):
        bit_field_registers([Point("floor", 0, bits=(4, 4))], {"floor": -1})
