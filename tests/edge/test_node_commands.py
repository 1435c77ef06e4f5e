"""Parking node commands at the gateway: the command runner and its book on disk, the CoAP
endpoint's report handling (sans-IO) and simulated nodes (devices/sim/parking.py) that apply
what a reply carries and acknowledge it in their next report."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from devices.commands import DeviceCommand
from devices.parking import MessageType, encode_coap_body, response_command
from devices.sim.parking import SensorSim
from edge.clock import now_ms
from edge.command_book import CommandBook
from edge.commands import CommandRunner
from edge.config import CoapBus, Seconds
from edge.node_commands import ACK_GRACE_MS, MAX_WAITING
from edge.parking_source import CoapSource


class Replies:
    """What the runner published, decoded; every message acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    def __call__(self, payload: bytes) -> int:
        self.sent.append(orjson.loads(payload))
        return len(self.sent)

    def final(self, ident: str) -> dict[str, object] | None:
        done = [r["detail"] for r in self.sent if r["id"] == ident and
                r["detail"]["status"] != "accepted"]  # type: ignore[index]
        return done[-1] if done else None  # type: ignore[return-value]


class Node:
    """A simulated node reporting to the endpoint; `lose` drops the reply on the way back."""

    def __init__(self, source: CoapSource, sid: int) -> None:
        self.source, self.sim, self.rng = source, SensorSim(sid), random.Random(sid)

    def report(self, lose: bool = False) -> bytes:
        payload = encode_coap_body(self.sim.report(MessageType.HEARTBEAT, self.rng))
        answer = self.source.handle(42, payload)
        assert answer.code == "CHANGED"
        if not lose:
            self.sim.answered(answer.payload)
        return answer.payload


def command(ident: str, op: str, args: dict[str, object], device: str = "pk-1001",
            ttl_ms: int = 60_000, key: str | None = None) -> bytes:
    now = now_ms()
    return DeviceCommand(ident, key or ident, device, op, args, "ops-anna", now,
                         now + ttl_ms).to_json()


async def until(condition: object, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def gateway(tmp: Path) -> AsyncIterator[tuple[CoapSource, CommandRunner, Replies]]:
    source = CoapSource(CoapBus(name="nb", type="coap", host="127.0.0.1", port=1,
                                heartbeat=Seconds(600)), [], lambda items: None)
    book = CommandBook(tmp / "commands.sqlite").open()
    replies = Replies()
    runner = CommandRunner("gw1", book, [source], replies)
    task = asyncio.create_task(runner.run())
    try:
        yield source, runner, replies
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        book.close()


def test_one_command_per_node_delivered_in_the_reply_and_done_with_the_ack(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as (source, runner, replies):
            a, b = Node(source, 1001), Node(source, 1002)
            runner.handle(command("c1", "configure", {"heartbeat_s": 900, "enter_mg": 80}))
            runner.handle(command("c2", "recalibrate", {}))
            runner.handle(command("c3", "configure", {"settle_mg": 20}, device="pk-1002"))
            await until(lambda: source.node_commands.waiting(1001) == 2)
            first = response_command(a.report())
            assert first is not None and first.settings == ((1, 900), (2, 80))
            assert a.sim.settings["heartbeat_s"] == 900 and a.sim.ack is not None
            assert response_command(b.report()) is not None  # another node is not held up
            second = response_command(a.report())  # acks c1; c2 goes out only now
            await until(lambda: replies.final("c1") is not None)
            assert replies.final("c1")["status"] == "done"  # type: ignore[index]
            value = replies.final("c1")["value"]  # type: ignore[index]
            assert value["settings"]["heartbeat_s"] == 900  # type: ignore[index]
            assert value["settings"]["enter_mg"] == 80  # type: ignore[index]
            assert second is not None and second.op == 2
            assert response_command(a.report()) is None
            await until(lambda: replies.final("c2") is not None)
            done = replies.final("c2")
            assert done["status"] == "done", done  # type: ignore[index]
            assert done["value"]["baseline"] == list(a.sim.baseline)  # type: ignore[index]
            b.report()
            await until(lambda: replies.final("c3") is not None)
            assert a.sim.settings["heartbeat_s"] == 900  # the bus's 600 s no longer applies
            assert source.counters["commands_delivered"] == 3
            assert source.counters["commands_acked"] == 3

    asyncio.run(main())


def test_a_node_refusal_fails_the_command_with_its_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as (source, runner, replies):
            node = Node(source, 1001)
            runner.handle(command("c1", "configure", {"leave_mg": 70}))  # above enter_mg 60
            await until(lambda: source.node_commands.waiting(1001) == 1)
            node.report()
            node.report()
            await until(lambda: replies.final("c1") is not None)
            assert replies.final("c1")["status"] == "failed"  # type: ignore[index]
            assert replies.final("c1")["reason"] == "inconsistent"  # type: ignore[index]
            assert node.sim.settings["leave_mg"] == 35

    asyncio.run(main())


def test_hostile_args_and_foreign_devices_fail_at_the_gateway_before_any_delivery(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as (source, runner, replies):
            node = Node(source, 1001)
            runner.handle(command("c1", "configure", {"heartbeat_s": "900; reboot"}))
            runner.handle(command("c2", "configure", {"heartbeat_s": 10**12}))
            runner.handle(command("c3", "recalibrate", {}, device="lift-1"))
            runner.handle(command("c4", "recalibrate", {}, device="pk-99999999999"))
            await until(lambda: all(replies.final(c) for c in ("c1", "c2", "c3", "c4")))
            reasons = [replies.final(c)["reason"]  # type: ignore[index]
                       for c in ("c1", "c2", "c3", "c4")]
            assert reasons == ["bad_value", "out_of_range", "unknown_device", "unknown_device"]
            assert response_command(node.report()) is None
            assert runner.counters["failed"] == 4

    asyncio.run(main())


def test_a_command_whose_node_does_not_report_before_its_expiry_is_never_delivered(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as (source, runner, replies):
            node = Node(source, 1001)
            runner.handle(command("c1", "recalibrate", {}, ttl_ms=150))
            runner.handle(command("c2", "configure", {"settle_mg": 30}, ttl_ms=150))
            runner.handle(command("c3", "configure", {"settle_mg": 40}, ttl_ms=60_000))
            runner.handle(command("c4", "recalibrate", {}, device="pk-1002", ttl_ms=150))
            await until(lambda: source.node_commands.waiting(1001) == 3)
            start = now_ms()
            await until(lambda: now_ms() >= start + 200)
            late = response_command(node.report())  # c1 and c2 expired, c3 goes out
            assert late is not None and late.settings == ((6, 40),)
            await until(lambda: replies.final("c2") is not None)
            assert replies.final("c1")["status"] == "expired"  # type: ignore[index]
            assert replies.final("c2")["status"] == "expired"  # type: ignore[index]
            assert node.sim.commands_applied == 1 and node.sim.settings["settle_mg"] == 40
            source.node_commands.sweep(now_ms())  # pk-1002 never reported
            await until(lambda: replies.final("c4") is not None)
            assert replies.final("c4")["status"] == "expired"  # type: ignore[index]
            assert source.node_commands.waiting(1002) == 0
            assert source.counters["commands_expired"] == 3

    asyncio.run(main())


def test_delivered_but_unacknowledged_is_delivered_again_until_it_expires(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as (source, runner, replies):
            node = Node(source, 1001)
            runner.handle(command("c1", "configure", {"settle_mg": 30}, ttl_ms=300))
            await until(lambda: source.node_commands.waiting(1001) == 1)
            assert response_command(node.report(lose=True)) is not None  # reply lost
            assert response_command(node.report(lose=True)) is not None  # delivered again
            start = now_ms()
            await until(lambda: now_ms() >= start + 350)
            assert response_command(node.report()) is None  # never after the expiry
            await until(lambda: replies.final("c1") is not None)
            assert replies.final("c1")["reason"] == "not_acknowledged"  # type: ignore[index]
            assert node.sim.commands_applied == 0

    asyncio.run(main())


def test_a_node_that_goes_silent_after_a_delivery_fails_no_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as (source, runner, replies):
            node = Node(source, 1001)
            runner.handle(command("c1", "recalibrate", {}, ttl_ms=1000))
            await until(lambda: source.node_commands.waiting(1001) == 1)
            node.report()
            source.node_commands.sweep(now_ms() + 2000)  # expired: the ack may still come
            assert source.node_commands.waiting(1001) == 1
            source.node_commands.sweep(now_ms() + 2000 + ACK_GRACE_MS)
            await until(lambda: replies.final("c1") is not None)
            assert replies.final("c1")["reason"] == "no_answer"  # type: ignore[index]

    asyncio.run(main())


def test_after_a_restart_a_delivered_command_is_delivered_again_and_applied_once(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as (source, runner, replies):
            lost, kept = Node(source, 1001), Node(source, 1002)
            runner.handle(command("c1", "recalibrate", {}))
            runner.handle(command("c2", "configure", {"settle_mg": 25}, device="pk-1002"))
            await until(lambda: source.node_commands.waiting(1001) == 1
                        and source.node_commands.waiting(1002) == 1)
            lost.report(lose=True)  # delivered, the reply never arrives
            kept.report()  # applied; the ack waits for the node's next report
            assert kept.sim.commands_applied == 1 and lost.sim.commands_applied == 0
        async with gateway(tmp_path) as (source, runner, replies):  # the gateway restarted
            lost.source = kept.source = source
            runner.resume()
            await until(lambda: source.node_commands.waiting(1001) == 1
                        and source.node_commands.waiting(1002) == 1)
            again = response_command(lost.report())
            assert again is not None and again.op == 2
            assert response_command(kept.report()) is None  # its ack finishes it
            lost.report()
            await until(lambda: replies.final("c1") is not None
                        and replies.final("c2") is not None)
            finals = [replies.final(c) or {} for c in ("c1", "c2")]
            assert [f["status"] for f in finals] == ["done", "done"]
            assert lost.sim.commands_applied == 1 and kept.sim.commands_applied == 1
            assert source.counters["commands_delivered"] == 1

    asyncio.run(main())


def test_a_node_holds_at_most_max_waiting_commands(tmp_path: Path) -> None:
    async def main() -> None:
        async with gateway(tmp_path) as (source, runner, replies):
            for i in range(MAX_WAITING + 2):
                runner.handle(command(f"c{i}", "configure", {"settle_mg": 20 + i}))
            await until(lambda: replies.final(f"c{MAX_WAITING + 1}") is not None)
            assert source.node_commands.waiting(1001) == MAX_WAITING
            busy = [replies.final(f"c{i}") for i in range(MAX_WAITING, MAX_WAITING + 2)]
            assert [b["reason"] for b in busy] == ["node_busy"] * 2  # type: ignore[index]
            assert source.counters["commands_refused_busy"] == 2

    asyncio.run(main())
