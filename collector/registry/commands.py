"""The collector's command channel: publishes `cmd/<name>` to a gateway and collects replies.

A separate, clean-session MQTT client beside ingest (which keeps its persistent session for
data): commands are worth nothing once their caller gave up, so none is queued across restarts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from devices import contract
from devices.contract import ReplyMessage

log = logging.getLogger(__name__)
REPLIES_KEPT = 2000


class CommandChannel:
    """Publish commands, remember the latest replies (bounded), wake whoever waits for one."""

    def __init__(self, broker_url: str, *, username: str | None = None,
                 password: str | None = None, client_id: str = "citygate-collector-cmd",
                 ca_file: str | None = None,
                 on_reply: Callable[[ReplyMessage], None] | None = None) -> None:
        u = urlparse(broker_url)
        self.host, self.tls = u.hostname or "127.0.0.1", u.scheme == "mqtts"
        self.port = u.port or (8883 if self.tls else 1883)
        self.username, self.password, self.ca_file = username, password, ca_file
        self.client_id = client_id
        self.on_reply = on_reply or (lambda reply: None)
        self.connected = threading.Event()
        self._replies: OrderedDict[tuple[str, str], ReplyMessage] = OrderedDict()
        self._cond = threading.Condition()
        self._client: mqtt.Client | None = None

    def start(self) -> None:
        """Connect in the background (paho reconnects by itself)."""
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=True, protocol=mqtt.MQTTv311)
        if self.username:
            c.username_pw_set(self.username, self.password)
        if self.tls:
            c.tls_set(ca_certs=self.ca_file)
        c.reconnect_delay_set(1, 10)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_a: self.connected.clear()
        c.on_message = self._on_message
        self._client = c
        c.connect_async(self.host, self.port, keepalive=30)
        c.loop_start()

    def stop(self) -> None:
        """Disconnect (idempotent)."""
        c, self._client = self._client, None
        if c is not None:
            with contextlib.suppress(Exception):
                c.disconnect()
            c.loop_stop()
        self.connected.clear()

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("command channel: broker refused connection: %s", rc)
            return
        c.subscribe(f"{contract.ROOT}/+/{contract.REPLY}", contract.QOS)
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            rec = contract.decode(msg.topic, bytes(msg.payload))
        except contract.ContractError as exc:
            log.debug("command channel: ignored %s: %s", msg.topic, exc)
            return
        reply = rec.message
        if not isinstance(reply, ReplyMessage):
            return
        try:
            self.on_reply(reply)  # before waking waiters: they read what it records
        except Exception:  # paho's network thread must survive a failing handler
            log.exception("command channel: reply handler failed for %s", reply.id)
        with self._cond:
            self._replies[(reply.gateway, reply.id)] = reply
            while len(self._replies) > REPLIES_KEPT:
                self._replies.popitem(last=False)
            self._cond.notify_all()

    def send(self, gateway: str, name: str, payload: bytes) -> bool:
        """Publish a command at QoS 1; False when the broker link is down."""
        c = self._client
        if c is None or not self.connected.is_set():
            return False
        info = c.publish(contract.topic(gateway, contract.CMD, name), payload, qos=contract.QOS)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def reply(self, gateway: str, reply_id: str) -> ReplyMessage | None:
        """A reply seen recently, or None."""
        with self._cond:
            return self._replies.get((gateway, reply_id))

    def wait(self, gateway: str, reply_id: str, timeout: float) -> ReplyMessage | None:
        """Block until that reply arrives or `timeout` passes (call from a worker thread)."""
        with self._cond:
            self._cond.wait_for(lambda: (gateway, reply_id) in self._replies, timeout)
            return self._replies.get((gateway, reply_id))
