"""Watchdog: the sd_notify protocol against a real socket, stall policy, and a hung poll loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from citygate.rig import free_port
from devices.sim.elevator import make_bank, serve_tcp
from edge.agent import Agent
from edge.config import parse_config
from edge.watchdog import (
    LoopState,
    Notifier,
    StallTracker,
    notify_address,
    source_limit,
    stalled,
    watchdog_period,
)


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """A bound abstract-namespace datagram socket, as systemd provides: ('@name', socket)."""
    name = f"@citygate-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.setblocking(False)
    try:
        yield name, sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_abstract_names_start_with_a_nul_byte() -> None:
    assert notify_address("@sd/notify") == "\0sd/notify"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, 1.0),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_period_is_half_of_watchdog_usec(env: dict[str, str],
                                                  expected: float | None) -> None:
    assert watchdog_period(env, pid=4242) == expected


def test_notifier_sends_key_value_lines(notify_socket: tuple[str, socket.socket]) -> None:
    name, sock = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": name})
    assert n.notify(READY=1, STATUS="up")
    assert drain(sock) == ["READY=1\nSTATUS=up"]
    n.close()
    n.close()  # idempotent


def test_notifier_without_systemd_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.active and not n.notify(WATCHDOG=1)


def test_a_full_receive_queue_never_blocks_the_sender(
        notify_socket: tuple[str, socket.socket]) -> None:
    name, sock = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": name})
    results = [n.notify(WATCHDOG=1) for _ in range(1000)]  # nobody reads meanwhile
    assert results[0] and not results[-1] and n.dropped > 0
    assert len(drain(sock)) == n.sent


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone"))
    assert not n.notify(WATCHDOG=1)
    assert not n.notify(WATCHDOG=1)


@pytest.mark.parametrize(("loops", "now", "expected"), [
    ([LoopState("a", 100.0, 5.0)], 104.0, []),
    ([LoopState("a", 100.0, 5.0)], 106.0, ["a"]),
    ([LoopState("a", 100.0, 5.0, idle=True)], 1e9, []),
    ([LoopState("a", 0.0, 1.0), LoopState("b", 10.0, 1.0)], 10.5, ["a"]),
    ([], 0.0, []),
])
def test_stalled_names_loops_past_their_limit(loops: list[LoopState], now: float,
                                              expected: list[str]) -> None:
    assert stalled(loops, now) == expected


def test_source_limits() -> None:
    listener = SimpleNamespace(progress=0.0)
    assert source_limit(listener, "hj212-tcp", 60) is None
    assert source_limit(listener, "coap", 60) == 60
    assert source_limit(SimpleNamespace(devices=[]), "modbus-tcp", 60) is None
    assert source_limit(SimpleNamespace(link=SimpleNamespace(connected=False)), "modbus-rtu",
                        60) is None
    assert source_limit(SimpleNamespace(stall_limit=7), "anything", 60) == 7
    dev = SimpleNamespace(health=SimpleNamespace(next_interval=lambda: 4.0), timeout=0.5,
                          retries=1, blocks=[1, 2], cfg=SimpleNamespace(poll=1.0))
    assert source_limit(SimpleNamespace(devices=[dev]), "modbus-tcp", 10) == 4.0 + 2.0 + 10


def test_stall_tracker_logs_state_changes_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.watchdog")
    t = StallTracker()
    assert t.update([])
    for _ in range(5):
        assert not t.update(["bus-a"])
    assert t.update([])
    assert t.counters == {"stalls": 1, "pings": 2, "withheld": 5}
    assert [r.levelname for r in caplog.records] == ["ERROR", "INFO"]


GATEWAY = """
schema_version = 1
[gateway]
id = "gw-wd"
data_dir = "{data}"
[uplink]
brokers = ["mqtt://127.0.0.1:{broker}"]
reconnect_max = "2s"
[watchdog]
stall_after = "1s"
[[buses]]
name = "lifts"
type = "modbus-tcp"
host = "127.0.0.1"
port = {modbus}
[[devices]]
id = "lift-1"
bus = "lifts"
profile = "elevator-gbt24476"
unit = 1
poll = "200ms"
"""


async def _datagrams(sock: socket.socket, seconds: float) -> list[str]:
    """Datagrams received during the next `seconds`."""
    await asyncio.sleep(seconds)
    return drain(sock)


def test_agent_pings_while_polling_and_stops_when_a_poll_loop_hangs(
        tmp_path: Path, notify_socket: tuple[str, socket.socket],
        monkeypatch: pytest.MonkeyPatch) -> None:
    name, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 100 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    asyncio.run(_hung_poll_scenario(tmp_path, sock, monkeypatch))


async def _hung_poll_scenario(tmp_path: Path, sock: socket.socket,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    modbus = free_port()
    sim_started = asyncio.Event()
    sim = asyncio.create_task(serve_tcp(make_bank([1], static=True), "127.0.0.1", modbus,
                                        sim_started))
    await asyncio.wait_for(sim_started.wait(), 10)
    cfg = parse_config(GATEWAY.format(data=tmp_path, broker=free_port(), modbus=modbus))
    agent = Agent(cfg, password="")
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.started.wait(), 10)
        got = [m for _ in range(6) for m in await _datagrams(sock, 0.25)]
        assert any(m.startswith("READY=1") for m in got), got
        assert got.count("WATCHDOG=1") >= 5, got
        assert agent.buses[0].counters["cycles"] + agent.buses[0].counters["transactions"] > 0

        async def hung_poll(*_args: object) -> None:
            await asyncio.Event().wait()  # a poll that never returns

        monkeypatch.setattr(agent.buses[0], "poll", hung_poll)
        deadline = time.monotonic() + 10
        while agent.stalls.current != ["bus-lifts"]:
            assert time.monotonic() < deadline, agent.loop_states()
            await asyncio.sleep(0.05)
        drain(sock)
        assert "WATCHDOG=1" not in await _datagrams(sock, 1.0)
        counters: Any = agent.health()["counters"]
        assert counters["watchdog_stalled_loops"] == 1
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 15)
        sim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sim
