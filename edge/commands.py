"""The gateway's side of device commands: admit, hand to the bus owner, report until acked.

`cmd/device` messages arrive on the event loop (`handle`); each is recorded in the command
book before anything else (edge/command_book.py), answered `accepted` (or with the status its
idempotency key already has), and queued on the bus that polls its device. Results are
published on the reply channel and re-published until the broker acknowledges them, across
restarts (`run`).

Operations (devices.commands.OPS) are dispatched by `HANDLERS`: `write` to the Modbus bus
that polls the device (edge/device_writes.py), the HJ 212 station operations to the bus whose
line the station is on (edge/hj212_commands.py), a parking node's `configure`/`recalibrate` to
the CoAP endpoint that hears the node (edge/node_commands.py). Arguments are checked again here
by the same function as at the collector; a refusal is `failed: bad_command` (a parking node's
keeps its own reason, e.g. `out_of_range`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from devices import contract
from devices.commands import (
    COMMAND_NAME,
    FAILED,
    ArgsRefused,
    CommandResult,
    DeviceCommand,
    check_args,
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
                 publish: Publish, clock_synced: Callable[[], bool | None] | None = None
                 ) -> None:
        self.gateway = gateway
        self.book = book
        self.buses = buses
        self.publish = publish
        self.clock_synced = clock_synced  # None: the gateway does not know
        self.counters = {"received": 0, "duplicates": 0, "refused": 0, "done": 0,
                         "failed": 0, "expired": 0, "bad_args": 0}
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
                 str(cmd.args)[:120], cmd.device, cmd.issuer, result.status, result.reason)

    async def _outcome(self, cmd: DeviceCommand) -> CommandResult:
        handler = HANDLERS.get(cmd.op)
        if handler is None:
            return _failed("unsupported_operation", f"operation {cmd.op[:32]!r} is not "
                           "supported")
        try:
            args = check_args(cmd.op, None, cmd.args)
        except ArgsRefused as exc:
            self.counters["bad_args"] += 1
            # A parking node's refusals keep their own reasons (devices.parking_commands).
            reason = "bad_command" if exc.reason == "bad_args" else exc.reason
            return _failed(reason, exc.message)
        return await handler(self, cmd, args)

    async def _station(self, cmd: DeviceCommand, args: dict[str, Any]) -> CommandResult:
        bus = next((b for b in self.buses if hasattr(b, "run_command")
                    and b.has_device(cmd.device)), None)
        if bus is None:
            return _failed("unknown_device", f"no HJ 212 station {cmd.device!r} on this "
                           "gateway")
        if cmd.op == "set_time" and "time" not in args and self.clock_synced is not None \
                and self.clock_synced() is False:
            return _failed("clock_not_synced", "the gateway's own clock is not synchronised;"
                           " give an explicit time to set the station's clock anyway")
        result: CommandResult = await bus.run_command(
            cmd.device, cmd.op, args, lambda now: self.book.start(cmd.key, now))
        return result

    async def _write(self, cmd: DeviceCommand, args: dict[str, Any]) -> CommandResult:
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

    async def _node_command(self, cmd: DeviceCommand, args: dict[str, Any]) -> CommandResult:
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


Handler = Callable[[CommandRunner, DeviceCommand, dict[str, Any]], Awaitable[CommandResult]]
# op -> how the gateway runs it (one entry per devices.commands.OPS entry)
HANDLERS: dict[str, Handler] = {
    "write": CommandRunner._write,
    "set_time": CommandRunner._station,
    "request_history": CommandRunner._station,
    "read_params": CommandRunner._station,
    "set_rtd_interval": CommandRunner._station,
    "configure": CommandRunner._node_command,
    "recalibrate": CommandRunner._node_command,
}
