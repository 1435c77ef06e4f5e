"""Commands to an HJ 212 station at the gateway, on a real pty: the station simulator on the
other end (or a scripted logger), the durable command book, and the replies a collector gets."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devices.commands import DeviceCommand
from devices.hj212 import Frame, StreamDecoder, build
from devices.hj212.exchange import from_local_time
from devices.model import Reading
from devices.sim.environment import StationSim, build_parser, run_serial, run_tcp
from devices.sim.ptylink import PtyLink
from edge.clock import now_ms
from edge.command_book import CommandBook
from edge.commands import CommandRunner
from edge.config import DeviceSection, Hj212SerialBus, Hj212TcpBus
from edge.hj212_source import Hj212Source, Hj212Timing
from tests.edge.test_device_commands import Replies
from tests.edge.test_hj212_source import Collected, until

MN = "DUST0000000000000000001A"
FAST = Hj212Timing(reopen_min=0.05, reopen_max=0.2, port_check=0.1)


@dataclass
class Rig:
    source: Hj212Source
    runner: CommandRunner
    replies: Replies
    sink: Collected
    synced: list[bool]

    def send(self, ident: str, op: str, args: dict[str, Any], ttl_ms: int = 30_000) -> None:
        now = now_ms()
        self.runner.handle(DeviceCommand(ident, ident, "dust-1", op, args, "ops-anna", now,
                                         now + ttl_ms).to_json())

    async def final(self, ident: str, timeout: float = 10.0) -> dict[str, Any]:
        await until(lambda: self.replies.final(ident), timeout, f"the result of {ident}")
        out: dict[str, Any] = self.replies.final(ident)  # type: ignore[assignment]
        return out


@contextlib.asynccontextmanager
async def station_line(tmp: Path, *, pw: str | None = None,
                       timeout: float = 0.5) -> AsyncIterator[Rig]:
    """A gateway's HJ 212 bus on `tmp/ttyHJ` with one dust station, and its command runner."""
    sink = Collected()
    dev = DeviceSection(id="dust-1", bus="l1", profile="dust-hj212", mn=MN, pw=pw,
                        response_timeout=timeout)  # type: ignore[arg-type]
    source = Hj212Source(Hj212SerialBus(name="l1", type="hj212-serial",
                                        port=str(tmp / "ttyHJ")), [dev], sink, timing=FAST)
    replies = Replies()
    book = CommandBook(tmp / "commands.sqlite").open()
    synced = [True]
    runner = CommandRunner("gw1", book, [source], replies, clock_synced=lambda: synced[0])
    tasks = [asyncio.create_task(source.run()), asyncio.create_task(runner.run())]
    try:
        yield Rig(source, runner, replies, sink, synced)
    finally:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        book.close()


@contextlib.asynccontextmanager
async def simulator(tmp: Path, sim: StationSim) -> AsyncIterator[Any]:
    """The station simulator's serial transport on a pty linked at `tmp/ttyHJ`."""
    args = build_parser().parse_args(["--kind", "dust", "--mn", MN, "--pty",
                                      str(tmp / "ttyHJ"), "--interval", "1h"])
    stop = asyncio.Event()
    task = asyncio.create_task(run_serial(sim, args, stop))
    await until((tmp / "ttyHJ").exists, what="the simulator's line")
    try:
        yield sim
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 40))


async def online(rig: Rig) -> None:
    await until(lambda: rig.source.counters["opens"] >= 1, what="the station's line")


def test_read_params_returns_the_station_time_and_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        sim = StationSim(kind="dust", mn=MN, rtd_interval=30)
        async with simulator(tmp_path, sim), station_line(tmp_path) as rig:
            await online(rig)
            rig.send("c-1", "read_params", {})
            done = await rig.final("c-1")
            assert done["status"] == "done", done
            value = done["value"]
            assert value["rtd_interval"] == 30
            assert abs(value["time"] - now_ms()) < 5000
            assert len(value["SystemTime"]) == 14
            assert rig.replies.statuses("c-1") == ["accepted", "done"]
            assert rig.source.counters["requests"] == 2  # 1011 then 1061
            assert rig.source.counters["command_replies"] == 6  # 9011, reply, 9012 each
            assert rig.source.counters["rejected_unknown_cn"] == 0  # never taken for data

    run(scenario())


def test_set_time_uses_the_synced_clock_an_explicit_time_or_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        sim = StationSim(kind="dust", mn=MN, clock_offset_s=-600.0)  # ten minutes slow
        async with simulator(tmp_path, sim), station_line(tmp_path) as rig:
            await online(rig)
            rig.send("c-now", "set_time", {})
            done = await rig.final("c-now")
            assert done["status"] == "done", done
            assert abs(sim.clock_offset_s) < 3  # whole seconds on the wire
            ahead = now_ms() + 3_600_000
            rig.send("c-at", "set_time", {"time": ahead})
            done = await rig.final("c-at")
            assert done["status"] == "done" and done["value"]["time"] == ahead
            assert abs(sim.clock_offset_s - 3600) < 3
            rig.synced[0] = False  # the gateway knows its own clock is not synchronised
            asked = rig.source.counters["requests"]
            rig.send("c-unsynced", "set_time", {})
            refused = await rig.final("c-unsynced")
            assert refused["status"] == "failed" and refused["reason"] == "clock_not_synced"
            assert rig.source.counters["requests"] == asked  # nothing went to the station
            rig.send("c-explicit", "set_time", {"time": "2026-01-01T00:00:00Z"})
            assert (await rig.final("c-explicit"))["status"] == "done"

    run(scenario())


def test_set_rtd_interval_changes_the_station_real_time_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        sim = StationSim(kind="dust", mn=MN, rtd_interval=3600)
        async with simulator(tmp_path, sim), station_line(tmp_path) as rig:
            await online(rig)
            rig.send("c-set", "set_rtd_interval", {"rtd_interval": 60})
            done = await rig.final("c-set")
            assert done["status"] == "done", done
            assert done["value"] == {"rtd_interval": 60, "exe_rtn": 1}
            assert (sim.rtd_interval, sim.rtd_interval_set) == (60, True)
            rig.send("c-read", "read_params", {"params": ["rtd_interval"]})
            assert (await rig.final("c-read"))["value"] == {"rtd_interval": 60}
            asked = rig.source.counters["requests"]
            rig.send("c-bad", "set_rtd_interval", {"rtd_interval": 5})  # checked again here
            refused = await rig.final("c-bad")
            assert refused["status"] == "failed" and refused["reason"] == "bad_command"
            assert rig.source.counters["requests"] == asked and sim.rtd_interval == 60

    run(scenario())


def test_request_history_stores_the_station_frames_and_counts_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        sim = StationSim(kind="dust", mn=MN, seed=5)
        base = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
        for minute in range(10):  # the logger remembers ten minutes the gateway never got
            sim.frames("2051", base + timedelta(minutes=minute))
        begin = int((base + timedelta(minutes=2)).timestamp() * 1000)
        end = begin + 4 * 60_000
        async with simulator(tmp_path, sim), station_line(tmp_path) as rig:
            await online(rig)
            rig.send("c-h", "request_history", {"cn": "2051", "begin": begin, "end": end})
            done = await rig.final("c-h")
            assert done["status"] == "done", done
            assert done["value"] == {"frames": 5, "exe_rtn": 1, "cn": "2051"}
            minutes = sorted({r.ts for r in rig.sink.readings if r.device == "dust-1:min"})
            assert minutes == list(range(begin, end + 1, 60_000))
            assert all(isinstance(r, Reading) and r.station_time for r in rig.sink.readings
                       if r.device == "dust-1:min")
            rig.send("c-none", "request_history", {"cn": "2061", "begin": begin, "end": end})
            none = await rig.final("c-none")
            assert none["status"] == "failed" and none["reason"] == "execution_failed"
            assert "ExeRtn=100 (no data" in none["message"]

    run(scenario())


def test_a_wrong_password_and_a_silent_station_fail_with_stable_reasons(tmp_path: Path) -> None:
    async def scenario() -> None:
        sim = StationSim(kind="dust", mn=MN, pw="654321")
        async with simulator(tmp_path, sim), station_line(tmp_path, timeout=0.4) as rig:
            await online(rig)
            rig.send("c-pw", "read_params", {"params": ["time"]})
            refused = await rig.final("c-pw")
            assert refused["status"] == "failed" and refused["reason"] == "wrong_password"
            assert "QnRtn=3" in refused["message"]
        with PtyLink() as link:  # a line whose logger hears nothing and answers nothing
            link.link(tmp_path / "ttyHJ")
            async with station_line(tmp_path, timeout=0.4) as rig:
                await until(lambda: rig.source.counters["opens"] >= 1, what="the port")
                started = asyncio.get_running_loop().time()
                rig.send("c-silent", "read_params", {"params": ["time"]})
                silent = await rig.final("c-silent")
                took = asyncio.get_running_loop().time() - started
            assert silent["status"] == "failed" and silent["reason"] == "no_answer", silent
            assert "no request answer (9011)" in silent["message"]
            assert 0.3 < took < 3
            assert rig.source.counters["no_answer"] == 1

    run(scenario())


class ScriptedLogger:
    """The logger end of a pty that records requests and answers only when told to."""

    def __init__(self, link: PtyLink) -> None:
        self.fd = os.open(link.a_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.decoder = StreamDecoder()
        self.requests: list[Frame] = []

    def poll(self) -> int:
        with contextlib.suppress(BlockingIOError):
            for item in self.decoder.feed(os.read(self.fd, 4096)):
                if isinstance(item, Frame):
                    self.requests.append(item)
        return len(self.requests)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def answer(self, req: Frame) -> None:
        for cn, cp in (("9011", {"QnRtn": "1"}), ("1011", {"SystemTime": "20260101080000"}),
                       ("9012", {"ExeRtn": "1"})):
            self.write(build(qn=req.qn, st="91", cn=cn, pw="123456", mn=MN, flag=4, cp=cp))

    def close(self) -> None:
        os.close(self.fd)


def test_commands_on_one_line_run_one_at_a_time_and_bad_args_never_reach_it(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with station_line(tmp_path, timeout=2.0) as rig:
            with PtyLink() as link:
                link.link(tmp_path / "ttyHJ")
                await until(lambda: rig.source.counters["opens"] >= 1, what="the port")
                logger = ScriptedLogger(link)
                try:
                    rig.send("c-bad", "request_history",
                             {"cn": "2051", "begin": 1_764_000_000_000,
                              "end": 1_764_000_000_000 + 8 * 86_400_000})
                    bad = await rig.final("c-bad")
                    assert bad["status"] == "failed" and bad["reason"] == "bad_command"
                    assert "at most 7 days" in bad["message"]
                    assert rig.runner.counters["bad_args"] == 1
                    rig.send("c-a", "read_params", {"params": ["time"]})
                    rig.send("c-b", "read_params", {"params": ["time"]})
                    await until(lambda: logger.poll() >= 1, what="the first request")
                    loop = asyncio.get_running_loop()
                    end = loop.time() + 0.3  # the second must not come while one is open
                    while loop.time() < end:
                        assert logger.poll() == 1
                        await asyncio.sleep(0.02)
                    logger.answer(logger.requests[0])
                    await until(lambda: logger.poll() >= 2, what="the second request")
                    assert logger.requests[1].qn != logger.requests[0].qn
                    logger.answer(logger.requests[1])
                    for ident in ("c-a", "c-b"):
                        done = await rig.final(ident)
                        assert done["status"] == "done"
                        assert done["value"]["time"] == from_local_time("20260101080000", 480)
                    assert [r.cn for r in logger.requests] == ["1011", "1011"]
                    assert all(r.pw == "123456" and r.mn == MN and r.st == "39" and r.flag == 5
                               for r in logger.requests)
                finally:
                    logger.close()

    run(scenario())


def test_a_tcp_station_is_waited_for_within_its_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        dev = DeviceSection(id="dust-1", bus="tcp", profile="dust-hj212", mn=MN,
                            response_timeout=1.5)  # type: ignore[arg-type]
        source = Hj212Source(Hj212TcpBus(name="tcp", type="hj212-tcp", host="127.0.0.1",
                                         port=0), [dev], Collected(), timing=FAST)
        replies = Replies()
        book = CommandBook(tmp_path / "commands.sqlite").open()
        runner = CommandRunner("gw1", book, [source], replies)
        tasks = [asyncio.create_task(source.run()), asyncio.create_task(runner.run())]
        rig = Rig(source, runner, replies, Collected(), [True])
        try:
            await until(lambda: source.bound_port, what="the listener")
            rig.send("c-early", "read_params", {"params": ["rtd_interval"]})
            await until(lambda: rig.replies.statuses("c-early") == ["accepted"], what="accepted")
            sim = StationSim(kind="dust", mn=MN, rtd_interval=15)
            args = build_parser().parse_args(["--kind", "dust", "--mn", MN, "--tcp",
                                              f"127.0.0.1:{source.bound_port}",
                                              "--interval", "1h"])
            stop = asyncio.Event()
            station = asyncio.create_task(run_tcp(sim, args, stop))
            done = await rig.final("c-early")
            assert done["status"] == "done" and done["value"] == {"rtd_interval": 15}, done
            stop.set()
            await asyncio.wait_for(station, 5)
            await until(lambda: source.line_of(source.stations[MN]) is None, what="hang-up")
            rig.send("c-gone", "read_params", {"params": ["time"]})
            gone = await rig.final("c-gone", timeout=10)
            assert gone["status"] == "failed" and gone["reason"] == "no_answer"
            assert "not connected (waited 1.5 s)" in gone["message"]
        finally:
            for t in tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            book.close()

    run(scenario())


def test_a_station_that_never_stops_sending_history_is_cut_off(tmp_path: Path,
                                                                monkeypatch: Any) -> None:
    from edge import hj212_commands

    monkeypatch.setattr(hj212_commands, "MAX_EXCHANGE_S", 1.0)

    async def scenario() -> None:
        async with station_line(tmp_path, timeout=0.5) as rig:
            with PtyLink() as link:
                link.link(tmp_path / "ttyHJ")
                await until(lambda: rig.source.counters["opens"] >= 1, what="the port")
                logger = ScriptedLogger(link)
                try:
                    begin = 1_764_000_000_000
                    rig.send("c-flood", "request_history",
                             {"cn": "2051", "begin": begin, "end": begin + 3_600_000})
                    await until(lambda: logger.poll() >= 1, what="the request")
                    req = logger.requests[0]
                    logger.write(build(qn=req.qn, st="91", cn="9011", pw="123456", mn=MN,
                                       flag=4, cp={"QnRtn": "1"}))
                    n = 0
                    while not rig.replies.final("c-flood"):  # a data frame every 0.1 s
                        n += 1
                        logger.write(build(qn=f"q{n}", st="39", cn="2051", pw="123456", mn=MN,
                                           flag=4, cp={"DataTime": "20251125000000",
                                                       "a34002-Avg": str(n)}))
                        await asyncio.sleep(0.1)
                        assert n < 50, "the exchange was never cut off"
                    flood = await rig.final("c-flood")
                    assert flood["status"] == "failed" and flood["reason"] == "no_answer"
                    assert "within 1 s in all" in flood["message"]
                finally:
                    logger.close()

    run(scenario())
