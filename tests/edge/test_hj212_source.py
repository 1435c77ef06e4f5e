"""The HJ 212 gateway source on a real pty and real TCP: partial frames, garbage, unplug, 9014."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from devices.hj212 import StreamDecoder, build, parse, split
from devices.model import Action, Event, Quality, Reading
from devices.sim.ptylink import PtyLink
from edge.config import DeviceSection, Hj212SerialBus, Hj212TcpBus
from edge.hj212_source import Hj212Source, Hj212Timing, reopen_delay

MN_DUST = "010000A8900016F000169DC0"
MN_BOILER = "88888880000001"
FAST = Hj212Timing(reopen_min=0.05, reopen_max=0.2, port_check=0.1)


def devices(bus: str) -> list[DeviceSection]:
    """A dust station and a boiler station on one bus."""
    return [DeviceSection(id="dust-1", bus=bus, profile="dust-hj212", mn=MN_DUST),
            DeviceSection(id="boiler-1", bus=bus, profile="boiler-hj212", mn=MN_BOILER)]


def dust_frame(pm10: str = "85", flag: int = 5, flag_pm10: str = "N",
               qn: str = "20240501100000000") -> bytes:
    """A real-time dust upload asking (Flag=5) for the data answer."""
    return build(qn=qn, st="39", cn="2011", pw="123456", mn=MN_DUST, flag=flag,
                 cp={"DataTime": "20240501100000", "a34002-Rtd": pm10,
                     "a34002-Flag": flag_pm10, "a01001-Rtd": "21.5"})


class Collected:
    """A sink that keeps everything the source hands over."""

    def __init__(self) -> None:
        self.items: list[Reading | Event] = []

    def __call__(self, items: Sequence[Reading | Event]) -> None:
        self.items.extend(items)

    @property
    def readings(self) -> list[Reading]:
        """Readings only."""
        return [i for i in self.items if isinstance(i, Reading)]

    def values(self, quantity: str) -> list[Any]:
        """Every value of a quantity, in arrival order."""
        return [r.values[quantity] for r in self.readings if quantity in r.values]


async def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Wait for a condition with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := condition()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)
    return result


@contextlib.asynccontextmanager
async def running(source: Hj212Source) -> AsyncIterator[Hj212Source]:
    """Run a source in the background for the block."""
    task = asyncio.create_task(source.run(), name="hj212-source")
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a test coroutine."""
    asyncio.run(asyncio.wait_for(coro, 30))


class LoggerEnd:
    """The data-logger end of a pty line: write frames, read answers."""

    def __init__(self, link: PtyLink) -> None:
        self.fd = os.open(link.a_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.decoder = StreamDecoder()
        self.answers: list[Any] = []

    def write(self, data: bytes) -> None:
        """Put bytes on the line."""
        os.write(self.fd, data)

    def poll_answers(self) -> int:
        """Read what came back; return the number of 9014 answers so far."""
        with contextlib.suppress(BlockingIOError):
            for item in self.decoder.feed(os.read(self.fd, 4096)):
                self.answers.append(item)
        return sum(1 for a in self.answers if getattr(a, "cn", None) == "9014")

    def close(self) -> None:
        """Close the logger's end."""
        os.close(self.fd)


def test_reopen_delay_is_full_jitter_capped() -> None:
    t = Hj212Timing(reopen_min=0.5, reopen_max=30)
    assert [reopen_delay(a, t, 0.999999) for a in (0, 1, 2)] == pytest.approx([0.5, 1, 2], 1e-3)
    assert reopen_delay(50, t, 0.999999) == pytest.approx(30, 1e-3)
    assert reopen_delay(3, t, 0.0) == 0.0


def test_device_without_mn_is_refused_with_a_clear_message() -> None:
    bus = Hj212TcpBus(name="l", type="hj212-tcp")
    with pytest.raises(ValueError, match="dust-x on HJ 212 bus l needs its mn"):
        Hj212Source(bus, [DeviceSection(id="dust-x", bus="l", profile="dust-hj212")],
                    Collected())


def test_two_devices_with_one_mn_are_refused() -> None:
    bus = Hj212TcpBus(name="l", type="hj212-tcp")
    twins = [DeviceSection(id=i, bus="l", profile="dust-hj212", mn=MN_DUST) for i in "ab"]
    with pytest.raises(ValueError, match="share mn"):
        Hj212Source(bus, twins, Collected())


def test_pty_partial_frames_garbage_and_answers(tmp_path: Path) -> None:
    path = tmp_path / "ttyHJ"

    async def scenario() -> None:
        sink = Collected()
        with PtyLink() as link:
            link.link(path)
            source = Hj212Source(Hj212SerialBus(name="l1", type="hj212-serial", port=str(path),
                                                baudrate=19200, parity="E"),
                                 devices("l1"), sink, timing=FAST)
            async with running(source):
                await until(lambda: source.counters["opens"] == 1, what="port open")
                logger = LoggerEnd(link)
                try:
                    data = dust_frame("85")
                    for i in range(0, len(data), 7):  # dribbled in 7-byte pieces
                        logger.write(data[i:i + 7])
                        await asyncio.sleep(0.005)
                    logger.write(b"\x00\xffnoise;;&&" + dust_frame("86")[:40])  # torn frame
                    logger.write(b"garbage##99" + dust_frame("87"))
                    bad = bytearray(dust_frame("88"))
                    bad[30] ^= 1
                    logger.write(bytes(bad) + dust_frame("89", flag=4))
                    await until(lambda: sink.values("pm10") == [85.0, 87.0, 89.0],
                                what="three good frames")
                    await until(lambda: logger.poll_answers() == 2, what="two 9014 answers")
                finally:
                    logger.close()
            answer = next(a for a in logger.answers if a.cn == "9014")
            assert (answer.st, answer.mn, answer.flag, answer.qn) == \
                ("91", MN_DUST, 4, "20240501100000000")
            assert source.counters["frames"] == 3
            assert source.counters["bad_frames"] >= 2
            assert source.counters["answers"] == 2

    run(scenario())


@pytest.mark.parametrize("how", ["close_and_reopen", "repoint_symlink"])
def test_unplug_and_replug_reopens_the_port(tmp_path: Path, how: str) -> None:
    path = tmp_path / "ttyUSB-logger"

    async def scenario() -> None:
        sink = Collected()
        first = PtyLink().open()
        first.link(path)
        source = Hj212Source(Hj212SerialBus(name="l1", type="hj212-serial", port=str(path)),
                             devices("l1"), sink, timing=FAST)
        second: PtyLink | None = None
        try:
            async with running(source):
                logger = LoggerEnd(first)
                await _send_until_seen(logger, sink, "61", source)
                logger.close()
                if how == "close_and_reopen":
                    first.close()  # the cable is pulled: the gateway's end reads EIO
                    path.unlink()
                    await until(lambda: source.counters["port_lost"] >= 1, what="port lost")
                    await until(lambda: source.counters["open_failures"] >= 2,
                                what="reopen attempts")
                second = PtyLink().open()
                second.link(path)  # plugged back, possibly as another device node
                if how == "repoint_symlink":
                    await until(lambda: source.counters["port_lost"] >= 1,
                                what="path change noticed")
                logger = LoggerEnd(second)
                await _send_until_seen(logger, sink, "62", source)
                logger.close()
        finally:
            first.close()
            if second is not None:
                second.close()

    run(scenario())


async def _send_until_seen(logger: LoggerEnd, sink: Collected, pm10: str,
                           source: Hj212Source) -> None:
    """Send a frame every 100 ms until the source delivered it (the port may still reopen)."""
    deadline = asyncio.get_running_loop().time() + 10
    while float(pm10) not in sink.values("pm10"):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"pm10={pm10} never arrived; counters {source.counters}")
        logger.write(dust_frame(pm10))
        await asyncio.sleep(0.1)


def test_tcp_listener_serves_many_loggers_and_answers_9014() -> None:
    async def scenario() -> None:
        sink = Collected()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        source = Hj212Source(Hj212TcpBus(name="t", type="hj212-tcp", host="127.0.0.1",
                                         port=port), devices("t"), sink, timing=FAST)
        async with running(source):
            await until(lambda: source.bound_port, what="listening")
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
            for i, (_, w) in enumerate(conns):
                data = dust_frame(str(100 + i), qn=f"2024050110000000{i}")
                w.write(b"\r\n junk " + data[:20])
                await w.drain()
                await asyncio.sleep(0.01)
                w.write(data[20:])
                await w.drain()
            for i, (r, _) in enumerate(conns):
                answer = parse(await asyncio.wait_for(r.readuntil(b"\r\n"), 5))
                assert (answer.cn, answer.qn) == ("9014", f"2024050110000000{i}")
            await until(lambda: sorted(sink.values("pm10")) == [100.0 + i for i in range(5)])
            # Unknown MN: counted, never answered.
            r, w = conns[0]
            w.write(build(qn="1", st="39", cn="2011", pw="1", mn="FFFF", flag=5,
                          cp={"a34002-Rtd": "1"}))
            await w.drain()
            await until(lambda: source.counters["unknown_mn"] == 1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r.readuntil(b"\r\n"), 0.3)
            for _, w in conns:
                w.close()
            await until(lambda: source.counters["connections"] == 5)

    run(scenario())


def test_split_uploads_flags_and_instrument_fault_events_over_tcp() -> None:
    async def scenario() -> None:
        sink = Collected()
        source = Hj212Source(Hj212TcpBus(name="t", type="hj212-tcp", host="127.0.0.1",
                                         port=_free_port()), devices("t"), sink, timing=FAST)
        async with running(source):
            await until(lambda: source.bound_port, what="listening")
            r, w = await asyncio.open_connection("127.0.0.1", source.bound_port)
            cp = {"DataTime": "20240501100000"}
            for code in ("a21002", "a21026", "a34013"):
                cp |= {f"{code}-Rtd": "40", f"{code}-ZsRtd": "52", f"{code}-Flag": "D"}
            packets = split(st="31", cn="2011", pw="1", mn=MN_BOILER, cp=cp,
                            qn="20240501100000111", flag=5, max_segment=180)
            assert len(packets) > 1
            w.write(b"".join(packets))
            await w.drain()
            for _ in packets:  # each packet asking for it gets its answer
                assert parse(await asyncio.wait_for(r.readuntil(b"\r\n"), 5)).cn == "9014"
            await until(lambda: sink.readings)
            (reading,) = sink.readings
            assert (reading.device, reading.quality, reading.source_flag) == \
                ("boiler-1", Quality.BAD, "D")
            assert reading.values["nox_converted"] == 52.0
            events = [i for i in sink.items if isinstance(i, Event)]
            assert [(e.kind, e.action) for e in events] == [("instrument_fault", Action.RAISE)]
            w.write(build(qn="2", st="31", cn="2011", pw="1", mn=MN_BOILER, flag=4,
                          cp={"a21002-Rtd": "10", "a21002-Flag": "N"}))
            await w.drain()
            await until(lambda: len([i for i in sink.items if isinstance(i, Event)]) == 2)
            assert source.device_health()["boiler-1"]["online"] is True
            w.close()

    run(scenario())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
