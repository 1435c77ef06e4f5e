"""Live event stream: committed events fanned out to server-sent-event subscribers.

`on_stored` is called on the ingest writer thread after each commit; subscribers live on the
web server's event loop. The fan-out is the collector's `Broadcast`: a subscriber that cannot
keep up is dropped (counted), never blocks ingest.
"""

from __future__ import annotations

import itertools
from typing import Any

from collector.broadcast import Broadcast, Subscriber
from collector.store import Accepted
from devices.contract import EventsEnvelope


class EventStream:
    """Fans committed events out to the current subscribers, filtered by device and kind."""

    def __init__(self, maxsize: int | None = None) -> None:
        self.broadcast = Broadcast(maxsize)
        self._ids = itertools.count(1)

    def subscribe(self, device: str | None = None, kind: str | None = None) -> Subscriber:
        """Register a subscriber on the running loop for the events of `device` and `kind`."""
        def wants(event: dict[str, Any]) -> bool:
            return ((device is None or event["device"] == device)
                    and (kind is None or event["kind"] == kind))
        return self.broadcast.open(wants)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber (idempotent)."""
        self.broadcast.forget(sub)

    @property
    def subscribers(self) -> int:
        """How many clients are connected."""
        return self.broadcast.subscribers

    @property
    def published(self) -> int:
        """Events published since start."""
        return self.broadcast.published

    def on_stored(self, items: list[Accepted]) -> None:
        """Publish the events of a committed batch."""
        for a in items:
            if not isinstance(a.envelope, EventsEnvelope):
                continue
            for ev in a.envelope.events:
                self.broadcast.publish({
                    "id": next(self._ids), "device": ev.device, "gateway": a.gateway,
                    "kind": ev.kind, "action": ev.action, "severity": ev.severity,
                    "code": ev.code, "evidence": ev.evidence, "message": ev.message,
                    "ts": ev.ts, "received": a.received})
