"""Fan-out of incident changes to server-sent-event streams, safe to publish from any thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any


class Subscription:
    """One listener's queue of incident changes, bound to the event loop that reads it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=maxsize)
        self.overflowed = False  # the reader fell behind: it should reload the full list

    def offer(self, item: dict[str, Any]) -> None:
        """Queue an item in the loop's thread; mark overflow instead of blocking a writer."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


class IncidentBus:
    """Publishes incident changes (from the ingest writer, the worker or the API) to listeners."""

    def __init__(self, maxsize: int = 1000) -> None:
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """Listen in the running event loop until the block exits."""
        sub = Subscription(asyncio.get_running_loop(), self._maxsize)
        with self._lock:
            self._subs.add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                self._subs.discard(sub)

    def publish(self, item: dict[str, Any]) -> None:
        """Hand an item to every listener without waiting for them."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # the listener's loop has closed
                sub.loop.call_soon_threadsafe(sub.offer, item)

    @property
    def listeners(self) -> int:
        """Number of open streams."""
        with self._lock:
            return len(self._subs)
