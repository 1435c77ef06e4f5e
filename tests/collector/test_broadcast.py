"""The live-broadcast helper of the SSE streams: fan-out from any thread, bounded queues, a slow
subscriber dropped and counted, heartbeats; and a real stream over HTTP that a stalled client
cannot make grow."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI

from citygate.rig import served, wait_for
from collector import broadcast
from collector.broadcast import DROPPED, HEARTBEAT, Broadcast, updates
from collector.elevators import install
from collector.store import Accepted
from devices.contract import EventsEnvelope


class Client:
    """A request that is connected until told otherwise."""

    def __init__(self) -> None:
        self.gone = False

    async def is_disconnected(self) -> bool:
        """Whether the client has gone."""
        return self.gone


def test_items_published_from_another_thread_reach_each_accepting_subscriber() -> None:
    bus = Broadcast()

    async def main() -> tuple[list[Any], list[Any]]:
        with bus.subscribe() as every, bus.subscribe(lambda n: n % 2 == 0) as even:
            publisher = threading.Thread(target=lambda: [bus.publish(n) for n in range(6)])
            publisher.start()
            publisher.join()
            got_all = [await asyncio.wait_for(every.queue.get(), 2) for _ in range(6)]
            got_even = [await asyncio.wait_for(even.queue.get(), 2) for _ in range(3)]
            assert bus.subscribers == 2
        return got_all, got_even

    assert asyncio.run(main()) == ([0, 1, 2, 3, 4, 5], [0, 2, 4])
    assert bus.stats() == {"published": 6, "subscribers": 0, "slow_dropped": 0}


def test_a_slow_subscriber_is_dropped_and_counted_while_a_fast_one_goes_on() -> None:
    bus = Broadcast(maxsize=3)

    async def main() -> tuple[list[Any], list[Any]]:
        client = Client()
        with bus.subscribe() as slow, bus.subscribe() as fast:
            fast_seen: list[Any] = []
            for n in range(10):
                bus.publish(n)
                await asyncio.sleep(0)  # deliver (call_soon_threadsafe) ...
                fast_seen.append(fast.queue.get_nowait())  # ... and the fast one reads
            slow_seen = [item async for item in updates(slow, client, heartbeat_s=5)]
            assert bus.subscribers == 1  # the slow one is no longer fed
        return fast_seen, slow_seen

    fast_seen, slow_seen = asyncio.run(main())
    assert fast_seen == list(range(10))
    assert slow_seen == [DROPPED]  # told once, then the stream ends
    assert bus.stats()["slow_dropped"] == 1


def test_a_quiet_stream_gets_heartbeats_and_ends_when_the_client_goes() -> None:
    bus = Broadcast()

    async def main() -> list[Any]:
        client = Client()
        seen: list[Any] = []
        with bus.subscribe() as sub:
            async for item in updates(sub, client, heartbeat_s=0.05):
                seen.append(item)
                if len(seen) == 2:
                    bus.publish("change")
                    await asyncio.sleep(0)
                if len(seen) == 4:
                    client.gone = True
        return seen

    assert asyncio.run(main()) == [HEARTBEAT, HEARTBEAT, "change", HEARTBEAT]


def test_a_stalled_http_client_is_dropped_instead_of_buffered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broadcast, "QUEUE_LIMIT", 50)
    app = FastAPI()
    stream = install(app)
    env = EventsEnvelope.model_validate({
        "v": 1, "gateway": "gw-1", "seq": 1, "sent": 1_760_000_000_000,
        "events": [{"device": "lift-1", "ts": 1_760_000_000_000, "kind": "door_fault",
                    "action": "raise", "severity": "major", "message": "x" * 500}
                   for _ in range(100)]})
    with served(app) as base:
        host, port = base.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: stream.subscribers == 1, 5, "the stream to subscribe")
        deadline = time.monotonic() + 20
        while stream.broadcast.stats()["slow_dropped"] == 0:  # the client reads nothing
            assert time.monotonic() < deadline, stream.broadcast.stats()
            stream.on_stored([Accepted("gw-1", env, 1_760_000_000_000)])
            time.sleep(0.01)
        assert stream.subscribers == 0
        sock.settimeout(10)
        received = b""
        while b"event: overflow" not in received:  # what was sent, then the drop notice
            chunk = sock.recv(65536)
            assert chunk, "stream ended without the overflow notice"
            received += chunk
        sock.close()
