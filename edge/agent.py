"""The gateway agent: sources feed the outbox, the forwarder drains it to the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from devices import contract
from devices.commands import COMMAND_NAME
from devices.model import Event, Reading
from devices.process import process_figures
from edge.clock import clock_synced, mono_ms, now_ms
from edge.command_book import CommandBook, CommandBookError
from edge.commands import CommandRunner
from edge.config import GatewayConfig
from edge.grid import grid_anchor, next_tick
from edge.metrics import MetricsServer
from edge.outbox import Outbox, OutboxError, Pending, Quota
from edge.pacing import TokenBucket
from edge.sources import Source, build_source
from edge.uplink import Uplink
from edge.watchdog import (
    DEFAULT_TICK,
    LoopState,
    Notifier,
    StallTracker,
    source_limit,
    stalled,
    watchdog_period,
)

log = logging.getLogger(__name__)


def installed_version() -> str:
    """The version of the installed citygate distribution (what an update changes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("citygate")
    except PackageNotFoundError:
        return "0.0.0+unknown"


VERSION = installed_version()
FINISH_POLLS_S = 5.0  # longest a stop waits for the reads in progress
DISK_CHECK_INTERVAL = 10.0  # seconds between free-space checks of the data directory
WRITER_TICK = 5.0  # the writer wakes at least this often, so the watchdog sees it alive


def boot_id() -> str:
    """The kernel's boot id: monotonic times compare only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def free_disk_bytes(path: Path) -> int | None:
    """Bytes available to this user on the file system holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class Agent:
    """One gateway: its sources, its outbox and its uplink, run as one task group."""

    def __init__(self, cfg: GatewayConfig, *, password: str | None = None) -> None:
        self.cfg = cfg
        self.gateway = cfg.gateway.id
        self.boot = boot_id()
        ob = cfg.outbox
        self.outbox = Outbox(cfg.outbox_path, synchronous=ob.synchronous, max_batch=ob.max_batch,
                             quota=Quota(ob.max_bytes, int(ob.max_age * 1000), ob.min_free_disk))
        self.outbox.owner = self.gateway
        self.outbox.boot = self.boot
        self.uplink = Uplink(self.gateway, cfg.uplink, version=VERSION, boot=self.boot,
                             on_ack=self._on_ack, on_command=self._on_command,
                             password=password if password is not None else self._password(),
                             inventory=self._inventory())
        self.buses: list[Source] = [
            build_source(b, [d for d in cfg.devices if d.bus == b.name], self.submit)
            for b in cfg.buses]
        self.commands = CommandRunner(self.gateway, CommandBook(
            cfg.outbox_path.parent / "commands.sqlite"), self.buses, self._publish_reply,
            clock_synced=lambda: self.outbox.synced)
        self.backlog = TokenBucket(rate=ob.backlog_rate, burst=max(ob.backlog_rate, ob.max_batch))
        self._urgent = asyncio.Event()
        self._wake = asyncio.Event()
        self._flush_at: asyncio.TimerHandle | None = None
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq, for this connection
        self._generation = -1
        self._write_failures = 0
        self.started = asyncio.Event()
        self.notifier = Notifier.from_env()
        self.stalls = StallTracker()
        # Progress stamps (monotonic seconds) of the agent's own loops, for the watchdog.
        self.progress: dict[str, float] = {"outbox-writer": time.monotonic(),
                                           "forwarder": time.monotonic(),
                                           "uplink": time.monotonic()}
        self._forwarder_waiting = False  # waiting for a broker or a collector is not a hang
        self._uplink_attempts = -1
        self.metrics: MetricsServer | None = None

    def _inventory(self) -> dict[str, dict[str, str]]:
        from devices.profiles import load_profile

        return {d.id: {"kind": load_profile(d.profile).kind, "profile": d.profile}
                for d in self.cfg.devices}

    def _password(self) -> str | None:
        pf = self.cfg.uplink.password_file
        if pf is None:
            return self.cfg.uplink.password
        return Path(pf).read_text(encoding="utf-8").strip()

    def submit(self, items: Sequence[Reading | Event]) -> None:
        """Accept readings/events from a source: sealed, journaled and sent within the send
        delay (with a durability window of 0: committed at once, then sent)."""
        if not items:
            return
        self.outbox.add(items)
        ob = self.cfg.outbox
        if not ob.durability_window or self.outbox.incidents:
            self._urgent.set()
        if ob.durability_window and self._flush_at is None:
            delay = min(ob.send_delay, ob.durability_window)
            self._flush_at = asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self) -> None:
        """Seal what the sources gave since the last flush; wake the forwarder to send it."""
        self._flush_at = None
        if self.outbox.is_open and self.outbox.flush():
            self._wake.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or the task is cancelled); everything is closed on exit."""
        try:
            self.outbox.open()
        except OutboxError as exc:  # the service manager restarts us; say why, once
            log.critical("gateway %s cannot start: %s", self.gateway, exc)
            raise
        self._check_clock()
        try:
            self.commands.book.open()
        except CommandBookError as exc:  # commands off; data collection goes on
            log.error("device commands are off: %s", exc)
        try:
            await self._start_metrics()
            async with asyncio.TaskGroup() as tg:
                polls = [tg.create_task(b.run(), name=f"bus-{c.name}")
                         for b, c in zip(self.buses, self.cfg.buses, strict=True)]
                tasks = [
                    tg.create_task(self.uplink.run(), name="uplink"),
                    tg.create_task(self._writer(), name="outbox-writer"),
                    tg.create_task(self._forwarder(), name="forwarder"),
                    tg.create_task(self._health(), name="health"),
                    tg.create_task(self._watchdog(), name="watchdog"),
                    *polls,
                    *([tg.create_task(self.commands.run(), name="commands")]
                      if self.commands.book.is_open else []),
                ]
                self.started.set()
                self.notifier.notify(READY=1, STATUS=f"gateway {self.gateway} running")
                await (stop.wait() if stop is not None else asyncio.Event().wait())
                await self._finish_polls(polls)
                for t in tasks:
                    t.cancel()
        finally:
            self.notifier.close()
            if self.metrics is not None:
                await self.metrics.close()
            self.commands.book.close()
            self._close_outbox()

    def _close_outbox(self) -> None:
        """Commit and close; what a refusing disk kept in memory is lost with the process."""
        try:
            self.outbox.close()
        except (OutboxError, sqlite3.Error) as exc:
            log.error("outbox: the last commit failed at stop (%s); %d readings held in "
                      "memory are lost", exc, self.outbox.unwritten_readings)

    async def _finish_polls(self, polls: list[asyncio.Task[None]]) -> None:
        """Let pollers complete the read in progress before the stop cancels them (a bounded
        wait): a value a device already answered reaches the outbox instead of being lost."""
        busy = [task for bus, task in zip(self.buses, polls, strict=True)
                if getattr(bus, "finish", lambda: False)()]  # event-driven: nothing in flight
        if busy:
            await asyncio.wait(busy, timeout=FINISH_POLLS_S)

    async def _start_metrics(self) -> None:
        if not self.cfg.metrics.listen:
            return
        server = MetricsServer(self.cfg.metrics.listen, self.health)
        try:
            self.metrics = await server.start()
        except OSError as exc:  # observability must never stop data collection
            log.error("metrics endpoint %s not available: %s", self.cfg.metrics.listen, exc)

    def _check_clock(self) -> bool:
        synced = clock_synced(self.cfg.gateway.clock)
        if synced != self.outbox.synced or not synced:
            if synced != self.outbox.synced:
                log.log(logging.INFO if synced else logging.WARNING,
                        "wall clock is %s", "synchronised" if synced else
                        "NOT synchronised: the collector will place readings on its clock")
            self.outbox.synced = synced
        return synced

    # --- outbox writer --------------------------------------------------------------------------

    def commit_anchor(self, started: float) -> float:
        """Where commit ticks are anchored: mid-way between polls on the earliest poll grid."""
        grids = [(g, getattr(bus, "poll_period", None)) for bus in self.buses
                 if (g := getattr(bus, "grid", None)) is not None]
        origin, poll = min(grids, key=lambda x: x[0]) if grids else (started, None)
        return grid_anchor(origin, poll)

    async def _writer(self) -> None:
        window = self.cfg.outbox.durability_window
        loop = asyncio.get_running_loop()
        after = started = loop.time()  # the last tick reached
        next_disk_check = 0.0
        try:
            while True:
                target = next_tick(self.commit_anchor(started), window, after) if window \
                    else loop.time() + WRITER_TICK
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(),
                                           min(max(0.0, target - loop.time()), WRITER_TICK))
                if loop.time() >= target - 0.001:  # on the grid: the next tick is one on
                    after = max(target, loop.time())
                self._urgent.clear()
                self.progress["outbox-writer"] = time.monotonic()
                now = time.monotonic()
                if now >= next_disk_check:
                    next_disk_check = now + DISK_CHECK_INTERVAL
                    self._check_clock()
                    self._check_disk()
                self._commit()
        finally:
            with contextlib.suppress(sqlite3.Error, OutboxError):
                self.outbox.commit()

    def _check_disk(self) -> None:
        """Evict by the quotas (free space included), and take over moved-aside files."""
        with contextlib.suppress(sqlite3.Error, OutboxError):  # the commit reports failures
            if self.outbox.quarantine_left:
                self.outbox.take_over()
            self.outbox.enforce_quota(free_disk_bytes(self.outbox.path.parent),
                                      self.outbox.protected)

    def _commit(self) -> None:
        try:
            wrote = self.outbox.commit()
        except (OutboxError, sqlite3.Error) as exc:  # disk full, I/O error: rows wait in memory
            self._write_failures += 1
            if self._write_failures == 1:
                log.error("outbox write failed (%s); evicting by the quotas and retrying", exc)
            self._check_disk()
            return
        if self._write_failures:
            log.info("outbox writes work again after %d failures", self._write_failures)
            self._write_failures = 0
        if wrote:
            self._wake.set()

    # --- forwarder --------------------------------------------------------------------------------

    async def _forwarder(self) -> None:
        up = self.uplink
        while True:
            self.progress["forwarder"] = time.monotonic()
            self._forwarder_waiting = True
            await up.connected.wait()
            if self.cfg.uplink.wait_for_collector and not up.collector_online:
                up.collector_changed.clear()
                await up.collector_changed.wait()
                continue
            self._forwarder_waiting = False
            if up.counters["connects"] != self._generation:
                self._generation = up.counters["connects"]
                self._inflight.clear()  # that connection's messages are re-sent from the outbox
                self.commands.forget_inflight()
            self._wake.clear()
            pause = self._send_some()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    def _send_some(self) -> float:
        """Publish what fits in the in-flight window; return how long to wait at most."""
        room = self.cfg.uplink.max_inflight - len(self._inflight)
        if room <= 0:
            return 1.0
        busy = set(self._inflight.values())
        now = now_ms()
        live_after = now - int(self.cfg.outbox.live_window * 1000)
        for msg in self.outbox.next_messages(room, busy, live_after=live_after):
            backlog = msg.channel == contract.DATA and msg.created < live_after
            if backlog and not self.backlog.take(msg.n, time.monotonic()):
                return min(1.0, self.backlog.wait_time(msg.n))
            mid = self.uplink.publish(contract.topic(self.gateway, msg.channel),
                                      self._payload(msg, now, backlog))
            if mid is None:
                return 1.0
            self._inflight[mid] = msg.seq
            self.outbox.protected = self.outbox.protected | {msg.seq}
        return 1.0

    def _payload(self, msg: Pending, now: int, backlog: bool) -> bytes:
        clock = {"synced": msg.synced, "boot": msg.boot, "mono": mono_ms(),
                 "sent_boot": self.boot}
        return contract.envelope(self.gateway, msg.channel, msg.seq, now, msg.body,
                                 clock=clock, replay=backlog)

    def _publish_reply(self, payload: bytes) -> int | None:
        return self.uplink.publish(contract.topic(self.gateway, contract.REPLY), payload)

    def _on_ack(self, mid: int) -> None:
        if mid not in self._inflight and self.commands.on_ack(mid):
            return
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            self.outbox.protected = self.outbox.protected - {seq}
            self.outbox.ack(seq)
            self._wake.set()

    def _on_command(self, name: str, payload: bytes) -> None:
        if name == COMMAND_NAME and self.commands.book.is_open:
            self.commands.handle(payload)
            return
        log.info("command %r received (%d bytes); no handler", name, len(payload))

    # --- watchdog ---------------------------------------------------------------------------------

    def loop_states(self) -> list[LoopState]:
        """Every loop the watchdog watches, with its last progress and its limit."""
        now = time.monotonic()
        grace = self.cfg.watchdog.stall_after
        up = self.uplink
        attempts = up.counters["connects"] + up.counters["connect_failures"]
        if up.connected.is_set() or attempts != self._uplink_attempts:
            self._uplink_attempts = attempts
            self.progress["uplink"] = now
        ucfg = self.cfg.uplink
        states = [
            LoopState("outbox-writer", self.progress["outbox-writer"], WRITER_TICK + grace),
            LoopState("forwarder", self.progress["forwarder"], 1.0 + grace,
                      idle=self._forwarder_waiting),
            LoopState("uplink", self.progress["uplink"], ucfg.reconnect_max + ucfg.boot_delay_max
                      + 2 * ucfg.connect_timeout + grace),
        ]
        for bus, bcfg in zip(self.buses, self.cfg.buses, strict=True):
            limit = source_limit(bus, bcfg.type, grace)
            states.append(LoopState(f"bus-{bcfg.name}", bus.progress, limit or 0.0,
                                    idle=limit is None))
        return states

    async def _watchdog(self) -> None:
        period = watchdog_period()
        tick = min(period, DEFAULT_TICK) if period else DEFAULT_TICK
        while True:
            if self.stalls.update(stalled(self.loop_states(), time.monotonic())):
                self.notifier.notify(WATCHDOG=1)
            await asyncio.sleep(tick)

    # --- health -----------------------------------------------------------------------------------

    async def _health(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.uplink.health_interval)
            self.uplink.publish(contract.topic(self.gateway, contract.HEALTH),
                                orjson.dumps(self.health()))

    def health(self) -> dict[str, object]:
        """The health message: counters of every part, and per-device state."""
        counters: dict[str, float] = {}
        stats = self.outbox.stats()
        counters["outbox_messages"] = stats["messages"]
        counters["outbox_readings"] = stats["readings"]
        counters["outbox_bytes"] = stats["bytes"]
        oldest = stats["oldest_created"]
        counters["outbox_oldest_age_s"] = (now_ms() - oldest) / 1000 if oldest else 0.0
        counters["clock_synced"] = int(self.outbox.synced)
        counters["outbox_write_failures"] = self._write_failures
        counters["uplink_connected"] = int(self.uplink.connected.is_set())
        counters["watchdog_stalled_loops"] = len(self.stalls.current)
        for k, v in self.stalls.counters.items():
            counters[f"watchdog_{k}"] = v
        with contextlib.suppress(RuntimeError):
            counters["asyncio_tasks"] = len(asyncio.all_tasks())
        counters.update(process_figures())
        for k, v in self.outbox.counters.items():
            counters[f"outbox_{k}"] = v
        for k, v in self.uplink.counters.items():
            counters[f"uplink_{k}"] = v
        for k, v in self.commands.counters.items():
            counters[f"commands_{k}"] = v
        devices: dict[str, dict[str, object]] = {}
        for bus in self.buses:
            for k, v in bus.counters.items():
                counters[f"bus_{k}"] = counters.get(f"bus_{k}", 0) + v
            devices.update(bus.device_health() if hasattr(bus, "device_health") else {})
        return {"v": contract.VERSION, "gateway": self.gateway, "sent": now_ms(),
                "uptime_s": round(time.monotonic(), 1), "version": VERSION,
                "counters": counters, "devices": devices}
