"""The gateway sends within the send delay whatever the group commit does, and the commit tick
stays on the poll grid instead of drifting round it."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devices.model import Action, Event, Reading, Severity
from edge.agent import Agent
from edge.config import parse_config
from edge.grid import grid_anchor, next_tick
from edge.outbox import Outbox

CONFIG = """
[gateway]
id = "gw-grid"
data_dir = "{data}"
clock = "trust"

[outbox]
durability_window = "{window}"
send_delay = "10ms"

[[buses]]
name = "tcp0"
type = "modbus-tcp"
host = "127.0.0.1"
port = 1

[[devices]]
id = "lift-1"
bus = "tcp0"
profile = "elevator-gbt24476"
"""


class FakeUplink:
    """A broker that acknowledges every message a moment after it is published."""

    def __init__(self, on_ack: Callable[[int], None], ack_after: float = 0.002) -> None:
        self.on_ack, self.ack_after = on_ack, ack_after
        self.connected = asyncio.Event()
        self.collector_changed = asyncio.Event()
        self.collector_online = True
        self.counters = {"connects": 1, "connect_failures": 0}
        self.sent: list[tuple[float, bytes]] = []
        self._mid = 0

    async def run(self) -> None:
        self.connected.set()
        await asyncio.Event().wait()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        self._mid += 1
        self.sent.append((time.monotonic(), payload))
        if "/data" in topic or "/events" in topic:
            asyncio.get_running_loop().call_later(self.ack_after, self.on_ack, self._mid)
        return self._mid


class FakeBus:
    """A bus whose poll grid starts when the agent starts; the test feeds the readings."""

    def __init__(self, poll: float) -> None:
        self.counters: dict[str, int] = {}
        self.progress = time.monotonic()
        self.grid: float | None = None
        self.poll_period = poll
        self.polling = asyncio.Event()

    async def run(self) -> None:
        self.grid = asyncio.get_running_loop().time()
        self.polling.set()
        await asyncio.Event().wait()


def agent_for(tmp_path: Path, window: str,
              poll: float = 0.1) -> tuple[Agent, FakeUplink, FakeBus]:
    cfg = parse_config(CONFIG.format(data=tmp_path, window=window))
    agent = Agent(cfg, password="")
    up, bus = FakeUplink(agent._on_ack), FakeBus(poll)
    agent.uplink = up  # type: ignore[assignment]
    agent.buses = [bus]
    return agent, up, bus


def test_next_tick_is_on_the_grid() -> None:
    assert next_tick(10.5, 1.0, 10.5) == 11.5
    assert next_tick(10.5, 1.0, 11.49) == 11.5
    assert next_tick(10.5, 1.0, 13.2) == 13.5  # late by more than a period: skip, no burst
    assert next_tick(10.5, 1.0, 2.0) == pytest.approx(2.5)
    assert grid_anchor(100.0, 1.0) == 100.5  # mid-way between polls
    assert grid_anchor(100.0, None) == 100.0


def test_the_commit_anchor_follows_the_earliest_poll_grid(tmp_path: Path) -> None:
    agent, _, _ = agent_for(tmp_path, "1s")
    agent.buses = [SimpleNamespace(grid=7.0, poll_period=0.2),
                   SimpleNamespace(grid=5.0, poll_period=1.0), SimpleNamespace(grid=None)]
    assert agent.commit_anchor(started=1.0) == 5.5
    agent.buses = [SimpleNamespace()]  # event-driven: no grid
    assert agent.commit_anchor(started=1.0) == 1.0


def run_agent(agent: Agent, feed: Callable[[Agent], Any]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(agent.started.wait(), 10)
        try:
            await feed(agent)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(main())


def latencies(up: FakeUplink, submitted: dict[int, float]) -> list[float]:
    import orjson

    out = []
    for at, payload in up.sent:
        doc = orjson.loads(payload)
        for item in doc.get("readings", doc.get("events", [])):
            out.append(at - submitted[item["ts"]])
    return out


def test_events_and_changes_are_sent_within_the_send_delay_not_the_window(
        tmp_path: Path) -> None:
    agent, up, _ = agent_for(tmp_path, "1s")
    submitted: dict[int, float] = {}

    async def feed(agent: Agent) -> None:
        for i in range(20):  # at every phase of the 1 s window
            ts = 1_700_000_000_000 + i
            submitted[ts] = time.monotonic()
            item = Event("lift-1", ts, "trapped_passenger", Action.RAISE, Severity.CRITICAL) \
                if i % 5 == 0 else Reading("lift-1", ts, {"floor": i})
            agent.submit([item])
            await asyncio.sleep(0.07)
        await asyncio.sleep(0.2)

    run_agent(agent, feed)
    lat = latencies(up, submitted)
    assert len(lat) == 20
    assert max(lat) < 0.2, sorted(lat)  # the window is 1 s: nothing waited for it
    assert statistics.median(lat) < 0.05, sorted(lat)
    # A message acknowledged before a commit is never written. The 1.6 s run has at most two
    # commit ticks, and a tick can only catch the one message then in flight (sends are 70 ms
    # apart, acks come within milliseconds), so at most two of the twenty reach the disk.
    stored = agent.outbox.counters["stored_messages"]
    assert stored <= 2, agent.outbox.counters
    assert agent.outbox.counters["acked_before_commit"] == len(up.sent) - stored
    ob = Outbox(agent.cfg.outbox_path).open()
    assert ob.stats()["messages"] == 0
    ob.close()


def test_the_commit_tick_does_not_drift_over_a_drift_cycle(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    # Each commit takes 8 ms (a slow SD card): a writer sleeping one window after each commit
    # would slide 8 ms a tick, a whole 100 ms poll cycle in 13 ticks. Over 40 ticks the tick
    # must stay where the grid put it, and the latency of readings must not grow.
    agent, up, bus = agent_for(tmp_path, "100ms", poll=0.1)
    ticks: list[float] = []
    real_commit = Outbox.commit

    def slow_commit(self: Outbox) -> int:
        ticks.append(asyncio.get_running_loop().time())
        time.sleep(0.008)
        return real_commit(self)

    monkeypatch.setattr(Outbox, "commit", slow_commit)
    submitted: dict[int, float] = {}

    async def feed(agent: Agent) -> None:
        loop = asyncio.get_running_loop()
        await bus.polling.wait()
        assert bus.grid is not None
        for i in range(40):  # one reading per poll, on the grid
            await asyncio.sleep(max(0.0, bus.grid + 0.1 * i + 0.01 - loop.time()))
            ts = 1_700_000_000_000 + i
            submitted[ts] = time.monotonic()
            agent.submit([Reading("lift-1", ts, {"floor": i})])
        await asyncio.sleep(0.1)

    run_agent(agent, feed)
    anchor = agent.commit_anchor(0.0)
    phases = [((t - anchor + 0.05) % 0.1) - 0.05 for t in ticks[1:-1]]  # 0 = on the grid
    assert len(phases) >= 30
    late = sorted(abs(p) for p in phases)
    assert late[len(late) // 2] < 0.01, phases  # on the grid, give or take the loop's jitter
    assert late[-3] < 0.04, phases
    lat = latencies(up, submitted)
    first, last = statistics.median(lat[:15]), statistics.median(lat[-15:])
    assert last < first + 0.02, (first, last)


def test_a_modbus_bus_gives_the_grid_its_polls_keep_to(tmp_path: Path) -> None:
    from devices.sim.elevator import make_bank
    from tests.edge.test_bus_faults import Collected, make_bus, simulated_line, until

    sink = Collected()
    polled: list[float] = []

    async def main() -> tuple[float | None, float | None]:
        loop = asyncio.get_running_loop()
        async with simulated_line(make_bank([1], static=True), tmp_path):
            bus = make_bus(str(tmp_path / "ttyLIFTS"), [1], sink, poll=0.2)
            assert bus.grid is None and bus.poll_period == 0.2
            real_poll = bus.poll

            async def poll(link: Any, dev: Any) -> None:
                polled.append(loop.time())
                await real_poll(link, dev)

            bus.poll = poll  # type: ignore[method-assign]
            task = asyncio.create_task(bus.run())
            await until(lambda: len(polled) >= 4, 10, bus)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return bus.grid, bus.poll_period

    grid, period = asyncio.run(main())
    assert grid is not None and period == 0.2
    # Each poll starts on the grid (give or take the loop's jitter), so ticks anchored to it
    # stay between polls.
    offsets = [((t - grid) % 0.2) for t in polled]
    assert all(o < 0.05 or o > 0.19 for o in offsets), offsets
