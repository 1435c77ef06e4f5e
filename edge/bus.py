"""A Modbus bus: the single owner of its port, polling its devices one request at a time.

Behaviour with misbehaving devices on a shared line (docs/elevators.md "Bus behaviour"):
- per-device health: offline after a few failed polls (one event), probed with backoff;
- a device that has failed once gets no retries, and offline devices are probed only in the
  time left before the next online device is due (`edge.health.probe_fits`), so a dead or
  slow unit cannot push the healthy ones past their period;
- the link drops stale input before each request and keeps the RTU inter-frame gap;
- a block rejected with exception 2 is split (planner barriers, remembered per device); a
  single point that is still rejected is marked unavailable and re-probed rarely;
- a serial port that disappears (USB adapter unplugged) is reopened when it comes back.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from devices.modbus import codec
from devices.modbus.codec import Table
from devices.modbus.planner import ReadBlock, plan_reads, split_block
from devices.model import Action, Event, Reading, Severity, Value
from devices.profiles import Profile, load_profile
from edge.clock import mono_ms, now_ms
from edge.config import DeviceSection, ModbusRtuBus, ModbusTcpBus
from edge.device_writes import PendingWrite, run_waiting
from edge.health import DeviceHealth, probe_fits, suspect_retries
from edge.modbus_link import ILLEGAL_DATA_ADDRESS, ModbusLink, ModbusReadError
from edge.report import ChangeFilter
from edge.rules import ElevatorRules, rules_for

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Reading | Event]], None]

UNAVAILABLE_PROBE = 300.0  # seconds between re-reads of a point the device rejects
PROBE_MAX_DEFER = 60.0  # an offline probe put off this long runs even on a full bus
REOPEN_EVERY = 1.0  # seconds between attempts to reopen a vanished serial port


def next_slot(due: float, interval: float, period: float, now: float) -> tuple[float, str]:
    """When a device polled for the slot `due` is next due, and whether the bus fell behind.

    On time, the next slot is one interval on. A poll that ended past that slot (a probe or a
    retry held the line) is due at once, so jitter costs no reading ("late"); a bus more than a
    whole interval behind cannot keep up and skips to the next slot on the device's grid
    instead of bursting ("skipped", counted as an overrun).
    """
    nxt = due + interval
    if nxt >= now:
        return nxt, ""
    if now - nxt < interval:
        return nxt, "late"
    return now + (period - (now - due) % period), "skipped"


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
    barriers: frozenset[tuple[Table, int]] = frozenset()  # learnt from exception 2
    unavailable: dict[str, float] = field(default_factory=dict)  # quantity -> next probe
    splits: int = 0
    probe_deferred_since: float | None = None
    undecodable: set[str] = field(default_factory=set)  # points whose last value failed
    decode_errors: int = 0

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

    def replan(self) -> None:
        """Plan the readable points again, honouring the learnt barriers."""
        points = [p for p in self.profile.points if p.quantity not in self.unavailable]
        self.blocks = plan_reads(points, max_gap=self.profile.max_gap, barriers=self.barriers)

    def due_point_probes(self, now: float) -> list[ReadBlock]:
        """Single-point blocks for unavailable points whose rare re-probe is due."""
        return [ReadBlock(p.table, p.address, p.count, (p,)) for p in self.profile.points
                if self.unavailable.get(p.quantity, float("inf")) <= now]

    @property
    def degraded(self) -> bool:
        """Online, but some points cannot be read."""
        return self.health.online and bool(self.unavailable)


def sub_blocks(block: ReadBlock, barriers: frozenset[tuple[Table, int]],
               max_gap: int) -> list[ReadBlock]:
    """The blocks that replace a rejected `block` once `barriers` apply (pure)."""
    return plan_reads(block.points, max_gap=max_gap, barriers=barriers)


class ModbusBus:
    """Polls the devices of one bus on a schedule and hands readings to the sink."""

    def __init__(self, cfg: ModbusTcpBus | ModbusRtuBus, devices: Sequence[DeviceSection],
                 sink: Sink) -> None:
        self.cfg = cfg
        self.devices = [PolledDevice.build(d) for d in devices]
        self.sink = sink
        self.counters = {"cycles": 0, "transactions": 0, "overruns": 0, "late_polls": 0,
                         "readings": 0, "deferred_probes": 0, "splits": 0, "reopens": 0,
                         "decode_errors": 0, "writes": 0}
        self.link: ModbusLink | None = None
        self.progress = time.monotonic()  # last time the loop made progress (watchdog)
        self._reopen_warned = False
        self._finishing = False
        self._in_poll = False
        self.writes: dict[str, list[PendingWrite]] = {}  # device id -> writes waiting
        self.grid: float | None = None  # loop time the poll grid started from

    @property
    def poll_period(self) -> float | None:
        """The shortest poll period of the bus's devices (its grid's step)."""
        return min((d.cfg.poll for d in self.devices), default=None)

    def submit_write(self, device_id: str, pending: PendingWrite) -> bool:
        """Queue a write for after the device's next poll; False for a device not on this bus."""
        if not any(d.cfg.id == device_id for d in self.devices):
            return False
        self.writes.setdefault(device_id, []).append(pending)
        return True

    def device_health(self) -> dict[str, dict[str, object]]:
        """Per-device online state and counters for the health message."""
        return {d.cfg.id: {"online": d.health.online, "degraded": d.degraded,
                           **d.health.counters, "splits": d.splits,
                           "decode_errors": d.decode_errors,
                           # scalars only (wire contract): names comma-separated
                           "unavailable_points": len(d.unavailable),
                           "unavailable": ",".join(sorted(d.unavailable))}
                for d in self.devices}

    def inter_frame_gap(self) -> float:
        """Silent interval between frames on this bus (RTU only), from the profiles' timing."""
        if isinstance(self.cfg, ModbusTcpBus) or not self.devices:
            return 0.0
        bits = 1 + self.cfg.bytesize + (0 if self.cfg.parity == "N" else 1) + self.cfg.stopbits
        return max(d.profile.timing.inter_frame_gap(self.cfg.baudrate, bits)
                   for d in self.devices)

    def _make_link(self) -> ModbusLink:
        if isinstance(self.cfg, ModbusTcpBus):
            return ModbusLink.tcp(self.cfg.host, self.cfg.port)
        c = self.cfg
        return ModbusLink.rtu(c.port, c.baudrate, c.parity, c.bytesize, c.stopbits,
                              inter_frame_gap=self.inter_frame_gap())

    def finish(self) -> bool:
        """Stop after the poll in progress (a graceful stop), so a value a device has already
        answered is handed to the sink rather than dropped by cancelling the read. True when a
        poll is in progress: run() then returns once it is done; otherwise nothing is in flight
        and the caller may cancel run() at once."""
        self._finishing = True
        return self._in_poll

    async def run(self) -> None:
        """Poll until cancelled or finished; an unreachable endpoint is retried, never fatal."""
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
        self.grid = start = loop.time()
        queue = [(start + i * 0.001, i) for i in range(len(self.devices))]
        heapq.heapify(queue)
        while queue and not self._finishing:
            due, i = queue[0]
            delay = due - loop.time()
            if delay > 0:
                lost = self._port_lost(link)
                await asyncio.sleep(min(delay, REOPEN_EVERY) if lost else delay)
                if lost and await self._reopen(link):  # the line is back: probe at once
                    now = loop.time()
                    queue[:] = [(d if self.devices[j].health.online else min(d, now), j)
                                for d, j in queue]
                    heapq.heapify(queue)
                continue
            heapq.heappop(queue)
            dev = self.devices[i]
            if not dev.health.online and not self._probe_fits(dev, queue, loop.time()):
                self.counters["deferred_probes"] += 1
                # after the next online poll (ties would spin: the probe must come second)
                heapq.heappush(queue, ((self._next_online_due(queue) or due) + 0.001, i))
                continue
            dev.probe_deferred_since = None
            self._in_poll = True
            try:
                await self.poll(link, dev)
                if self.writes.get(dev.cfg.id):  # between cycles: never inside a poll
                    self.counters["writes"] += await run_waiting(
                        link, dev.cfg.unit, dev.timeout, self.writes[dev.cfg.id])
            finally:
                self._in_poll = False
            self.counters["cycles"] += 1
            self.progress = time.monotonic()
            nxt, late = next_slot(due, dev.health.next_interval(), dev.cfg.poll, loop.time())
            if late:
                self.counters["overruns" if late == "skipped" else "late_polls"] += 1
            heapq.heappush(queue, (nxt, i))

    def _next_online_due(self, queue: list[tuple[float, int]]) -> float | None:
        dues = [due for due, j in queue if self.devices[j].health.online]
        return min(dues) if dues else None

    def _probe_fits(self, dev: PolledDevice, queue: list[tuple[float, int]],
                    now: float) -> bool:
        if dev.probe_deferred_since is None:
            dev.probe_deferred_since = now
        cost = dev.timeout + self.inter_frame_gap()  # a probe stops at its first timeout
        return probe_fits(now, self._next_online_due(queue), cost, dev.probe_deferred_since,
                          PROBE_MAX_DEFER)

    def _port_lost(self, link: ModbusLink) -> bool:
        """A serial port that vanished (TCP links are left to pymodbus' own reconnect)."""
        return not isinstance(self.cfg, ModbusTcpBus) and not link.connected

    async def _reopen(self, link: ModbusLink) -> bool:
        """Try once to reopen a vanished serial port (USB-RS485 adapter replugged).

        One attempt per REOPEN_EVERY, never a blocking loop: while the port is missing the
        devices keep failing their polls, so they go offline (and come back) as for any fault.
        """
        if not self._reopen_warned:  # once per loss
            log.warning("bus %s: %s is gone; reopening", self.cfg.name, link.describe)
            self._reopen_warned = True
        self.counters["reopens"] += 1
        link.close()
        if not await link.open():
            return False
        log.info("bus %s: %s is open again", self.cfg.name, link.describe)
        self._reopen_warned = False
        return True

    async def poll(self, link: ModbusLink, dev: PolledDevice) -> None:
        """Read every block of one device and report what changed."""
        ts, mono = now_ms(), mono_ms()
        values: dict[str, Value] = {}
        failure: ModbusReadError | None = None
        pending = [*dev.blocks, *dev.due_point_probes(time.monotonic())]
        answered = False  # some block was read (its points may still fail to decode)
        retries = suspect_retries(dev.retries, dev.health.failures)
        budget = 4 * len(dev.profile.points) + 4  # bounds the splitting within one poll
        while pending and budget > 0:
            block = pending.pop(0)
            budget -= 1
            self.counters["transactions"] += 1
            try:
                data = await link.read(block.table, block.start, block.count, dev.cfg.unit,
                                       dev.timeout, retries)
            except ModbusReadError as exc:
                if exc.exception_code == ILLEGAL_DATA_ADDRESS:
                    pending[:0] = self._rejected(dev, block)
                    if values or pending:
                        continue
                failure = exc
                if exc.kind == "timeout" and not dev.health.online:
                    break  # an offline device's probe costs one timeout, not one per block
                continue
            answered = True
            self._readable(dev, block)
            for p in block.points:
                self._decode(dev, p, block.slice_for(p, data), values)
        self._account(dev, values, failure, ts, mono, answered)

    def _decode(self, dev: PolledDevice, point: codec.Point, regs: Sequence[int],
                values: dict[str, Value]) -> None:
        """Decode one point into `values`; a value the decoder cannot honour is left out,
        counted, and logged once per device and point (and once when it decodes again)."""
        try:
            values[point.quantity] = codec.decode(point, regs)
        except codec.CodecError as exc:
            self.counters["decode_errors"] += 1
            dev.decode_errors += 1
            if point.quantity not in dev.undecodable:
                dev.undecodable.add(point.quantity)
                log.warning("device %s: %s (register %d) gives %s, which cannot be decoded: %s;"
                            " leaving it out and counting further ones", dev.cfg.id,
                            point.quantity, point.address, list(regs), exc)
            return
        if point.quantity in dev.undecodable:
            dev.undecodable.discard(point.quantity)
            log.info("device %s: %s decodes again", dev.cfg.id, point.quantity)

    def _rejected(self, dev: PolledDevice, block: ReadBlock) -> list[ReadBlock]:
        """A block answered with exception 2: split it, or give up on its one point."""
        barrier, could_split = split_block(block)
        if could_split:
            dev.barriers |= barrier
            dev.splits += 1
            self.counters["splits"] += 1
            log.info("device %s rejects registers %d-%d (exception 2); reading them in parts",
                     dev.cfg.id, block.start, block.start + block.count - 1)
            dev.replan()
            return sub_blocks(block, dev.barriers, dev.profile.max_gap)
        now = time.monotonic()
        for p in block.points:
            if p.quantity not in dev.unavailable:
                log.warning("device %s: %s (register %d) is not readable; probing every %gs",
                            dev.cfg.id, p.quantity, p.address, UNAVAILABLE_PROBE)
            dev.unavailable[p.quantity] = now + UNAVAILABLE_PROBE
        dev.replan()
        return []

    @staticmethod
    def _readable(dev: PolledDevice, block: ReadBlock) -> None:
        back = [p.quantity for p in block.points if p.quantity in dev.unavailable]
        for quantity in back:
            del dev.unavailable[quantity]
            log.info("device %s: %s is readable again", dev.cfg.id, quantity)
        if back:
            dev.replan()

    def _account(self, dev: PolledDevice, values: dict[str, Value],
                 failure: ModbusReadError | None, ts: int, mono: int,
                 answered: bool = True) -> None:
        out: list[Reading | Event] = []
        if not values and not answered:
            if failure is None:  # every point rejected: nothing left to read
                failure = ModbusReadError("exception", "every point rejected",
                                          ILLEGAL_DATA_ADDRESS)
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


__all__ = ["ModbusBus", "PolledDevice", "sub_blocks"]
