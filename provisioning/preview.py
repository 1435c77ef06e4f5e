"""Register preview: every data type and word order interpretation of a few registers, side by side.

Sans-IO: the table is computed from registers with the same codec the gateway uses, so what a
technician sees here is what the gateway will decode with that type and order in a profile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from devices.modbus.codec import DataType, Point, WordOrder, decode_raw

TYPES = [DataType.U16, DataType.I16, DataType.U32, DataType.I32, DataType.U64, DataType.I64,
         DataType.F32, DataType.F64]
ORDERS = list(WordOrder)
WORDS = {DataType.U16: 1, DataType.I16: 1, DataType.U32: 2, DataType.I32: 2, DataType.F32: 2,
         DataType.U64: 4, DataType.I64: 4, DataType.F64: 4}


@dataclass(frozen=True, slots=True)
class PreviewRow:
    """One data type read at one address: its value in each word order ("" if it does not fit)."""

    address: int
    type: DataType
    values: dict[WordOrder, str]


def fmt(value: int | float) -> str:
    """A value as a technician wants to read it: exact integers, 7 significant digits for floats."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.7g}"


def interpret(address: int, regs: Sequence[int], dtype: DataType) -> dict[WordOrder, str]:
    """The value of `dtype` at the start of `regs` in each word order."""
    n = WORDS[dtype]
    if len(regs) < n:
        return dict.fromkeys(ORDERS, "")
    out = {}
    for order in ORDERS:
        point = Point(quantity="preview", address=address, type=dtype, order=order)
        out[order] = fmt(decode_raw(point, list(regs[:n])))
    return out


def preview(address: int, regs: Sequence[int], *, every_offset: bool = False) -> list[PreviewRow]:
    """Rows for every type at `address` (and, with every_offset, at each later address too)."""
    starts = range(len(regs)) if every_offset else range(1)
    rows = []
    for i in starts:
        for dtype in TYPES:
            if len(regs) - i >= WORDS[dtype]:
                rows.append(PreviewRow(address + i, dtype, interpret(address + i, regs[i:],
                                                                     dtype)))
    return rows


def raw_line(address: int, regs: Sequence[int]) -> str:
    """The raw registers as address=hex pairs."""
    return "  ".join(f"{address + i}=0x{r:04X}" for i, r in enumerate(regs))
