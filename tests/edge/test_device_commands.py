"""Device commands at the gateway: a real bus polling the Modbus TCP lift simulator, the
durable command book on disk, and the replies a collector would receive."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from devices.commands import DeviceCommand
from devices.sim.elevator import ElevatorBank, make_bank, serve_tcp
from edge.bus import ModbusBus
from edge.clock import now_ms
from edge.command_book import CommandBook
from edge.commands import CommandRunner
from edge.config import DeviceSection, ModbusTcpBus, PositiveSeconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replies:
    """What the runner published, decoded; every message acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.runner: CommandRunner | None = None

    def __call__(self, payload: bytes) -> int:
        self.sent.append(orjson.loads(payload))
        return len(self.sent)

    def statuses(self, ident: str) -> list[object]:
        return [r["detail"]["status"] for r in self.sent  # type: ignore[index]
                if r["id"] == ident]

    def final(self, ident: str) -> dict[str, object] | None:
        done = [r["detail"] for r in self.sent if r["id"] == ident and
                r["detail"]["status"] != "accepted"]  # type: ignore[index]
        return done[-1] if done else None  # type: ignore[return-value]


def command(ident: str, point: str, value: object, ttl_ms: int = 60_000,
            key: str | None = None) -> bytes:
    now = now_ms()
    return DeviceCommand(ident, key or ident, "lift1", "write", {"point": point, "value": value},
                         "ops-anna", now, now + ttl_ms).to_json()


@contextlib.asynccontextmanager
async def lift_line(tmp: Path) -> AsyncIterator[tuple[ElevatorBank, ModbusBus, CommandRunner,
                                                       Replies]]:
    bank = make_bank([1], static=True)
    port = free_port()
    started = asyncio.Event()
    server = asyncio.create_task(serve_tcp(bank, "127.0.0.1", port, started=started))
    await asyncio.wait_for(started.wait(), 5)
    bus = ModbusBus(ModbusTcpBus(name="tcp", host="127.0.0.1", port=port),
                    [DeviceSection(id="lift1", bus="tcp", profile="elevator-gbt24476", unit=1,
                                   poll=PositiveSeconds(0.3))], lambda items: None)
    replies = Replies()
    book = CommandBook(tmp / "commands.sqlite").open()
    runner = CommandRunner("gw1", book, [bus], replies)
    tasks = [asyncio.create_task(bus.run()), asyncio.create_task(runner.run())]
    try:
        yield bank, bus, runner, replies
    finally:
        for t in [*tasks, server]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        book.close()


async def until(condition: object, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_a_write_reaches_the_lift_is_read_back_and_runs_once_per_key(tmp_path: Path) -> None:
    async def main() -> None:
        async with lift_line(tmp_path) as (bank, bus, runner, replies):
            runner.handle(command("c1", "home_floor", 7))
            await until(lambda: replies.final("c1") is not None)
            assert replies.statuses("c1")[0] == "accepted"
            assert replies.final("c1") == {"cv": 1, "status": "done", "at": pytest.approx(
                now_ms(), abs=5000), "value": 7}
            assert bank.models[1].values["home_floor"] == 7 and bank.writes == 1
            runner.handle(command("c1-again", "home_floor", 9, key="c1"))  # same key
            await asyncio.sleep(0.8)  # two poll cycles: a second write would have run
            assert bank.writes == 1 and bank.models[1].values["home_floor"] == 7
            assert runner.counters["duplicates"] == 1
            assert bus.counters["writes"] == 1

    asyncio.run(main())


@pytest.mark.parametrize(("point", "value", "reason"), [
    ("safety_circuit", False, "not_writable"), ("home_floor", 500, "out_of_range"),
    ("service_mode", 3, "not_allowed")])
def test_refused_writes_never_reach_the_bus(tmp_path: Path, point: str, value: object,
                                            reason: str) -> None:
    async def main() -> None:
        async with lift_line(tmp_path) as (bank, _bus, _runner, replies):
            _runner.handle(command("c2", point, value))
            await until(lambda: replies.final("c2") is not None)
            final = replies.final("c2")
            assert final is not None and (final["status"], final["reason"]) == ("failed", reason)
            assert bank.writes == 0

    asyncio.run(main())


def test_an_expired_command_is_reported_expired_and_never_written(tmp_path: Path) -> None:
    async def main() -> None:
        async with lift_line(tmp_path) as (bank, _bus, runner, replies):
            now = now_ms()
            late = DeviceCommand("c3", "c3", "lift1", "write", {"point": "home_floor",
                                                                "value": 4}, "ops", now - 2000,
                                 now - 1).to_json()
            runner.handle(late)
            await until(lambda: replies.statuses("c3") == ["expired"])
            await asyncio.sleep(0.7)
            assert bank.writes == 0 and bank.models[1].values["home_floor"] == 1

    asyncio.run(main())


def test_a_restart_resumes_waiting_commands_and_fails_interrupted_ones(tmp_path: Path) -> None:
    now = now_ms()
    book = CommandBook(tmp_path / "commands.sqlite").open()
    for key, ttl in (("wait", 60_000), ("overdue", 300)):
        book.admit(DeviceCommand(key, key, "lift1", "write", {"point": "home_floor",
                                                              "value": 3}, "ops", now,
                                 now + ttl), now)
    book.admit(DeviceCommand("cut", "cut", "lift1", "write", {"point": "home_floor",
                                                              "value": 5}, "ops", now,
                             now + 60_000), now)
    assert book.start("cut", now)  # the gateway died during this transaction
    book.close()

    async def main() -> None:
        await asyncio.sleep(0.35)  # the overdue one's expiry passes while "offline"
        async with lift_line(tmp_path) as (bank, _bus, _runner, replies):
            await until(lambda: all(replies.final(k) for k in ("wait", "overdue", "cut")))
            assert replies.final("wait")["status"] == "done"  # type: ignore[index]
            assert replies.final("overdue")["status"] == "expired"  # type: ignore[index]
            cut = replies.final("cut")
            assert cut is not None and (cut["status"], cut["reason"]) == ("failed",
                                                                          "interrupted")
            assert bank.writes == 1 and bank.models[1].values["home_floor"] == 3

    asyncio.run(main())
