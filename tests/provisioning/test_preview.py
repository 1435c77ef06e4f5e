"""Register preview: every type and word order, computed with the gateway's codec."""

from __future__ import annotations

from devices.modbus.codec import DataType, Point, WordOrder, encode
from provisioning.preview import ORDERS, preview, raw_line

F32_POINT = Point(quantity="speed", address=100, type=DataType.F32, order=WordOrder.CDAB)


def row(rows: list, dtype: DataType, address: int = 100) -> dict[WordOrder, str]:
    return next(r.values for r in rows if r.type is dtype and r.address == address)


def test_f32_in_cdab_shows_under_cdab_only() -> None:
    regs = encode(F32_POINT, 123.456)
    rows = preview(100, regs)
    f32 = row(rows, DataType.F32)
    assert f32[WordOrder.CDAB] == "123.456"
    assert all(f32[o] != "123.456" for o in ORDERS if o is not WordOrder.CDAB)
    assert {r.type for r in rows} == {DataType.U16, DataType.I16, DataType.U32, DataType.I32,
                                      DataType.F32}  # 64-bit types need four registers


def test_every_type_and_order_with_four_registers() -> None:
    regs = [0x0102, 0x0304, 0x0506, 0x0708]
    rows = preview(0, regs)
    assert [r.type for r in rows] == [DataType.U16, DataType.I16, DataType.U32, DataType.I32,
                                      DataType.U64, DataType.I64, DataType.F32, DataType.F64]
    u32 = row(rows, DataType.U32, 0)
    assert u32 == {WordOrder.ABCD: str(0x01020304), WordOrder.CDAB: str(0x03040102),
                   WordOrder.BADC: str(0x02010403), WordOrder.DCBA: str(0x04030201)}
    assert row(rows, DataType.U64, 0)[WordOrder.ABCD] == str(0x0102030405060708)
    assert row(rows, DataType.I16, 0)[WordOrder.BADC] == str(0x0201)


def test_negative_and_all_offsets() -> None:
    rows = preview(10, [0xFFFF, 0xFFFE], every_offset=True)
    assert row(rows, DataType.I16, 10)[WordOrder.ABCD] == "-1"
    assert row(rows, DataType.I16, 11)[WordOrder.ABCD] == "-2"
    assert row(rows, DataType.I32, 10)[WordOrder.ABCD] == "-2"
    assert raw_line(10, [0xFFFF, 1]) == "10=0xFFFF  11=0x0001"
