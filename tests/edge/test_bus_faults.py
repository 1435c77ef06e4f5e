"""The bus on a shared simulated RS-485 line with dead, slow, rejecting units and a babbler.

The real bus code and pymodbus talk over a pty null-modem to the real lift simulator, whose
units misbehave as configured (STYLE.md "Tests": fakes that run the real code).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from devices.model import Event, Reading
from devices.sim.elevator import ElevatorBank, UnitBehaviour, idle_values, make_bank, serve_rtu
from devices.sim.ptylink import PtyLink
from edge.bus import ModbusBus
from edge.config import DeviceSection, ModbusRtuBus

pytestmark = pytest.mark.timeout(60)

REJECTED = {"running_hours", "speed", "power_supply"}  # registers 10-13


class Collected:
    """Everything the bus handed to its sink."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.readings: list[Reading] = []

    def __call__(self, items: Sequence[Reading | Event]) -> None:
        for item in items:
            (self.events if isinstance(item, Event) else self.readings).append(item)

    def values(self, device: str) -> dict[str, object]:
        out: dict[str, object] = {}
        for r in self.readings:
            if r.device == device:
                out.update(r.values)
        return out


async def until(condition: Callable[[], object], seconds: float, bus: ModbusBus) -> None:
    """Wait for `condition`, failing with the bus's health after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, (bus.device_health(), bus.counters)
        await asyncio.sleep(0.02)


def make_bus(path: str, units: Sequence[int], sink: Collected, poll: float = 0.5) -> ModbusBus:
    bus_cfg = ModbusRtuBus(name="line1", type="modbus-rtu", port=path)
    devices = [DeviceSection(id=f"lift{u}", bus="line1", profile="elevator-gbt24476", unit=u,
                             poll=poll) for u in units]
    return ModbusBus(bus_cfg, devices, sink)


@contextlib.asynccontextmanager
async def simulated_line(bank: ElevatorBank, tmp: Path) -> AsyncIterator[PtyLink]:
    """A pty line with the bank serving on one end and a stable symlink to the other."""
    link = PtyLink().open()
    link.link(tmp / "ttyLIFTS")
    started = asyncio.Event()
    server = asyncio.create_task(serve_rtu(bank, link.a_path, started=started))
    await asyncio.wait_for(started.wait(), 5)
    try:
        yield link
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        link.close()


def test_misbehaving_units_do_not_stall_or_corrupt_the_healthy_ones(tmp_path: Path) -> None:
    units = [1, 2, 3, 4, 5]
    sink = Collected()

    async def main() -> ModbusBus:
        bank = make_bank(units, static=True)
        bank.behaviours = {2: UnitBehaviour(dead=True), 3: UnitBehaviour(delay=0.15),
                           4: UnitBehaviour(reject=(10, 13))}
        async with simulated_line(bank, tmp_path) as link:
            link.start_babble(0.7, seed=1)
            bus = make_bus(str(tmp_path / "ttyLIFTS"), units, sink, poll=0.5)
            task = asyncio.create_task(bus.run())
            await until(lambda: bus.devices[1].health.online is False and  # the dead unit
                        set(bus.devices[3].unavailable) == REJECTED, 20, bus)  # split done

            def ok() -> dict[str, int]:
                return {d.cfg.id: d.health.counters["ok"] for d in bus.devices}

            # Under noise every burst that lands in a transaction costs a response timeout
            # (0.3 s of a 0.5 s cycle), so slots are lost at random: the healthy units must
            # keep being read, but their rate is the line's, not the bus's, to promise.
            before = ok()
            await asyncio.sleep(4.0)
            noisy = {unit: n - before[unit] for unit, n in ok().items()}
            assert link.bytes_injected > 0
            link.stop_babble()
            # On a quiet line only the dead, slow and rejecting units are left: they must cost
            # the healthy ones nothing, so each is read in every slot of its 0.5 s period.
            await asyncio.sleep(0.5)  # a transaction hit by the last burst has timed out
            before = ok()
            await asyncio.sleep(4.0)
            quiet = {unit: n - before[unit] for unit, n in ok().items()}
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for unit in (1, 3, 4, 5):
                name = f"lift{unit}"
                assert noisy[name] >= 3, (noisy, bus.device_health(), bus.counters)
                assert quiet[name] >= 7, (quiet, bus.device_health(), bus.counters)  # 8 slots
            return bus

    bus = asyncio.run(main())
    health = bus.device_health()
    for unit in (1, 3, 5):  # correct values
        h = health[f"lift{unit}"]
        assert h["online"] is True, h
        expected = idle_values(unit)
        assert all(expected[q] == v for q, v in sink.values(f"lift{unit}").items()
                   if not isinstance(v, float)), unit
    assert health["lift2"]["online"] is False
    raised = [(e.device, e.kind, e.action.value) for e in sink.events]
    assert ("lift2", "device_offline", "raise") in raised
    assert not [r for r in raised if r[0] != "lift2" and r[1] == "device_offline"]
    h4 = health["lift4"]
    assert h4["online"] is True and h4["degraded"] is True, h4
    assert set(str(h4["unavailable"]).split(",")) == REJECTED
    got4 = sink.values("lift4")
    assert REJECTED.isdisjoint(got4) and got4["trip_count"] == idle_values(4)["trip_count"]
    assert bus.counters["splits"] >= 2
    assert bus.link is not None and bus.link.inter_frame_gap == pytest.approx(3.5 * 10 / 9600)


def test_a_replugged_serial_adapter_is_reopened(tmp_path: Path) -> None:
    sink = Collected()

    async def main() -> ModbusBus:
        bank = make_bank([1], static=True)
        bus = make_bus(str(tmp_path / "ttyLIFTS"), [1], sink, poll=0.2)
        task = asyncio.create_task(bus.run())
        health = bus.devices[0].health
        async with simulated_line(bank, tmp_path):
            await until(lambda: health.counters["ok"] >= 3, 10, bus)
        (tmp_path / "ttyLIFTS").unlink()  # unplugged: the port and its path are gone
        ok_before = health.counters["ok"]
        await until(lambda: health.online is False, 10, bus)
        assert bus.counters["reopens"] >= 1, bus.counters
        async with simulated_line(bank, tmp_path):  # plugged in again (a new pty)
            await until(lambda: health.online and health.counters["ok"] > ok_before + 5, 15,
                        bus)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return bus

    asyncio.run(main())
    kinds = [(e.kind, e.action.value) for e in sink.events]
    assert kinds[:2] == [("device_offline", "raise"), ("device_offline", "clear")], kinds


def test_finish_completes_the_read_in_progress(tmp_path: Path) -> None:
    """A graceful stop (the agent's, before an update switch) keeps an answered value."""
    sink = Collected()

    async def main() -> tuple[int, bool]:
        bank = make_bank([1], static=True)
        bank.behaviours = {1: UnitBehaviour(delay=0.2)}  # answers late, within the 300 ms timeout
        async with simulated_line(bank, tmp_path) as link:
            del link
            bus = make_bus(str(tmp_path / "ttyLIFTS"), [1], sink, poll=60.0)
            run = asyncio.create_task(bus.run())
            for _ in range(200):  # until the first request is on the line
                if bank.reads:
                    break
                await asyncio.sleep(0.01)
            assert bank.reads, "the bus never asked"
            assert bus.finish()  # a read is in progress
            await asyncio.wait_for(run, 10)  # returns by itself, not cancelled
            return bank.reads, run.cancelled()

    reads, cancelled = asyncio.run(main())
    assert not cancelled
    assert reads >= 1 and sink.values("lift1"), "the answered read was dropped"
