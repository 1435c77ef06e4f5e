"""The gateway's side of device commands: admit, hand to the bus owner, report until acked.

`cmd/device` messages arrive on the event loop (`handle`); each is recorded in the command
book before anything else (edge/command_book.py), answered `accepted` (or with the status its
idempotency key already has), and queued on the bus that polls its device. Results are
published on the reply channel and re-published until the broker acknowledges them, across
restarts (`run`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from devices import contract
from devices.commands import (
    COMMAND_NAME,
    FAILED,
    OP_KINDS,
    CommandResult,
    DeviceCommand,
    parse_command,
)
from devices.modbus.writes import WriteRefused, plan_write
from edge.clock import now_ms
from edge.command_book import DELIVERED, CommandBook, Entry
from edge.device_writes import PendingWrite
from edge.remote_config import reply_payload

log = logging.getLogger(__name__)

RESEND_EVERY = 2.0  # seconds between re-publications of unacknowledged results
Publish = Callable[[bytes], int | None]  # publish a reply; the message id, None when offline


class CommandRunner:
    """Device commands of one gateway; `run()` lives in the agent's task group."""

    def __init__(self, gateway: str, book: CommandBook, buses: Sequence[Any],
                 publish: Publish) -> None:
        self.gateway = gateway
        self.book = book
        self.buses = buses
        self.publish = publish
        self.counters = {"received": 0, "duplicates": 0, "refused": 0, "done": 0,
                         "failed": 0, "expired": 0}
        self._inflight: dict[int, tuple[str, str]] = {}  # mid -> (key, status)
        self._tasks: set[asyncio.Task[None]] = set()
        self._resumed = False

    def resume(self) -> None:
        """Once, before any new command: resume what a restart left waiting (idempotent)."""
        if not self._resumed:
            self._resumed = True
            for cmd in self.book.recover(now_ms()):
                self._spawn(self._execute(cmd))

    def handle(self, payload: bytes) -> None:
        """A `cmd/device` message (on the event loop)."""
        self.resume()
        self.counters["received"] += 1
        try:
            cmd = parse_command(payload)
        except contract.ContractError as exc:
            self.counters["refused"] += 1
            log.warning("device command refused: %s", exc)
            return  # no id to answer to; the collector's command expires
        entry, new = self.book.admit(cmd, now_ms())
        if not new:
            self.counters["duplicates"] += 1
        elif entry.status != "accepted":
            self.counters[entry.status] = self.counters.get(entry.status, 0) + 1
            log.warning("device command %s for %s arrived after its expiry; not executed",
                        cmd.id, cmd.device)
        self._report(entry)
        if new and entry.status == "accepted":
            self._spawn(self._execute(cmd))

    async def run(self) -> None:
        """Resume the commands a restart left waiting, then re-send unacknowledged results."""
        self.resume()
        try:
            while True:
                for entry in self.book.unreported():
                    if (entry.command.key, entry.status) not in self._inflight.values():
                        self._report(entry)
                await asyncio.sleep(RESEND_EVERY)
        finally:  # a command cut short stays recorded: the next start resumes or fails it
            for task in list(self._tasks):
                task.cancel()

    def on_ack(self, mid: int) -> bool:
        """The broker acknowledged a message; True when it was one of ours."""
        sent = self._inflight.pop(mid, None)
        if sent is None:
            return False
        self.book.reported(*sent)
        return True

    def forget_inflight(self) -> None:
        """A new connection: whatever was in flight is re-sent."""
        self._inflight.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro, name="device-command")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, cmd: DeviceCommand) -> None:
        result = await self._outcome(cmd)
        self.counters[result.status] = self.counters.get(result.status, 0) + 1
        self.book.finish(cmd.key, result)
        entry = self.book.entry(cmd.key)
        if entry is not None:
            self._report(entry)
        log.info("device command %s (%s %s on %s by %s): %s %s", cmd.id, cmd.op,
                 cmd.args.get("point", cmd.args), cmd.device, cmd.issuer, result.status,
                 result.reason)

    async def _outcome(self, cmd: DeviceCommand) -> CommandResult:
        """Carry a command out on the kind of device its operation is for."""
        run = {"modbus": self._write, "parking": self._node_command}.get(
            OP_KINDS.get(cmd.op, ""))
        if run is None:
            return _failed("unsupported_operation", f"operation {cmd.op!r} is not supported")
        return await run(cmd)

    async def _write(self, cmd: DeviceCommand) -> CommandResult:
        bus = next((b for b in self.buses if hasattr(b, "submit_write")
                    and any(d.cfg.id == cmd.device for d in b.devices)), None)
        if bus is None:
            return _failed("unknown_device", f"no Modbus device {cmd.device!r} on this gateway")
        dev = next(d for d in bus.devices if d.cfg.id == cmd.device)
        name = str(cmd.args.get("point", ""))
        point = next((p for p in dev.profile.points if p.quantity == name), None)
        try:
            plan = plan_write(point, name, cmd.args.get("value"))
        except WriteRefused as exc:
            return _failed(exc.reason, exc.detail)
        pending = PendingWrite(plan, start=lambda now: self.book.start(cmd.key, now))
        bus.submit_write(cmd.device, pending)
        return await pending.done

    async def _node_command(self, cmd: DeviceCommand) -> CommandResult:
        """A parking node's command: checked again, then queued on the CoAP endpoint of the
        node's bus until the node reports (edge/node_commands.py). Imported here: a gateway
        without parking buses never loads the parking codec."""
        from devices.parking_commands import NodeCommandRefused, node_command
        from edge.node_commands import NodeJob

        found = next(((b, sid) for b in self.buses if hasattr(b, "submit_command")
                      and (sid := b.sensor_of(cmd.device)) is not None), None)
        if found is None:
            return _failed("unknown_device", f"no CoAP parking node {cmd.device!r} on this "
                           "gateway")
        try:
            wire = node_command(cmd)
        except NodeCommandRefused as exc:
            return _failed(exc.reason, exc.detail)
        entry = self.book.entry(cmd.key)
        job = NodeJob(cmd, wire, lambda now: self.book.deliver(cmd.key, now),
                      asyncio.get_running_loop().create_future(),
                      delivered=entry is not None and entry.status == DELIVERED)
        found[0].submit_command(found[1], job)
        return await job.done

    def _report(self, entry: Entry) -> None:
        if entry.result is None:
            return
        payload = reply_payload(self.gateway, COMMAND_NAME, entry.command.id, entry.result.ok,
                                entry.result.detail())
        mid = self.publish(payload)
        if mid is not None:
            self._inflight[mid] = (entry.command.key, entry.status)


def _failed(reason: str, message: str) -> CommandResult:
    return CommandResult(FAILED, now_ms(), reason=reason, message=message)
