"""Commands for parking nodes at the gateway: one outstanding per node, delivered in the CoAP
reply to the node's next report, finished by the acknowledgement in the report after that.

A node on NB-IoT power saving only listens right after it reports, so a command waits here
until its node reports; then it rides in the 2.04 reply (devices/parking.py `config_response`)
and the node answers in its next report with the command's tag, its result and the settings
now in force. Invariants:
- one command outstanding per node; later ones wait in order behind it;
- never delivered at or after its expiry (`deliver` checks it in the command book, which
  records the delivery durably); an undelivered command past its expiry is finished `expired`;
- a delivered command whose node reports without acknowledging it is delivered again while it
  has not expired (the node recognises a repeat by its tag and does not apply it twice), and
  failed `not_acknowledged` after; one whose node goes silent fails `no_answer` ACK_GRACE_MS
  after its expiry.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from devices.commands import DONE, EXPIRED, FAILED, CommandResult, DeviceCommand
from devices.parking import ACK_RESULTS, OP_RECALIBRATE, CommandAck, NodeCommand, SensorReport
from edge.clock import now_ms

log = logging.getLogger(__name__)

ACK_GRACE_MS = 86_400_000 + 600_000  # the longest heartbeat and ten minutes
MAX_WAITING = 16  # commands waiting for one node; more fail `node_busy` at once


@dataclass
class NodeJob:
    """One command for one node, from the command runner to the CoAP endpoint."""

    command: DeviceCommand
    wire: NodeCommand
    deliver: Callable[[int], bool]  # record the delivery durably; False: expired, not sent
    done: asyncio.Future[CommandResult]
    delivered: bool = False  # handed to the node (before a restart, too)


class NodeCommands:
    """The commands waiting for the nodes of one CoAP bus (called on the event loop)."""

    def __init__(self, counters: dict[str, int]) -> None:
        self.queues: dict[int, deque[NodeJob]] = {}
        self.counters = counters
        for name in ("delivered", "acked", "stale_acks", "expired", "unacknowledged",
                     "refused_busy"):
            counters.setdefault(f"commands_{name}", 0)

    def submit(self, sensor_id: int, job: NodeJob) -> None:
        """Queue a command behind those already waiting for the node (at most MAX_WAITING)."""
        queue = self.queues.setdefault(sensor_id, deque())
        if len(queue) >= MAX_WAITING:
            self.counters["commands_refused_busy"] += 1
            _settle(job, CommandResult(FAILED, now_ms(), reason="node_busy",
                                       message=f"{MAX_WAITING} commands already wait for "
                                               "this node"))
            return
        queue.append(job)

    def waiting(self, sensor_id: int) -> int:
        """Commands waiting for a node (the outstanding one included)."""
        return len(self.queues.get(sensor_id, ()))

    def on_report(self, report: SensorReport, now: int) -> NodeCommand | None:
        """A report of a node: take its acknowledgement, then say what to deliver in the reply
        (None: nothing)."""
        queue = self.queues.get(report.sensor_id)
        if not queue:
            if report.ack is not None:
                self.counters["commands_stale_acks"] += 1
            return None
        head = queue[0]
        if head.delivered:
            if report.ack is not None and report.ack.tag == head.wire.tag:
                self.counters["commands_acked"] += 1
                self._finish(queue, _acknowledged(head, report, report.ack, now))
            elif report.ack is not None:
                self.counters["commands_stale_acks"] += 1  # a repeat of an older ack
            if queue and queue[0] is head and head.command.expired(now):
                self.counters["commands_unacknowledged"] += 1
                self._finish(queue, CommandResult(
                    FAILED, now, reason="not_acknowledged", message="delivered; the node "
                    "reported again without acknowledging it, and it has expired"))
        elif report.ack is not None:
            self.counters["commands_stale_acks"] += 1
        while queue:
            head = queue[0]
            if head.deliver(now):  # durably marked before it leaves
                head.delivered = True
                self.counters["commands_delivered"] += 1
                return head.wire
            self.counters["commands_expired"] += 1
            self._finish(queue, CommandResult(EXPIRED, now, message="the node did not report "
                                              "before the expiry"))
        self.queues.pop(report.sensor_id, None)
        return None

    def sweep(self, now: int) -> None:
        """Finish what can no longer be delivered: undelivered past their expiry (expired),
        delivered and unanswered ACK_GRACE_MS past it (failed, no_answer)."""
        for sid in list(self.queues):
            queue = self.queues[sid]
            for job in list(queue):
                if job.delivered and now >= job.command.expires + ACK_GRACE_MS:
                    result = CommandResult(FAILED, now, reason="no_answer",
                                           message="delivered; the node never reported again")
                elif not job.delivered and job.command.expired(now):
                    self.counters["commands_expired"] += 1
                    result = CommandResult(EXPIRED, now, message="the node did not report "
                                           "before the expiry")
                else:
                    continue
                queue.remove(job)
                _settle(job, result)
            if not queue:
                del self.queues[sid]

    def _finish(self, queue: deque[NodeJob], result: CommandResult) -> None:
        _settle(queue.popleft(), result)


def _settle(job: NodeJob, result: CommandResult) -> None:
    if not job.done.done():
        job.done.set_result(result)


def _acknowledged(job: NodeJob, report: SensorReport, ack: CommandAck,
                  now: int) -> CommandResult:
    settings = ack.named_settings()
    if ack.result == 0:
        value: dict[str, object] = {"settings": settings}
        if job.wire.op == OP_RECALIBRATE:
            value["baseline"] = list(report.baseline)
        return CommandResult(DONE, now, value=value)
    reason = ACK_RESULTS.get(ack.result, f"node_error_{ack.result}")
    return CommandResult(FAILED, now, reason=reason, message=f"the node refused it ({reason});"
                         f" its settings: {settings}")
