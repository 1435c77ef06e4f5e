"""A device answering registers the decoder cannot honour: those points yield no value, a
counter and one log line per device and point; its other points and the task group go on.

The real bus polls a real pymodbus TCP server whose registers hold a u64 beyond what a reading
carries and an f64 that overflows once scaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from citygate.rig import free_port
from devices.model import Event, Reading
from edge.bus import ModbusBus
from edge.config import DeviceSection, ModbusTcpBus

pytestmark = pytest.mark.timeout(60)

PROFILE = """
name = "choking-lift"
kind = "elevator"
protocol = "modbus"

[points.trip_count]  # u64 0xFFFF_FFFF_FFFF_FFFF: beyond what a reading carries
address = 0
type = "u64"

[points.running_hours]  # f64 max * 10: not finite
address = 4
type = "f64"
scale = 10

[points.speed]  # 150 * 0.01 = 1.5 m/s: a good neighbour in the same read
address = 8
scale = 0.01
"""
F64_MAX = [0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF]


async def serve(port: int, registers: list[int]) -> None:
    """A Modbus TCP device (unit 1) with fixed holding registers from address 0."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
    regs = [SimData(address=0, values=registers, datatype=DataType.REGISTERS)]
    device = SimDevice(id=1, simdata=(list(bits), list(bits), regs, regs))
    server = ModbusTcpServer([device], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await server.shutdown()


def test_undecodable_points_are_left_out_counted_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    profile = tmp_path / "choking-lift.toml"
    profile.write_text(PROFILE, encoding="utf-8")
    readings: list[Reading] = []

    def sink(items: Sequence[Reading | Event]) -> None:
        readings.extend(i for i in items if isinstance(i, Reading))

    async def main() -> ModbusBus:
        port = free_port()
        bus = ModbusBus(ModbusTcpBus(name="lifts", type="modbus-tcp", host="127.0.0.1",
                                     port=port),
                        [DeviceSection(id="lift-1", bus="lifts", profile=str(profile),
                                       poll=0.05, heartbeat=0.0)], sink)
        async with asyncio.TaskGroup() as tg:  # as in the agent: one failing task ends all
            device = tg.create_task(serve(port, [0xFFFF] * 4 + F64_MAX + [150]), name="device")
            await asyncio.sleep(0.3)
            poller = tg.create_task(bus.run(), name="bus-lifts")
            async with asyncio.timeout(20):
                while bus.devices[0].health.counters["ok"] < 5:  # noqa: ASYNC110 - a counter
                    await asyncio.sleep(0.02)
            assert not poller.done()
            bus.finish()
            await asyncio.wait_for(poller, 5)
            device.cancel()
        return bus

    with caplog.at_level(logging.INFO, logger="edge.bus"):
        bus = asyncio.run(main())
    polls = bus.devices[0].health.counters["ok"]
    assert bus.devices[0].health.counters["polls"] == polls  # every poll was answered
    assert bus.counters["decode_errors"] == 2 * polls
    assert bus.device_health()["lift-1"]["decode_errors"] == 2 * polls
    assert bus.device_health()["lift-1"]["online"] is True
    assert readings and all(r.values == {"speed": 1.5} for r in readings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("device lift-1: trip_count (register 0) gives [65535, 65535,"
                                  " 65535, 65535], which cannot be decoded: trip_count:"
                                  " 18446744073709551615 is beyond ±1e+15 (out_of_range)")
    assert warnings[1].startswith("device lift-1: running_hours (register 4) gives [32751,"
                                  " 65535, 65535, 65535], which cannot be decoded")
