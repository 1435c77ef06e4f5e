"""The collector's MQTT adapter against a real private Mosquitto: PUBACK futures, subscriptions
restored after a broker restart, the last will, TLS and credentials, refused credentials."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import pytest

from citygate.broker import mosquitto_binary
from citygate.rig import Broker
from collector.mqtt_link import (
    Backoff,
    ConnectRefused,
    LinkSettings,
    Message,
    MqttLink,
    NotConnected,
    Will,
    probe,
)

pytestmark = pytest.mark.skipif(not mosquitto_binary(), reason="mosquitto is not installed")
FAST = Backoff(first_s=0.05, max_s=0.3)


async def until(condition: object, timeout: float = 10.0) -> None:
    """Wait for `condition()` to be true, polling the loop, or fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {condition}"
        await asyncio.sleep(0.02)


class Running:
    """A link running in a task, with what it received."""

    def __init__(self, url: str, client_id: str, **options: object) -> None:
        self.received: list[Message] = []
        self.link = MqttLink(LinkSettings.from_url(url, client_id=client_id, backoff=FAST,
                                                   **options),  # type: ignore[arg-type]
                             on_message=self.received.append)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttLink:
        self.task = asyncio.create_task(self.link.run())
        await until(self.link.connected.is_set)
        return self.link

    async def __aexit__(self, *_exc: object) -> None:
        await self.link.aclose()  # ends run() (cancelling it if it was waiting to retry)
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 5)


def test_publish_resolves_on_puback_and_waits_while_the_broker_is_stalled(
        broker: Broker) -> None:
    async def main() -> None:
        sub = Running(broker.url, "sub")
        async with Running(broker.url, "pub") as pub, sub as sublink:
            sublink.subscribe("t/cmd", 1)
            await asyncio.sleep(0.2)  # the SUBACK
            await pub.publish("t/cmd", b"one", qos=1, timeout=5)
            await until(lambda: [m.payload for m in sub.received] == [b"one"])
            assert broker.proc is not None
            assert broker.proc.popen is not None
            os.kill(broker.proc.popen.pid, signal.SIGSTOP)  # no PUBACK while stopped
            try:
                with pytest.raises(TimeoutError):
                    await pub.publish("t/cmd", b"two", qos=1, timeout=0.5)
            finally:
                os.kill(broker.proc.popen.pid, signal.SIGCONT)
            await pub.publish("t/cmd", b"three", qos=1, timeout=5)
            await until(lambda: b"three" in [m.payload for m in sub.received])

    asyncio.run(main())


def test_after_a_broker_restart_the_link_reconnects_and_its_subscriptions_are_back(
        broker: Broker) -> None:
    async def main() -> None:
        sub = Running(broker.url, "sub")
        async with Running(broker.url, "pub") as pub, sub as sublink:
            sublink.subscribe("t/+/reply", 1)
            await asyncio.sleep(0.2)
            await asyncio.to_thread(broker.restart)  # broker_restart
            await until(lambda: pub.connected.is_set() and sublink.connected.is_set())
            assert sublink.stats["connects"] == 2
            await pub.publish("t/gw-1/reply", b"after", qos=1, timeout=5)
            await until(lambda: [m.payload for m in sub.received] == [b"after"])
            with pytest.raises(NotConnected):
                await MqttLink(LinkSettings.from_url(broker.url)).publish("t/x", b"")

    asyncio.run(main())


def test_the_last_will_is_published_when_the_link_dies_without_a_goodbye(
        broker: Broker) -> None:
    async def main() -> None:
        watcher = Running(broker.url, "watcher")
        will = Will("t/collector/state", b'{"state":"offline"}', qos=1, retain=False)
        async with watcher as w, Running(broker.url, "dying", will=will) as dying:
            w.subscribe("t/collector/state", 1)
            await asyncio.sleep(0.2)
            assert dying._client is not None
            sock = dying._client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)  # the process died: no DISCONNECT
            await until(lambda: [m.payload for m in watcher.received]
                        == [b'{"state":"offline"}'])

    asyncio.run(main())


def test_refused_credentials_and_a_dead_port_are_reported(tmp_path: Path) -> None:
    from citygate.rig import free_port

    secured = Broker(tmp_path / "secured")
    pw = tmp_path / "passwd"
    from collector.registry.mqtt_auth import hash_password

    pw.write_text(f"alice:{hash_password('right')}\n")
    pw.chmod(0o600)
    conf_extra = f"password_file {pw}\n"
    secured.extra_config = conf_extra

    async def main() -> None:
        assert not await probe(f"mqtt://127.0.0.1:{free_port()}", timeout=2)
        link = MqttLink(LinkSettings.from_url(secured.url, username="alice", password="wrong"))
        with pytest.raises(ConnectRefused) as refused:
            async with link.connect_once(timeout=5):
                pass
        assert refused.value.bad_credentials
        good = MqttLink(LinkSettings.from_url(secured.url, username="alice", password="right"))
        async with good.connect_once(timeout=5):
            await good.publish("t/x", b"ok", timeout=5)

    secured.start()
    try:
        asyncio.run(main())
    finally:
        secured.stop()


def test_tls_with_the_ca_file_and_a_registered_user(tmp_path: Path) -> None:
    from hil_tests.secure_rig import SecureBroker

    broker = SecureBroker(tmp_path / "tls")
    password = broker.add_gateway("gw-7")
    broker.start()

    async def main() -> None:
        link = MqttLink(LinkSettings.from_url(broker.tls_url, username="gw-7",
                                              password=password, client_id="gw-7",
                                              ca_file=str(broker.ca.cert)))
        async with link.connect_once(timeout=10):
            await link.publish("citygate/v1/gw-7/health", b"{}", timeout=5)
        untrusted = MqttLink(LinkSettings.from_url(broker.tls_url, username="gw-7",
                                                   password=password, client_id="gw-7b"))
        with pytest.raises(OSError):  # the system store does not trust the private CA
            async with untrusted.connect_once(timeout=10):
                pass

    try:
        asyncio.run(main())
    finally:
        broker.stop()


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    b = Backoff(first_s=0.5, max_s=30.0)
    assert [b.delay(n, rand=lambda: 1.0) for n in (1, 2, 3, 7, 8, 60)] == [
        0.5, 1.0, 2.0, 30.0, 30.0, 30.0]
    assert b.delay(5, rand=lambda: 0.0) == 0.0
