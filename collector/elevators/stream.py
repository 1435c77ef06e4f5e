"""Live event stream: committed events fanned out to server-sent-event subscribers.

`on_stored` is called on the ingest writer thread after each commit; subscribers live on the
web server's event loop, so delivery crosses over with `call_soon_threadsafe`. A subscriber
that cannot keep up loses events (counted), never blocks ingest.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from collector.store import Accepted
from devices.contract import EventsEnvelope

QUEUE_LIMIT = 1000  # events buffered per subscriber before it starts losing them


@dataclass(eq=False)  # identity: each connection is its own subscriber
class Subscriber:
    """One stream client: its filters, loop and queue."""

    loop: asyncio.AbstractEventLoop
    device: str | None = None
    kind: str | None = None
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    dropped: int = 0

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether the event passes this subscriber's filters."""
        return ((self.device is None or event["device"] == self.device)
                and (self.kind is None or event["kind"] == self.kind))

    def offer(self, event: dict[str, Any]) -> None:
        """Queue an event (on the subscriber's loop); drop it when the queue is full."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1


class EventStream:
    """Fans committed events out to the current subscribers."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.published = 0

    def subscribe(self, device: str | None = None, kind: str | None = None) -> Subscriber:
        """Register a subscriber on the running loop."""
        sub = Subscriber(asyncio.get_running_loop(), device, kind)
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber (idempotent)."""
        with self._lock:
            self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        """How many clients are connected."""
        return len(self._subscribers)

    def on_stored(self, items: list[Accepted]) -> None:
        """Hub hook: publish the events of a committed batch."""
        with self._lock:
            subs = list(self._subscribers)
        for a in items:
            if not isinstance(a.envelope, EventsEnvelope):
                continue
            for ev in a.envelope.events:
                event = {"id": next(self._ids), "device": ev.device, "gateway": a.gateway,
                         "kind": ev.kind, "action": ev.action, "severity": ev.severity,
                         "code": ev.code, "evidence": ev.evidence, "message": ev.message,
                         "ts": ev.ts, "received": a.received}
                self.published += 1
                for sub in subs:
                    if sub.wants(event):
                        sub.loop.call_soon_threadsafe(sub.offer, event)
