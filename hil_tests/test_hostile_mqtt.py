"""Hostile MQTT clients against the broker files the registry generates (a real Mosquitto).

A gateway credential must hold no session but its own: taking the collector's client id would
discard the collector's persistent session (its queued messages lost), and taking another
gateway's would disconnect it and fire its last will (a false `gateway_offline`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citygate.rig import wait_for
from devices import contract
from hil_tests.secure_rig import COLLECTOR_USER, SecureBroker

pytestmark = pytest.mark.hil

QUEUED = 50
NOT_AUTHORIZED = 135  # paho 2 reports a 3.1.1 CONNACK 5 as the MQTT 5 reason code


class Session:
    """A paho client whose messages and disconnects are recorded from before it connects."""

    def __init__(self, user: str, password: str, port: int, client_id: str, *,
                 clean: bool = True, will: tuple[str, bytes] | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects = 0
        self.rc: int | None = None
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=clean, protocol=mqtt.MQTTv311)
        c.username_pw_set(user, password)
        c.reconnect_delay_set(60, 120)  # a kicked client must stay kicked for the count
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        self.client = c
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        wait_for(lambda: self.rc is not None, 10, f"CONNACK for {user} as {client_id}")

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.rc is None:
            self.rc = rc.value

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_disconnect(self, *_a: Any) -> None:
        with self._lock:
            self.disconnects += 1

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on `topic`."""
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        acked = threading.Event()
        self.client.on_subscribe = lambda *_a: acked.set()
        self.client.subscribe(topic, qos=1)
        assert acked.wait(5), f"no SUBACK for {topic}"

    def close(self) -> None:
        """Disconnect cleanly (a persistent session stays on the broker)."""
        self.client.disconnect()
        self.client.loop_stop()


def test_a_gateway_credential_cannot_discard_the_collectors_session(
        secure: SecureBroker) -> None:
    pw_a, pw_b = secure.add_gateway("gw-a"), secure.add_gateway("gw-b")
    data_a = contract.topic("gw-a", contract.DATA)
    coll = Session(COLLECTOR_USER, secure.collector_password, secure.collector_port,
                   "citygate-collector", clean=False)
    assert coll.rc == 0
    coll.subscribe(f"{contract.ROOT}/+/{contract.DATA}")
    coll.close()

    a = Session("gw-a", pw_a, secure.port, "gw-a")
    for i in range(QUEUED):
        a.client.publish(data_a, str(i).encode(), qos=1).wait_for_publish(5)
    # B's credential, the collector's client id and a clean session: refused on the collector's
    # listener; on the gateways' listener it gets B's own session, not the collector's.
    on_collector_port = Session("gw-b", pw_b, secure.collector_port, "citygate-collector")
    assert on_collector_port.rc == NOT_AUTHORIZED
    on_collector_port.close()
    hijack = Session("gw-b", pw_b, secure.port, "citygate-collector")
    assert hijack.rc == 0
    hijack.close()

    back = Session(COLLECTOR_USER, secure.collector_password, secure.collector_port,
                   "citygate-collector", clean=False)
    wait_for(lambda: len(back.on(data_a)) >= QUEUED, 10, f"{QUEUED} queued messages")
    time.sleep(0.3)  # a negative: a duplicate would have arrived by now
    assert sorted(int(p) for p in back.on(data_a)) == list(range(QUEUED))
    for s in (a, back):
        s.close()


def test_a_gateway_credential_cannot_kick_another_gateway(secure: SecureBroker) -> None:
    pw_a, pw_b = secure.add_gateway("gw-a"), secure.add_gateway("gw-b")
    state_a = contract.topic("gw-a", contract.STATE)
    observer = Session(COLLECTOR_USER, secure.collector_password, secure.collector_port,
                       "citygate-observer")
    observer.subscribe(state_a)
    a = Session("gw-a", pw_a, secure.port, "gw-a", will=(state_a, b"offline"))
    a.client.publish(state_a, b"online", qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: observer.on(state_a), 5, "gw-a online")

    for _ in range(3):
        hijack = Session("gw-b", pw_b, secure.port, "gw-a")
        assert hijack.rc == 0
        hijack.close()
        refused = Session("gw-b", pw_b, secure.collector_port, "gw-a")
        assert refused.rc == NOT_AUTHORIZED
        refused.close()

    # A is still connected: its next publish goes out on the same connection.
    a.client.publish(state_a, b"still-online", qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: b"still-online" in observer.on(state_a), 5, "gw-a's marker")
    time.sleep(0.3)  # a negative: a last will fired by a kick would have arrived by now
    assert a.disconnects == 0
    assert observer.on(state_a) == [b"online", b"still-online"]
    for s in (a, observer):
        s.close()
