"""Live broadcast to server-sent-event streams: one fan-out for every stream of the collector.

Items are published from any thread (the ingest writer, a worker, a request handler) and
delivered to subscribers that live on the web server's event loop, each through its own
bounded queue, so that a publisher never waits for a reader. A subscriber that falls
`maxsize` items behind is dropped (counted in `slow_dropped`): its stream sends its "you
missed items" frame and ends, and the browser's EventSource reconnects and reloads. Dropping
is what keeps memory bounded with a stalled client, and is honest: a stream that silently
skipped items would show a wrong picture.

`updates(sub, request, heartbeat_s)` is the reading side: the subscriber's items, a `HEARTBEAT`
when the stream was quiet for `heartbeat_s` (the caller writes an SSE comment so proxies keep
the connection), and `DROPPED` once when the subscriber was too slow; it ends when the client
disconnects. Each stream renders its own frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

QUEUE_LIMIT = 1000  # items buffered per subscriber before it is dropped as too slow


class Signal(enum.Enum):
    """What `updates` yields besides items."""

    HEARTBEAT = "heartbeat"
    DROPPED = "dropped"


HEARTBEAT = Signal.HEARTBEAT
DROPPED = Signal.DROPPED


class Disconnectable(Protocol):
    """The part of a Starlette request a stream watches."""

    async def is_disconnected(self) -> bool:
        """Whether the client has gone."""


class Subscriber:
    """One stream's bounded queue, bound to the event loop that reads it."""

    def __init__(self, broadcast: Broadcast, loop: asyncio.AbstractEventLoop, maxsize: int,
                 accept: Callable[[Any], bool] | None) -> None:
        self.broadcast = broadcast
        self.loop = loop
        self.accept = accept
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.dropped = False  # fell `maxsize` behind: no longer fed
        self.wakeup = asyncio.Event()

    def offer(self, item: Any) -> None:
        """Queue an item (in the loop's thread); drop this subscriber when it is full."""
        if self.dropped:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped = True
            self.broadcast.forget(self, slow=True)
            self.wakeup.set()


class Broadcast:
    """Fans items out to the current subscribers, from any thread, never blocking."""

    def __init__(self, maxsize: int | None = None) -> None:
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()
        self.maxsize = maxsize or QUEUE_LIMIT
        self.published = 0
        self.slow_dropped = 0

    def open(self, accept: Callable[[Any], bool] | None = None) -> Subscriber:
        """A subscriber on the running loop, fed the items `accept` passes (default: all)."""
        sub = Subscriber(self, asyncio.get_running_loop(), self.maxsize, accept)
        with self._lock:
            self._subs.add(sub)
        return sub

    def forget(self, sub: Subscriber, *, slow: bool = False) -> None:
        """Stop feeding a subscriber (idempotent); `slow`: count it as dropped."""
        with self._lock:
            if sub in self._subs:
                self._subs.discard(sub)
                self.slow_dropped += slow

    @contextlib.contextmanager
    def subscribe(self, accept: Callable[[Any], bool] | None = None) -> Iterator[Subscriber]:
        """A subscriber for the duration of the block."""
        sub = self.open(accept)
        try:
            yield sub
        finally:
            self.forget(sub)

    def publish(self, item: Any) -> None:
        """Hand an item to every subscriber that accepts it, without waiting for any."""
        with self._lock:
            subs = list(self._subs)
            self.published += 1
        for sub in subs:
            if sub.accept is not None and not sub.accept(item):
                continue
            with contextlib.suppress(RuntimeError):  # the subscriber's loop has closed
                sub.loop.call_soon_threadsafe(sub.offer, item)

    @property
    def subscribers(self) -> int:
        """How many streams are open."""
        with self._lock:
            return len(self._subs)

    def stats(self) -> dict[str, int]:
        """Published items, open streams and streams dropped for being too slow."""
        with self._lock:
            return {"published": self.published, "subscribers": len(self._subs),
                    "slow_dropped": self.slow_dropped}


async def updates(sub: Subscriber, request: Disconnectable,
                  heartbeat_s: float) -> AsyncIterator[Any]:
    """The subscriber's items, `HEARTBEAT` after `heartbeat_s` of quiet and `DROPPED` (last)
    when it fell behind; ends when the client disconnects."""
    while not await request.is_disconnected():
        if sub.dropped:
            yield DROPPED
            return
        if not sub.queue.empty():
            yield sub.queue.get_nowait()
            continue
        getter = asyncio.ensure_future(sub.queue.get())
        dropped = asyncio.ensure_future(sub.wakeup.wait())
        done, _ = await asyncio.wait({getter, dropped}, timeout=heartbeat_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        dropped.cancel()
        if getter in done:
            yield getter.result()
        else:
            getter.cancel()
            if not done:
                yield HEARTBEAT
