"""Register codec: raw Modbus registers to canonical values and back.

Word orders are named by the bytes of a 32-bit value A (most significant) .. D as they appear
on the wire, and generalise to 16/64 bits as (word order, byte swap):
  ABCD  big-endian words, big-endian bytes (the Modbus default)
  CDAB  little-endian words ("word swap"), big-endian bytes
  BADC  big-endian words, bytes swapped inside each word
  DCBA  little-endian words, bytes swapped (fully little-endian)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from devices.contract import value_problem
from devices.model import Value
from devices.quantities import Quantity, ValueKind, quantity


class DataType(StrEnum):
    """Register data types."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    BOOL = "bool"  # a coil / discrete input, or a register's bit field of width 1


class WordOrder(StrEnum):
    """Word and byte order of multi-register values."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class Table(StrEnum):
    """Modbus data tables, with the read function code of each."""

    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def function(self) -> int:
        """Modbus read function code for this table."""
        return {"coil": 1, "discrete": 2, "holding": 3, "input": 4}[self.value]

    @property
    def is_bits(self) -> bool:
        """True for the single-bit tables."""
        return self in (Table.COIL, Table.DISCRETE)


_WORDS = {
    DataType.U16: 1, DataType.I16: 1, DataType.BOOL: 1,
    DataType.U32: 2, DataType.I32: 2, DataType.F32: 2,
    DataType.U64: 4, DataType.I64: 4, DataType.F64: 4,
}
_STRUCT = {
    DataType.U16: ">H", DataType.I16: ">h", DataType.U32: ">I", DataType.I32: ">i",
    DataType.U64: ">Q", DataType.I64: ">q", DataType.F32: ">f", DataType.F64: ">d",
    DataType.BOOL: ">H",  # a bool bit field inside a register
}


class CodecError(ValueError):
    """A point definition or value that cannot be encoded/decoded."""


@dataclass(frozen=True, slots=True)
class WriteSpec:
    """How a point may be written: function code, bounds and allowed values (canonical).

    A point without one is never written; `dangerous` asks the collector for a second,
    confirming step before the command is sent.
    """

    function: int  # 5 (one coil), 6 (one register), 15 (coils), 16 (registers)
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[float | int | bool, ...] = ()
    dangerous: bool = False


@dataclass(frozen=True, slots=True)
class Point:
    """Where a canonical quantity lives in a device's register map and how to decode it."""

    quantity: str
    address: int
    table: Table = Table.HOLDING
    type: DataType = DataType.U16
    order: WordOrder = WordOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    bits: tuple[int, int] | None = None  # (lowest bit, width) inside the raw value
    enum: dict[int, str] = field(default_factory=dict)  # raw value -> canonical label
    not_available: tuple[int, ...] = ()  # raw values meaning "no value" (e.g. 0xFFFF)
    deadband: float = 0.0  # report-on-change threshold for numbers
    write: WriteSpec | None = None  # None: never written

    @property
    def count(self) -> int:
        """Number of registers (or bits, for coil tables) the point occupies."""
        return 1 if self.table.is_bits else _WORDS[self.type]

    @property
    def end(self) -> int:
        """First address after the point."""
        return self.address + self.count


def _to_bytes(regs: Sequence[int], order: WordOrder) -> bytes:
    words = list(regs)
    if order in (WordOrder.CDAB, WordOrder.DCBA):
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if order in (WordOrder.BADC, WordOrder.DCBA):
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def _from_bytes(raw: bytes, order: WordOrder) -> list[int]:
    if order in (WordOrder.BADC, WordOrder.DCBA):
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if order in (WordOrder.CDAB, WordOrder.DCBA):
        words.reverse()
    return words


def decode_raw(point: Point, regs: Sequence[int]) -> int | float:
    """Decode the raw number (before bit field, enum, scale) from the point's registers."""
    if len(regs) != point.count:
        raise CodecError(f"{point.quantity}: expected {point.count} registers, got {len(regs)}")
    if not all(isinstance(r, int) and 0 <= r <= 0xFFFF for r in regs):
        raise CodecError(f"{point.quantity}: registers {list(regs)!r} are not all 16-bit values")
    if point.table.is_bits or (point.type is DataType.BOOL and point.bits is None):
        return 1 if regs[0] else 0
    value: int | float = struct.unpack(_STRUCT[point.type], _to_bytes(regs, point.order))[0]
    return value


def decode(point: Point, regs: Sequence[int]) -> Value:
    """Decode registers to the canonical value, or None when the device says "not available".

    Raises only CodecError: for registers that do not fit the point, and for a value the wire
    contract refuses (devices.contract.value_problem: not finite once scaled, beyond
    ±MAX_NUMBER, outside the quantity's range), so a decoded value is always one to send.
    """
    value = _decode(point, regs)
    problem = None if value is None else value_problem(point.quantity, value)
    if problem is not None:
        reason, detail = problem
        raise CodecError(f"{detail} ({reason})")  # the detail names the quantity
    return value


def _decode(point: Point, regs: Sequence[int]) -> Value:
    raw = decode_raw(point, regs)
    if isinstance(raw, float):
        if math.isnan(raw) or math.isinf(raw):
            return None
    elif raw in point.not_available:
        return None
    if point.bits is not None and isinstance(raw, int):
        low, width = point.bits
        raw = (raw >> low) & ((1 << width) - 1)
    return _canonical(point, raw)


def _canonical(point: Point, raw: int | float) -> Value:
    q = quantity(point.quantity)
    if point.enum:
        label = point.enum.get(int(raw))
        if label is None:
            return q.code_for("unknown") if "unknown" in q.labels.values() else None
        if q.kind is not ValueKind.ENUM:
            return _label_value(q, label)
        try:
            return q.code_for(label)
        except KeyError:
            raise CodecError(f"{q.name}: enum label {label!r} is not one of its labels") from None
    if q.kind is ValueKind.BOOL:
        return bool(raw)
    if isinstance(raw, int) and point.scale == 1 and point.offset == 0:
        value: int | float = raw  # exact: 64-bit counters do not survive a float detour
    else:
        value = raw * point.scale + point.offset
    if not math.isfinite(value):
        raise CodecError(f"{point.quantity}: raw {raw!r} scaled by {point.scale:g} is not finite")
    if q.kind in (ValueKind.INTEGER, ValueKind.ENUM):
        return round(value)
    return float(value)


def _label_value(q: Quantity, label: str) -> Value:
    if q.kind is ValueKind.BOOL:
        return label.lower() in ("true", "1", "on", "yes")
    try:
        return int(label) if q.kind is ValueKind.INTEGER else float(label)
    except ValueError:
        raise CodecError(f"{q.name}: enum label {label!r} is not a number") from None


def encode(point: Point, value: Value) -> list[int]:
    """Encode a canonical value into the point's registers (used by simulators and tests)."""
    if point.bits is not None:
        return bit_field_words([point], {point.quantity: value})
    raw = _raw_from_canonical(point, value)
    if point.table.is_bits or (point.type is DataType.BOOL and point.bits is None):
        return [1 if raw else 0]
    fmt = _STRUCT[point.type]
    if point.type in (DataType.F32, DataType.F64):
        packed = struct.pack(fmt, float(raw))
    else:
        packed = struct.pack(fmt, int(raw))
    return _from_bytes(packed, point.order)


def _raw_from_canonical(point: Point, value: Value) -> int | float:
    q = quantity(point.quantity)
    if value is None:
        if not point.not_available:
            raise CodecError(f"{point.quantity}: no 'not available' sentinel to encode None")
        return point.not_available[0]
    if point.enum:
        label = q.labels[int(value)] if q.kind is ValueKind.ENUM else str(value).lower()
        for raw, name in point.enum.items():
            if name == label:
                return raw
        raise CodecError(f"{point.quantity}: value {value!r} has no raw code in this profile")
    if q.kind is ValueKind.BOOL:
        return 1 if value else 0
    if isinstance(value, str):
        raise CodecError(f"{point.quantity}: cannot encode text {value!r}")
    if isinstance(value, int) and point.scale == 1 and point.offset == 0:
        return value  # exact, as in _canonical
    scaled = (float(value) - point.offset) / point.scale
    return scaled if point.type in (DataType.F32, DataType.F64) else round(scaled)


def bit_field_words(points: Sequence[Point], values: dict[str, Value]) -> list[int]:
    """The registers of bit-field points sharing one raw value, in the points' word order."""
    first = points[0]
    raw = bit_field_registers(points, values) & ((1 << (16 * first.count)) - 1)
    return _from_bytes(raw.to_bytes(2 * first.count, "big"), first.order)


def bit_field_registers(points: Sequence[Point], values: dict[str, Value]) -> int:
    """Combine several bit-field points sharing one register into that register's raw value."""
    word = 0
    for p in points:
        if p.bits is None:
            raise CodecError(f"{p.quantity} is not a bit field")
        low, width = p.bits
        raw = int(_raw_from_canonical(p, values[p.quantity]))
        if not 0 <= raw < 1 << width:  # masked, it would read back as another value
            raise CodecError(f"{p.quantity}: raw {raw} does not fit its {width}-bit field")
        word |= raw << low
    return word
