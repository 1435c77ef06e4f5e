"""A Modbus bus: the single owner of its port, polling its devices one request at a time."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from devices.modbus import codec
from devices.modbus.planner import ReadBlock, plan_reads
from devices.model import Action, Event, Reading, Severity, Value
from devices.profiles import Profile, load_profile
from edge.config import DeviceSection, ModbusRtuBus, ModbusTcpBus
from edge.health import DeviceHealth
from edge.modbus_link import ModbusLink, ModbusReadError
from edge.report import ChangeFilter
from edge.rules import ElevatorRules, rules_for

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Reading | Event]], None]


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def mono_ms() -> int:
    """Monotonic time in milliseconds (comparable within one boot)."""
    return int(time.monotonic() * 1000)


@dataclass
class PolledDevice:
    """A device on the bus with its read plan, change filter and health."""

    cfg: DeviceSection
    profile: Profile
    blocks: list[ReadBlock]
    filter: ChangeFilter
    health: DeviceHealth
    timeout: float
    retries: int
    last_values: dict[str, Value] = field(default_factory=dict)
    rules: ElevatorRules | None = None  # edge fault detection, for lifts

    @classmethod
    def build(cls, cfg: DeviceSection) -> PolledDevice:
        """Plan reads and set timing for a configured device."""
        profile = load_profile(cfg.profile)
        return cls(
            cfg=cfg,
            profile=profile,
            blocks=plan_reads(profile.points, max_gap=profile.max_gap),
            filter=ChangeFilter(
                heartbeat=cfg.heartbeat or profile.heartbeat,
                deadbands={p.quantity: p.deadband for p in profile.points if p.deadband},
            ),
            health=DeviceHealth(poll=cfg.poll),
            timeout=cfg.response_timeout or profile.timing.response_timeout,
            retries=cfg.retries if cfg.retries is not None else profile.timing.retries,
            rules=rules_for(cfg.id, profile, cfg.rules),
        )


class ModbusBus:
    """Polls the devices of one bus on a schedule and hands readings to the sink."""

    def __init__(self, cfg: ModbusTcpBus | ModbusRtuBus, devices: Sequence[DeviceSection],
                 sink: Sink) -> None:
        self.cfg = cfg
        self.devices = [PolledDevice.build(d) for d in devices]
        self.sink = sink
        self.counters = {"cycles": 0, "transactions": 0, "overruns": 0, "readings": 0}
        self.link: ModbusLink | None = None
        self.progress = time.monotonic()  # last time the loop made progress (watchdog)

    def device_health(self) -> dict[str, dict[str, object]]:
        """Per-device online state and counters for the health message."""
        return {d.cfg.id: {"online": d.health.online, **d.health.counters} for d in self.devices}

    def _make_link(self) -> ModbusLink:
        if isinstance(self.cfg, ModbusTcpBus):
            return ModbusLink.tcp(self.cfg.host, self.cfg.port)
        c = self.cfg
        return ModbusLink.rtu(c.port, c.baudrate, c.parity, c.bytesize, c.stopbits)

    async def run(self) -> None:
        """Poll until cancelled; an unreachable endpoint is retried, never fatal."""
        self.link = link = self._make_link()
        try:
            await self._connect(link)
            await self._schedule(link)
        finally:
            link.close()

    async def _connect(self, link: ModbusLink) -> None:
        delay = 0.5
        warned = False
        while not await link.open():
            if not warned:
                log.warning("bus %s: cannot open %s; retrying", self.cfg.name, link.describe)
                warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        if warned:
            log.info("bus %s: %s is open", self.cfg.name, link.describe)

    async def _schedule(self, link: ModbusLink) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        queue = [(start + i * 0.001, i) for i in range(len(self.devices))]
        heapq.heapify(queue)
        while queue:
            due, i = heapq.heappop(queue)
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            dev = self.devices[i]
            await self.poll(link, dev)
            self.progress = time.monotonic()
            nxt = due + dev.health.next_interval()
            now = loop.time()
            if nxt < now:  # the bus cannot keep up: skip missed cycles, never burst
                self.counters["overruns"] += 1
                nxt = now + (dev.cfg.poll - (now - due) % dev.cfg.poll)
            heapq.heappush(queue, (nxt, i))

    async def poll(self, link: ModbusLink, dev: PolledDevice) -> None:
        """Read every block of one device and report what changed."""
        ts, mono = now_ms(), mono_ms()
        values: dict[str, Value] = {}
        failure: ModbusReadError | None = None
        for block in dev.blocks:
            self.counters["transactions"] += 1
            try:
                data = await link.read(block.table, block.start, block.count, dev.cfg.unit,
                                       dev.timeout, dev.retries)
            except ModbusReadError as exc:
                failure = exc
                continue
            for p in block.points:
                values[p.quantity] = codec.decode(p, block.slice_for(p, data))
        self._account(dev, values, failure, ts, mono)

    def _account(self, dev: PolledDevice, values: dict[str, Value],
                 failure: ModbusReadError | None, ts: int, mono: int) -> None:
        out: list[Reading | Event] = []
        if not values:
            assert failure is not None
            if dev.health.failure(failure.kind):
                log.warning("device %s (unit %d on %s) is offline: %s", dev.cfg.id,
                            dev.cfg.unit, self.cfg.name, failure)
                dev.filter.forget()
                out.append(Event(dev.cfg.id, ts, "device_offline", Action.RAISE,
                                 Severity.MAJOR, evidence={"error": str(failure)},
                                 message=f"no answer from unit {dev.cfg.unit}", mono=mono))
            self.sink(out)
            return
        if failure is not None:
            dev.health.counters["partial"] += 1
        if dev.health.success():
            log.info("device %s is back online", dev.cfg.id)
            out.append(Event(dev.cfg.id, ts, "device_offline", Action.CLEAR, Severity.MAJOR,
                             message=f"unit {dev.cfg.unit} answers again", mono=mono))
        dev.last_values = values
        if dev.rules is not None:  # faults first: events go ahead of readings
            out.extend(dev.rules.step(values, mono / 1000, ts))
        report = dev.filter.select({q: v for q, v in values.items() if v is not None},
                                   mono / 1000)
        if report:
            out.append(Reading(dev.cfg.id, ts, report, mono=mono))
            self.counters["readings"] += len(report)
        self.sink(out)
