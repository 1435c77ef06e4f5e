"""A gateway reduced to its wire behaviour, for chaos tests and benchmarks that count exactly.

It numbers data envelopes 1..count, keeps every one until its PUBACK (its outbox), and fails
over along a list of brokers on disconnect or refused connect, re-sending what is unacked on
the new connection — what edge.uplink and edge.outbox do, so a broker node dying produces
duplicates on the wire exactly as real gateways would. Unlike a real gateway its production is
known in advance, so "0 lost, 0 duplicates" can be checked by counting.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import orjson
import paho.mqtt.client as mqtt

from devices import contract

log = logging.getLogger(__name__)


@dataclass
class FeederCounts:
    """What a feeder did on the wire."""

    produced: int = 0  # envelopes created (seq 1..produced)
    published: int = 0  # publishes, re-sends included
    resent: int = 0  # publishes of an envelope already published once
    acked: int = 0
    connects: int = 0
    failovers: int = 0  # moves to the next broker after a loss or refusal
    brokers_used: list[str] = field(default_factory=list)


class Feeder:
    """Publishes `count` numbered data envelopes at `rate` per second to a list of brokers."""

    def __init__(self, gateway: str, brokers: list[str], *, count: int, rate: float,
                 readings: int = 1, first_broker: int = 0, connect_timeout: float = 3.0) -> None:
        self.gateway = gateway
        self.brokers = brokers
        self.count, self.rate, self.readings = count, rate, readings
        self.connect_timeout = connect_timeout
        self.counts = FeederCounts()
        self.broker_index = first_broker
        self._unacked: dict[int, bytes] = {}  # the outbox: seq -> payload
        self._ever_sent: set[int] = set()
        self._mids: dict[int, int] = {}  # paho mid -> seq, for the current client
        self._early_acks: set[int] = set()
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current_broker(self) -> str:
        """The broker URL in use (or being tried)."""
        return self.brokers[self.broker_index % len(self.brokers)]

    @property
    def done(self) -> bool:
        """Everything produced and acknowledged."""
        with self._lock:
            return self.counts.produced == self.count and not self._unacked

    @property
    def unacked(self) -> int:
        """Envelopes not yet acknowledged."""
        with self._lock:
            return len(self._unacked)

    def start(self) -> Feeder:
        """Start producing and publishing in a thread."""
        self._thread = threading.Thread(target=self._run, name=f"feeder-{self.gateway}",
                                        daemon=True)
        self._thread.start()
        return self

    def pause(self, paused: bool = True) -> None:
        """Hold (or resume) production; what is unacked is still sent."""
        if paused:
            self._paused.set()
        else:
            self._paused.clear()

    def stop(self, *, graceful: bool = True) -> None:
        """Stop; graceful publishes the offline state first, otherwise the will fires."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        client = self._client
        if client is None:
            return
        if graceful and self._connected.is_set():
            with contextlib.suppress(Exception):
                client.publish(self._state_topic, self._state("offline", "shutdown"), qos=1,
                               retain=True).wait_for_publish(3)
            with contextlib.suppress(Exception):
                client.disconnect()
        elif not graceful:
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()  # no DISCONNECT: the broker publishes the will
        with contextlib.suppress(Exception):
            client.loop_stop()

    # --- the feeder thread ---------------------------------------------------------------------

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self._connected.is_set() and not self._connect():
                self._next_broker()
                self._stop.wait(0.3)
                continue
            if self._lost.is_set():
                self._drop()
                self._next_broker()
                continue
            now = time.monotonic()
            if self.counts.produced < self.count and not self._paused.is_set() and now >= next_at:
                self._produce()
                next_at = max(next_at + 1 / self.rate, now - 1.0)
            self._stop.wait(max(0.0, min(0.05, next_at - time.monotonic())))

    def _next_broker(self) -> None:
        self.broker_index += 1
        self.counts.failovers += 1

    def _connect(self) -> bool:
        u = urlparse(self.current_broker)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gw-{self.gateway}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.will_set(self._state_topic, self._state("offline", "lost"), qos=1, retain=True)
        connack = threading.Event()
        result: list[bool] = []

        def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode,
                       _p: object) -> None:
            result.append(not rc.is_failure)
            connack.set()

        client.on_connect = on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self._lost.clear()
        self._client = client
        try:
            client.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=10)
        except OSError:
            return False
        client.loop_start()
        if not connack.wait(self.connect_timeout) or not result[0]:
            _close(client)
            return False
        self.counts.connects += 1
        self.counts.brokers_used.append(self.current_broker)
        self._connected.set()
        client.publish(self._state_topic, self._state("online"), qos=1, retain=True)
        self._resend()
        return True

    def _drop(self) -> None:
        self._connected.clear()
        if self._client is not None:
            _close(self._client)

    def _resend(self) -> None:
        with self._lock:
            self._mids.clear()
            self._early_acks.clear()
            pending = sorted(self._unacked.items())
        for seq, payload in pending:
            self._publish(seq, payload)

    def _produce(self) -> None:
        with self._lock:
            self.counts.produced += 1
            seq = self.counts.produced
            payload = self._envelope(seq)
            self._unacked[seq] = payload
        if self._connected.is_set():
            self._publish(seq, payload)

    def _publish(self, seq: int, payload: bytes) -> None:
        client = self._client
        if client is None:
            return
        # Not under self._lock: paho calls on_publish holding its own lock, which publish needs.
        info = client.publish(contract.topic(self.gateway, contract.DATA), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return
        with self._lock:
            self.counts.published += 1
            if seq in self._ever_sent:
                self.counts.resent += 1
            self._ever_sent.add(seq)
            if info.mid in self._early_acks:  # the PUBACK beat us here
                self._early_acks.discard(info.mid)
                self._ack(seq)
            else:
                self._mids[info.mid] = seq

    def _on_publish(self, client: mqtt.Client, _u: object, mid: int, _rc: object,
                    _p: object) -> None:
        if client is not self._client:
            return
        with self._lock:
            seq = self._mids.pop(mid, None)
            if seq is None:
                self._early_acks.add(mid)
            else:
                self._ack(seq)

    def _ack(self, seq: int) -> None:
        if self._unacked.pop(seq, None) is not None:
            self.counts.acked += 1

    def _on_disconnect(self, client: mqtt.Client, _u: object, _f: object, _rc: object,
                       _p: object) -> None:
        if client is self._client:
            self._lost.set()

    # --- payloads --------------------------------------------------------------------------------

    def _envelope(self, seq: int) -> bytes:
        now = int(time.time() * 1000)
        readings = [{"device": f"{self.gateway}-l{i + 1}", "ts": now,
                     "values": {"floor": (seq + i) % 20}} for i in range(self.readings)]
        return orjson.dumps({"v": 1, "gateway": self.gateway, "seq": seq, "sent": now,
                             "readings": readings})

    @property
    def _state_topic(self) -> str:
        return contract.topic(self.gateway, contract.STATE)

    def _state(self, state: str, reason: str = "") -> bytes:
        return contract.state_payload(self.gateway, state, int(time.time() * 1000),
                                      reason=reason)


def _close(client: mqtt.Client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()
    with contextlib.suppress(Exception):
        client.loop_stop()
