"""`citygate collector run`: the command link runs as a feature task on the service's event loop,
answers an echo through the REST API, and comes back by itself after a broker restart."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from citygate.rig import Broker, http_json, wait_for
from collector.mqtt_link import LinkSettings, Message, MqttLink
from hil_tests.conftest import TEST_TOKEN

pytestmark = pytest.mark.hil
GW = "gw-echo"


class EchoGateway:
    """A stand-in gateway on its own link: answers cmd/echo on its reply topic."""

    def __init__(self, url: str) -> None:
        self.link = MqttLink(LinkSettings.from_url(url, client_id=GW), on_message=self.answer)
        self.link.subscribe(f"citygate/v1/{GW}/cmd/echo", 1)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.seen = 0

    def answer(self, msg: Message) -> None:
        """Reply to an echo (on the link's loop)."""
        self.seen += 1
        ident = orjson.loads(msg.payload)["id"]
        reply = orjson.dumps({"v": 1, "gateway": GW, "command": "echo", "id": ident,
                              "ok": True, "detail": {}})
        self.loop.create_task(self.link.publish(f"citygate/v1/{GW}/reply", reply, qos=1))

    def __enter__(self) -> EchoGateway:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.link.run(), self.loop)
        wait_for(self.link.connected.is_set, 10, "the echo gateway's link")
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.link.aclose(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def echo_gateway(broker: Broker) -> Iterator[EchoGateway]:
    with EchoGateway(broker.url) as gw:
        yield gw


def echo(base: str) -> dict[str, Any] | None:
    """POST the echo; None while the collector's link is down (503) or no answer came."""
    try:
        out: dict[str, Any] = http_json(f"{base}/api/v1/gateways/{GW}/echo?wait_s=2",
                                        method="POST", token=TEST_TOKEN)
        return out
    except (urllib.error.URLError, OSError):  # 503/504 while reconnecting: callers retry
        return None


def test_echo_goes_through_the_service_link_and_survives_a_broker_restart(
        broker: Broker, procs: Any, echo_gateway: EchoGateway) -> None:
    _proc, base = procs.collector(broker)
    wait_for(lambda: echo(base) is not None, 20, "the first echo")
    assert echo_gateway.seen >= 1
    broker.restart()  # broker_restart: both links reconnect with backoff, subscriptions back
    wait_for(echo_gateway.link.connected.is_set, 20, "the gateway link after the restart")
    answers: list[dict[str, Any]] = []
    wait_for(lambda: bool((got := echo(base)) and answers.append(got) is None), 30,
             "an echo after the broker restart")
    assert answers[-1]["ok"] is True
    health = http_json(f"{base}/api/v1/health")
    assert health["features"] == {}  # no feature hook or task failed meanwhile
