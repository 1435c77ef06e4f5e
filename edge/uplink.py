"""MQTT uplink: a thin paho-mqtt 2.x client that sends, reports PUBACKs, and reconnects.

The outbox owns reliability: this module never retries a publish itself. Each connection uses a
fresh paho client, so paho's own queue never re-sends behind the outbox's back; what was in
flight when a connection dropped is sent again by the forwarder from the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import orjson
import paho.mqtt.client as mqtt

from devices import contract
from edge.config import UplinkSection

log = logging.getLogger(__name__)


_rng = random.Random()


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random = _rng) -> float:
    """Reconnect delay: uniform in [0, min(cap, base * 2**attempt)] ("full jitter")."""
    return rng.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


def _resolve(fut: asyncio.Future[int], value: int) -> None:
    if not fut.done():
        fut.set_result(value)


@dataclass(frozen=True, slots=True)
class Broker:
    """One broker endpoint."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        """Parse mqtt://host:port or mqtts://host:port."""
        u = urlparse(url)
        return cls(u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883),
                   u.scheme == "mqtts")


class Uplink:
    """Connects to the first broker that answers, publishes birth/death state, relays acks."""

    def __init__(self, gateway: str, cfg: UplinkSection, *, version: str = "", boot: str = "",
                 on_ack: Callable[[int], None] | None = None,
                 on_command: Callable[[str, bytes], None] | None = None,
                 password: str | None = None,
                 inventory: dict[str, dict[str, str]] | None = None) -> None:
        self.gateway, self.cfg = gateway, cfg
        self.version, self.boot = version, boot
        self.on_ack = on_ack or (lambda mid: None)
        self.on_command = on_command or (lambda name, payload: None)
        self.password = password if password is not None else cfg.password
        self.brokers = [Broker.parse(u) for u in cfg.brokers]
        self.inventory = inventory or {}
        self.connected = asyncio.Event()
        self.collectors: dict[str, bool] = {}  # collector id -> online, from retained states
        self.collector_online = True  # until retained collector states say all are offline
        self.collector_changed = asyncio.Event()
        self.broker: Broker | None = None
        self.counters = {"connects": 0, "connect_failures": 0, "disconnects": 0,
                         "published": 0, "acked": 0}
        self._client: mqtt.Client | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_connack: asyncio.Future[int] | None = None

    # --- connection management ---------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled, failing over between brokers with jittered backoff."""
        self._loop = asyncio.get_running_loop()
        if self.cfg.boot_delay_max > 0:
            await asyncio.sleep(_rng.uniform(0, self.cfg.boot_delay_max))
        attempt = 0
        index = 0
        try:
            while True:
                broker = self.brokers[index % len(self.brokers)]
                if await self._connect(broker):
                    attempt = 0
                    await self._lost.wait()
                    self._drop("connection lost")
                else:
                    attempt += 1
                index += 1
                await asyncio.sleep(full_jitter(attempt, self.cfg.reconnect_min,
                                                self.cfg.reconnect_max))
        finally:
            await self._shutdown()

    async def _connect(self, broker: Broker) -> bool:
        assert self._loop is not None
        client = self._new_client(broker)
        self._lost = asyncio.Event()
        connack: asyncio.Future[int] = self._loop.create_future()
        self._client, self._pending_connack = client, connack
        try:
            await asyncio.wait_for(
                self._loop.run_in_executor(None, client.connect, broker.host, broker.port,
                                           int(self.cfg.keepalive)),
                self.cfg.connect_timeout)
            client.loop_start()
            rc = await asyncio.wait_for(connack, self.cfg.connect_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            return self._failed(broker, client, str(exc) or type(exc).__name__)
        if rc != 0:
            return self._failed(broker, client, mqtt.connack_string(rc))
        self.broker = broker
        self.counters["connects"] += 1
        log.info("uplink connected to %s:%d", broker.host, broker.port)
        client.publish(self._state_topic, self._state("online"), qos=1, retain=True)
        client.subscribe([(contract.topic(self.gateway, contract.CMD) + "/+", 1),
                          (contract.COLLECTOR_STATE_FILTER, 1)])
        self.connected.set()
        return True

    def _failed(self, broker: Broker, client: mqtt.Client, why: str) -> bool:
        self.counters["connect_failures"] += 1
        if self.counters["connect_failures"] == 1 or self.counters["connects"] > 0:
            log.warning("uplink: cannot connect to %s:%d: %s", broker.host, broker.port, why)
        self._stop_client(client)
        self._client = None
        return False

    def _drop(self, why: str) -> None:
        if self.connected.is_set():
            self.counters["disconnects"] += 1
            log.warning("uplink: %s", why)
        self.connected.clear()
        if self._client is not None:
            self._stop_client(self._client)
            self._client = None

    def _new_client(self, broker: Broker) -> mqtt.Client:
        # The broker binds a credential to one client id, its username (the gateway id).
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=self.cfg.username or self.gateway, clean_session=True,
                             protocol=mqtt.MQTTv311)
        client.connect_timeout = self.cfg.connect_timeout
        client.max_inflight_messages_set(self.cfg.max_inflight)
        client.max_queued_messages_set(0)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.password)
        if broker.tls:
            client.tls_set(ca_certs=str(self.cfg.ca_file) if self.cfg.ca_file else None)
        client.will_set(self._state_topic, self._state("offline", "lost"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    @staticmethod
    def _stop_client(client: mqtt.Client) -> None:
        with contextlib.suppress(Exception):
            client.disconnect()
        with contextlib.suppress(Exception):
            client.loop_stop()

    async def _shutdown(self) -> None:
        client = self._client
        if client is not None and self.connected.is_set():
            info = client.publish(self._state_topic, self._state("offline", "shutdown"),
                                  qos=1, retain=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, 2.0), 3.0)
        self.connected.clear()
        if client is not None:
            await asyncio.to_thread(self._stop_client, client)
        self._client = None

    # --- paho callbacks (paho's network thread) -------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        code = rc.value if hasattr(rc, "value") else int(rc)
        fut = self._pending_connack
        if fut is not None:
            self._call(_resolve, fut, code)

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        if client is self._client:
            self._call(self._lost.set)

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        if client is self._client:
            self._call(self._acked, mid)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self._received, msg.topic, bytes(msg.payload))

    # --- event-loop side ---------------------------------------------------------------------

    def _acked(self, mid: int) -> None:
        self.counters["acked"] += 1
        self.on_ack(mid)

    def _received(self, topic_name: str, payload: bytes) -> None:
        if "/_collector/" in topic_name:
            self._collector_state(topic_name.split("/")[-2], payload)
            return
        self.on_command(topic_name.rsplit("/", 1)[-1], payload)

    def _collector_state(self, collector: str, payload: bytes) -> None:
        try:
            state = orjson.loads(payload).get("state") if payload else None
        except (orjson.JSONDecodeError, AttributeError):
            return
        if state is None:
            self.collectors.pop(collector, None)  # retained state cleared
        else:
            self.collectors[collector] = state == "online"
        online = any(self.collectors.values()) or not self.collectors
        if online != self.collector_online:
            log.info("collectors are %s", "online" if online else
                     "all offline: buffering in the outbox until one returns")
            self.collector_online = online
            self.collector_changed.set()

    def publish(self, topic_name: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Publish at QoS 1 and return the message id whose PUBACK will be reported, or None."""
        client = self._client
        if client is None or not self.connected.is_set():
            return None
        info = client.publish(topic_name, payload, qos=contract.QOS, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        self.counters["published"] += 1
        return int(info.mid)

    @property
    def _state_topic(self) -> str:
        return contract.topic(self.gateway, contract.STATE)

    def _state(self, state: str, reason: str = "") -> bytes:
        return contract.state_payload(self.gateway, state, int(time.time() * 1000),
                                      reason=reason, version=self.version, boot=self.boot,
                                      devices=self.inventory)
