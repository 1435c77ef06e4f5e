"""What the gateway accepts from HJ 212 stations, through the real wiring (build_source) and a
real TCP connection: resynchronisation, re-sent frames, per-reason counters, and readings
that the collector always accepts (bad times, flags and values are dealt with per reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from citygate.rig import free_port
from devices import contract
from devices.hj212 import build
from devices.model import Quality, Reading
from edge.config import DeviceSection, Hj212TcpBus
from edge.hj212_source import Hj212Source, RecentFrames
from edge.sources import build_source
from tests.edge.test_hj212_source import Collected
from tests.hj212_capture import GOOD_FRAMES, MN, REJECTED, interleaved, order

pytestmark = pytest.mark.timeout(60)


def frame(qn: str = "20240501100000000", data_time: str = "20240501100000", cn: str = "2011",
          **cp: str) -> bytes:
    """A dust station's upload asking for the 9014 answer."""
    return build(qn=qn, st="39", cn=cn, pw="123456", mn=MN, flag=5,
                 cp={"DataTime": data_time, **cp})


async def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Wait for a condition with a deadline."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - counters have no event to await
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def station_link() -> AsyncIterator[tuple[Hj212Source, Collected, socket.socket]]:
    """An hj212-tcp bus built as the agent builds it, and a station connected to it."""
    sink = Collected()
    port = free_port()
    bus = Hj212TcpBus(name="env", type="hj212-tcp", host="127.0.0.1", port=port)
    source = build_source(bus, [DeviceSection(id="dust-1", bus="env", profile="dust-hj212",
                                              mn=MN)], sink)
    assert isinstance(source, Hj212Source)
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: source.bound_port, "listening")
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        try:
            yield source, sink, sock
        finally:
            sock.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def collector_accepts(readings: list[Reading]) -> int:
    """How many readings a collector takes from an envelope of these (raises if it refuses)."""
    payload = contract.envelope("gw-1", contract.DATA, 1, 1_700_000_000_000,
                                contract.encode_batch(readings))
    received = contract.decode(contract.topic("gw-1", contract.DATA), payload)
    return len(received.message.readings)  # type: ignore[union-attr]


def test_gateway_reads_the_interleaved_capture_as_decode_hj212_does() -> None:
    async def scenario() -> tuple[Hj212Source, Collected]:
        async with station_link() as (source, sink, sock):
            data = interleaved()
            loop = asyncio.get_running_loop()
            for i in range(0, len(data), 97):  # chunks that cut frames anywhere
                await loop.sock_sendall(sock, data[i:i + 97])
            await until(lambda: source.counters["frames"] == GOOD_FRAMES, "19 frames")
            await until(lambda: source.counters["rejected"] == sum(REJECTED.values()),
                        "the rejected ones")
            return source, sink

    source, sink = asyncio.run(scenario())
    assert [r.values["pm10"] for r in sink.readings] == [80.0 + i for i in order()]
    assert source.counters["answers"] == GOOD_FRAMES
    assert {k: v for k, v in source.counters.items() if k.startswith("rejected_") and v} == {
        f"rejected_{reason}": n for reason, n in REJECTED.items()}


def test_a_resent_frame_is_answered_again_but_stored_once() -> None:
    async def scenario() -> tuple[Hj212Source, Collected]:
        async with station_link() as (source, sink, sock):
            loop = asyncio.get_running_loop()
            first = frame(**{"a34002-Rtd": "85", "a34002-Flag": "N"})
            for data in (first, first, first,  # the station missed our answer twice
                         frame(qn="20240501100100000", data_time="20240501100100",
                               **{"a34002-Rtd": "86", "a34002-Flag": "N"}),
                         first):  # still inside the window: still a copy
                await loop.sock_sendall(sock, data)
            await until(lambda: source.counters["answers"] == 5, "five answers")
            return source, sink

    source, sink = asyncio.run(scenario())
    assert [r.values for r in sink.readings] == [{"pm10": 85.0}, {"pm10": 86.0}]
    assert (source.counters["frames"], source.counters["rejected_duplicate"]) == (5, 3)
    assert source.device_health()["dust-1"]["duplicates"] == 3


def test_recent_frames_window_is_bounded() -> None:
    recent = RecentFrames(size=2)
    keys = [(MN, f"q{i}", "2011", f"t{i}", i) for i in range(3)]
    assert [recent.repeat(k) for k in keys] == [False, False, False]
    assert recent.repeat(keys[2]) and recent.repeat(keys[1])
    assert not recent.repeat(keys[0])  # forgotten after two newer frames


def test_bad_times_flags_and_values_cost_only_their_own_reading() -> None:
    async def scenario() -> tuple[Hj212Source, Collected]:
        async with station_link() as (source, sink, sock):
            loop = asyncio.get_running_loop()
            for data in (
                frame(qn="1", data_time="19690101000000", **{"a34002-Rtd": "85"}),
                frame(qn="2", data_time="20241341000000", **{"a34002-Rtd": "85"}),
                frame(qn="3", **{"a34002-Rtd": "85", "a34002-Flag": "NNNNNNNNN",
                                 "a01001-Rtd": "21.5", "a01001-Flag": "N"}),
                frame(qn="4", **{"a34002-Rtd": "1e300", "a34004-Rtd": "40"}),
                frame(qn="5", cn="2081", RestartTime="20240501090000"),
            ):
                await loop.sock_sendall(sock, data)
            await until(lambda: source.counters["answers"] == 5, "five answers")
            return source, sink

    source, sink = asyncio.run(scenario())
    readings = sink.readings
    assert [(r.values, r.quality, r.source_flag) for r in readings] == [
        ({"pm10": 85.0}, Quality.UNCERTAIN, None),  # a flag no reading can carry
        ({"temperature": 21.5}, Quality.GOOD, "N"),
        ({"pm2_5": 40.0}, Quality.GOOD, None),  # pm10 = 1e300 left out, its neighbour kept
    ]
    assert all(contract.reading_problem(r) is None for r in readings)
    assert collector_accepts(readings) == 3
    counters = source.counters
    assert (counters["rejected_bad_time"], counters["rejected_unknown_cn"]) == (2, 1)
    assert (counters["bad_flags"], counters["bad_values"]) == (1, 1)
    assert "contract_refused" not in counters  # the normaliser decided first
