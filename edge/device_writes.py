"""Writes to Modbus devices, run by the bus that owns the line, between two polls.

The poller promises one transaction at a time on a line and one read of a device per cycle;
a write therefore never interleaves with a poll: the bus runs the writes waiting for a device
right after that device's poll, then reads the point back and compares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devices.commands import DONE, EXPIRED, FAILED, CommandResult
from devices.modbus import codec
from devices.modbus.writes import WritePlan, read_back_matches
from edge.clock import now_ms

if TYPE_CHECKING:  # a gateway without Modbus buses never loads the Modbus link
    from edge.modbus_link import ModbusLink

log = logging.getLogger(__name__)


@dataclass
class PendingWrite:
    """A write waiting for its device's turn; `start` is asked (and must say yes) just before
    the transaction: it checks the expiry and records that the write is under way."""

    plan: WritePlan
    start: Callable[[int], bool]
    done: asyncio.Future[CommandResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


async def run_write(link: ModbusLink, unit: int, timeout: float,
                    pending: PendingWrite) -> CommandResult:
    """Write, read back and compare; the result of the command (never raises for the bus)."""
    from edge.modbus_link import ModbusReadError

    plan = pending.plan
    if not pending.start(now_ms()):
        return CommandResult(EXPIRED, now_ms())
    try:
        await link.write(plan.function, plan.address, list(plan.words), unit, timeout)
    except ModbusReadError as exc:
        return CommandResult(FAILED, now_ms(), reason="device_error",
                             message=f"write of {plan.point.quantity} not confirmed: {exc}")
    p = plan.point
    try:
        regs = await link.read(p.table, p.address, p.count, unit, timeout, 1)
        value = codec.decode(p, regs)
    except (ModbusReadError, codec.CodecError) as exc:
        return CommandResult(FAILED, now_ms(), reason="device_error",
                             message=f"written, but the read-back failed: {exc}")
    if not read_back_matches(plan, value):
        return CommandResult(FAILED, now_ms(), value=value, reason="read_back_mismatch",
                             message=f"wrote {plan.value!r}, read back {value!r}")
    return CommandResult(DONE, now_ms(), value=value)


async def run_waiting(link: ModbusLink, unit: int, timeout: float,
                      queue: list[PendingWrite]) -> int:
    """Run every write waiting for one device, in arrival order; return how many ran."""
    ran = 0
    while queue:
        pending = queue.pop(0)
        if pending.done.done():  # its waiter gave up
            continue
        try:
            result = await run_write(link, unit, timeout, pending)
        except Exception as exc:  # the poll loop must survive any write
            log.exception("write to unit %d failed unexpectedly", unit)
            result = CommandResult(FAILED, now_ms(), reason="device_error", message=str(exc))
        pending.done.set_result(result)
        ran += 1
    return ran
