"""Modbus writes, sans-IO: check a canonical value against a point's write rules and encode it.

The gateway runs `plan_write` just before the transaction and the collector runs it when the
command is submitted, so a value out of range or a point that is not writable is refused with
the same reason code at both ends (`WriteRefused.reason`, one of WRITE_REFUSALS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from devices.contract import value_problem
from devices.modbus.codec import CodecError, Point, Table, WriteSpec, encode
from devices.model import Value
from devices.quantities import ValueKind, quantity

# Why a write is refused before it reaches the bus (stable codes, on the wire and in the API).
WRITE_REFUSALS = frozenset({"unknown_point", "not_writable", "bad_value", "out_of_range",
                            "not_allowed"})
FUNCTIONS = {5: Table.COIL, 15: Table.COIL, 6: Table.HOLDING, 16: Table.HOLDING}


class WriteRefused(ValueError):
    """A write that must not be sent; `reason` is one of WRITE_REFUSALS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class WritePlan:
    """One write transaction: function code, first address and the words (or bits) to send."""

    point: Point
    value: Value
    function: int
    address: int
    words: tuple[int, ...]


def spec_problems(point: Point) -> list[tuple[str, str]]:
    """What is wrong with a point's write rules, as (key, problem) pairs (for the loader)."""
    spec = point.write
    if spec is None:
        return []
    table = FUNCTIONS.get(spec.function)
    if table is None:
        return [("write.function", f"{spec.function} is not 5, 6, 15 or 16")]
    if table is not point.table:
        return [("write.function", f"function {spec.function} writes {table.value} "
                 f"{'coils' if table.is_bits else 'registers'}, but the point is in the "
                 f"{point.table.value} table")]
    if spec.function == 6 and point.count != 1:
        return [("write.function", f"function 6 writes one register; {point.type.value} takes"
                 f" {point.count}: use 16")]
    if point.bits is not None:
        return [("write", "a bit field shares its register with other points; it cannot be "
                 "written alone")]
    if (spec.minimum is not None and spec.maximum is not None
            and spec.minimum > spec.maximum):
        return [("write.min", f"{spec.minimum} is above max {spec.maximum}")]
    return []


def plan_write(point: Point | None, name: str, value: object) -> WritePlan:
    """The transaction writing `value` to `point`; WriteRefused when it must not be sent."""
    if point is None:
        raise WriteRefused("unknown_point", f"the device has no point {name!r}")
    spec = point.write
    if spec is None:
        raise WriteRefused("not_writable", f"{name} is read-only in the device's profile")
    problem = value_problem(name, value)
    if problem is not None or value is None:
        raise WriteRefused("bad_value", problem[1] if problem else f"{name} needs a value")
    _check_bounds(spec, name, value)  # type: ignore[arg-type]
    try:
        words = encode(point, value)  # type: ignore[arg-type]
    except (CodecError, OverflowError, ValueError) as exc:
        raise WriteRefused("out_of_range", f"{name}={value!r} does not fit the register: "
                           f"{exc}") from None
    return WritePlan(point, value, spec.function, point.address, tuple(words))  # type: ignore[arg-type]


def _check_bounds(spec: WriteSpec, name: str, value: Value) -> None:
    kind = quantity(name).kind
    if spec.allowed and not any(_same(value, a, kind) for a in spec.allowed):
        raise WriteRefused("not_allowed", f"{name}={value!r} is not one of "
                           f"{list(spec.allowed)}")
    if kind in (ValueKind.BOOL, ValueKind.ENUM) or not isinstance(value, int | float):
        return
    if spec.minimum is not None and value < spec.minimum:
        raise WriteRefused("out_of_range", f"{name}={value!r} is below {spec.minimum:g}")
    if spec.maximum is not None and value > spec.maximum:
        raise WriteRefused("out_of_range", f"{name}={value!r} is above {spec.maximum:g}")


def _same(value: Value, allowed: object, kind: ValueKind) -> bool:
    if kind is ValueKind.BOOL:
        return value is allowed
    if isinstance(value, bool) or isinstance(allowed, bool):
        return False
    return isinstance(value, int | float) and isinstance(allowed, int | float) \
        and math.isclose(value, allowed, rel_tol=0, abs_tol=1e-9)


def read_back_matches(plan: WritePlan, read: Value) -> bool:
    """Whether the value read after the write is the value written (within one raw step)."""
    if read is None:
        return False
    if isinstance(plan.value, bool) or isinstance(read, bool):
        return read == plan.value
    if isinstance(read, int | float) and isinstance(plan.value, int | float):
        return abs(read - plan.value) <= abs(plan.point.scale) / 2 + 1e-9
    return False
