"""The gateway agent: buses feed the outbox, the forwarder drains it to the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from devices import contract
from devices.contract import ClockInfo
from devices.model import Event, Reading
from edge.bus import mono_ms, now_ms
from edge.config import GatewayConfig
from edge.outbox import Outbox
from edge.sources import Source, build_source
from edge.uplink import Uplink

log = logging.getLogger(__name__)

VERSION = "0.1.0"
REPLAY_AFTER = 30.0  # seconds: a message older than this when sent is marked as replayed


def boot_id() -> str:
    """The kernel's boot id: monotonic times compare only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Agent:
    """One gateway: its buses, its outbox and its uplink, run as one task group."""

    def __init__(self, cfg: GatewayConfig, *, password: str | None = None) -> None:
        self.cfg = cfg
        self.gateway = cfg.gateway.id
        self.boot = boot_id()
        self.outbox = Outbox(cfg.outbox_path, synchronous=cfg.outbox.synchronous,
                             max_batch=cfg.outbox.max_batch)
        self.uplink = Uplink(self.gateway, cfg.uplink, version=VERSION, boot=self.boot,
                             on_ack=self._on_ack, on_command=self._on_command,
                             password=password if password is not None else self._password(),
                             inventory=self._inventory())
        self.buses: list[Source] = [
            build_source(b, [d for d in cfg.devices if d.bus == b.name], self.submit)
            for b in cfg.buses]
        self._urgent = asyncio.Event()
        self._wake = asyncio.Event()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq, for this connection
        self._generation = -1
        self.started = asyncio.Event()

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
        """Accept readings/events from a bus; events are committed and sent at once."""
        if not items:
            return
        self.outbox.add(items)
        if self.outbox.has_urgent:
            self._urgent.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or the task is cancelled); everything is closed on exit."""
        self.outbox.open()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.uplink.run(), name="uplink"),
                    tg.create_task(self._writer(), name="outbox-writer"),
                    tg.create_task(self._forwarder(), name="forwarder"),
                    tg.create_task(self._health(), name="health"),
                    *(tg.create_task(b.run(), name=f"bus-{c.name}")
                      for b, c in zip(self.buses, self.cfg.buses, strict=True)),
                ]
                self.started.set()
                await (stop.wait() if stop is not None else asyncio.Event().wait())
                for t in tasks:
                    t.cancel()
        finally:
            self.outbox.close()

    async def _writer(self) -> None:
        window = self.cfg.outbox.durability_window
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), window)
                self._urgent.clear()
                if self.outbox.commit():
                    self._wake.set()
        finally:
            self.outbox.commit()

    async def _forwarder(self) -> None:
        up = self.uplink
        while True:
            await up.connected.wait()
            if self.cfg.uplink.wait_for_collector and not up.collector_online:
                up.collector_changed.clear()
                await up.collector_changed.wait()
                continue
            if up.counters["connects"] != self._generation:
                self._generation = up.counters["connects"]
                self._inflight.clear()  # that connection's messages are re-sent from the outbox
            self._wake.clear()
            self._send_some()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    def _send_some(self) -> None:
        room = self.cfg.uplink.max_inflight - len(self._inflight)
        if room <= 0:
            return
        busy = set(self._inflight.values())
        now = now_ms()
        clock = ClockInfo(synced=True, boot=self.boot, mono=mono_ms())
        for msg in self.outbox.next_messages(room, busy):
            payload = contract.envelope(self.gateway, msg.channel, msg.seq, now, msg.body,
                                        clock=clock,
                                        replay=(now - msg.created) > REPLAY_AFTER * 1000)
            mid = self.uplink.publish(contract.topic(self.gateway, msg.channel), payload)
            if mid is None:
                return
            self._inflight[mid] = msg.seq

    def _on_ack(self, mid: int) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            self.outbox.ack(seq)
            self._wake.set()

    def _on_command(self, name: str, payload: bytes) -> None:
        log.info("command %r received (%d bytes); no handler", name, len(payload))

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
        oldest = stats["oldest_created"]
        counters["outbox_oldest_age_s"] = (now_ms() - oldest) / 1000 if oldest else 0.0
        for k, v in self.outbox.counters.items():
            counters[f"outbox_{k}"] = v
        for k, v in self.uplink.counters.items():
            counters[f"uplink_{k}"] = v
        devices: dict[str, dict[str, object]] = {}
        for bus in self.buses:
            for k, v in bus.counters.items():
                counters[f"bus_{k}"] = counters.get(f"bus_{k}", 0) + v
            devices.update(bus.device_health() if hasattr(bus, "device_health") else {})
        return {"v": contract.VERSION, "gateway": self.gateway, "sent": now_ms(),
                "uptime_s": round(time.monotonic(), 1), "counters": counters,
                "devices": devices}
