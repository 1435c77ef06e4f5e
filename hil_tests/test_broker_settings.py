"""What store-and-forward gets from Mosquitto's settings: the stock Debian config against ours.

The gateway deletes a reading from its outbox once the broker acknowledged it, so from then on
the broker's queue for the collector's persistent session is the only copy. These tests
measure what that queue keeps: past the stock `max_queued_messages` (1000), and across a
restart, graceful or SIGKILL. Figures in docs/store-and-forward.md ("Broker settings").
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citygate.broker import mosquitto_binary, mosquitto_config
from citygate.rig import Proc, free_port, port_open, wait_for
from devices import contract

pytestmark = pytest.mark.hil

# /etc/mosquitto/mosquitto.conf as shipped in Debian 12's mosquitto 2.0.11-1.2+deb12u2
# (md5 9cdb6b0ea869818b4e3dc5ee610d1fb4). Tests move its paths to a temporary directory and
# add the one listener a private broker needs; every other setting is the stock default.
DEBIAN_STOCK = """\
# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
"""
DATA = f"{contract.ROOT}/gw-a/{contract.DATA}"
STATE = f"{contract.ROOT}/gw-a/{contract.STATE}"


class Mosquitto:
    """A private mosquitto from a config file, restartable on the same port."""

    def __init__(self, root: Path, stock: bool) -> None:
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        if stock:
            (root / "conf.d").mkdir(exist_ok=True)
            text = (DEBIAN_STOCK.replace("/run/mosquitto/", f"{root}/")
                    .replace("/var/lib/mosquitto/", f"{root}/")
                    .replace("/var/log/mosquitto/", f"{root}/")
                    .replace("/etc/mosquitto/conf.d", f"{root}/conf.d"))
            self.conf = root / "stock.conf"
            self.conf.write_text(text + f"listener {self.port} 127.0.0.1\n"
                                        "allow_anonymous true\n")
        else:
            self.conf = mosquitto_config(self.port, root)
        binary = mosquitto_binary()
        assert binary, "mosquitto is not installed"
        self.proc = Proc("mosquitto", [binary, "-c", str(self.conf)], root / "broker.out")

    def start(self) -> Mosquitto:
        """Start and wait for the listener."""
        self.proc.start()
        wait_for(lambda: port_open(self.port) or not self.proc.alive, 10, "mosquitto")
        assert self.proc.alive, self.proc.tail()
        return self

    def restart(self, *, kill: bool) -> None:
        """SIGTERM (it saves its database) or SIGKILL (a crash), then start again."""
        if kill:
            self.proc.kill9()
        else:
            self.proc.stop()
        wait_for(lambda: not port_open(self.port), 10, "the port to close")
        self.start()


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[dict[str, Mosquitto]]:
    # Started as root, stock mosquitto switches to its own user (as packaged) before it writes
    # its pid file and database: give it a directory of its own that it can reach. Ours keeps
    # the user that starts it, so it gets the test's private directory like every rig broker.
    root = Path(tempfile.mkdtemp(prefix="citygate-broker-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("mosquitto")
        os.chown(root, user.pw_uid, user.pw_gid)
    made = {"stock": Mosquitto(root, stock=True).start(),
            "citygate": Mosquitto(tmp_path / "citygate", stock=False).start()}
    try:
        yield made
    finally:
        for b in made.values():
            b.proc.stop()
        shutil.rmtree(root, ignore_errors=True)


class Client:
    """A paho client recording what it receives."""

    def __init__(self, port: int, client_id: str, *, clean: bool = True) -> None:
        self.received: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean, protocol=mqtt.MQTTv311)
        self.c.max_inflight_messages_set(100)
        self.c.max_queued_messages_set(0)
        self.c.on_message = self._on_message
        connected = threading.Event()
        self.c.on_connect = lambda *_a: connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(10), "no CONNACK"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on a topic."""
        with self._lock:
            return [p for t, p, _ in self.received if t == topic]

    def subscribe(self, topic: str) -> None:
        """QoS 1 subscription, SUBACK awaited."""
        done = threading.Event()
        self.c.on_subscribe = lambda *_a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(5)

    def publish(self, topic: str, payloads: list[bytes], *, retain: bool = False) -> int:
        """Publish at QoS 1 and wait for every PUBACK; return how many were acknowledged."""
        infos = [self.c.publish(topic, p, qos=1, retain=retain) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
        return sum(info.is_published() for info in infos)

    def close(self) -> None:
        """Disconnect (a persistent session stays)."""
        self.c.disconnect()
        self.c.loop_stop()


def settle(client: Client, topic: str, at_least: int = 0, quiet_s: float = 1.0) -> int:
    """Count messages on a topic once at least `at_least` came and then none for `quiet_s`."""
    wait_for(lambda: len(client.on(topic)) >= at_least, 15, f"{at_least} messages")
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet_s:
        n = len(client.on(topic))
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.05)
    return last


def queue_for_offline_collector(broker: Mosquitto, n: int) -> tuple[int, int]:
    """(acknowledged by the broker, delivered to the collector when it returns)."""
    coll = Client(broker.port, "citygate-collector", clean=False)
    coll.subscribe(f"{contract.ROOT}/+/{contract.DATA}")
    coll.close()
    gw = Client(broker.port, "gw-a")
    acked = gw.publish(DATA, [str(i).encode() for i in range(n)])
    gw.close()
    back = Client(broker.port, "citygate-collector", clean=False)
    got = settle(back, DATA, at_least=min(n, 1000))
    assert back.on(DATA) == [str(i).encode() for i in range(got)]  # the oldest are kept
    back.close()
    return acked, got


def test_stock_queue_limit_drops_acknowledged_messages_past_1000(
        brokers: dict[str, Mosquitto]) -> None:
    assert queue_for_offline_collector(brokers["stock"], 1500) == (1500, 1000)
    assert queue_for_offline_collector(brokers["citygate"], 1500) == (1500, 1500)


def _survivors(broker: Mosquitto, tag: str, *, kill: bool,
               wait_s: float = 0.0) -> tuple[int, int, str]:
    """Queue 100 for the offline collector and retain a new state, restart the broker; return
    (this round's messages delivered afterwards, earlier rounds' delivered again, which
    retained state the broker has then: this round's, an earlier one or none)."""
    coll = Client(broker.port, "citygate-collector", clean=False)
    coll.subscribe(f"{contract.ROOT}/+/{contract.DATA}")
    coll.close()
    gw = Client(broker.port, "gw-a")
    assert gw.publish(DATA, [f"{tag}-{i}".encode() for i in range(100)]) == 100
    assert gw.publish(STATE, [tag.encode()], retain=True) == 1
    gw.close()
    time.sleep(wait_s)  # let an autosave happen (or not)
    broker.restart(kill=kill)
    back = Client(broker.port, "citygate-collector", clean=False)
    settle(back, DATA)
    back.close()
    got = back.on(DATA)
    mine = sum(p.startswith(f"{tag}-".encode()) for p in got)
    watcher = Client(broker.port, "watcher")
    watcher.subscribe(STATE)
    time.sleep(0.5)  # a retained message comes with the SUBACK; a negative needs a moment
    retained = watcher.on(STATE)
    watcher.close()
    state = "none" if not retained else "this" if retained == [tag.encode()] else "earlier"
    return mine, len(got) - mine, state


def test_what_survives_a_restart(brokers: dict[str, Mosquitto]) -> None:
    stock, ours = brokers["stock"], brokers["citygate"]
    # A graceful restart saves the database: the queue and the retained state survive.
    assert _survivors(stock, "s1", kill=False) == (100, 0, "this")
    # A crash goes back to the last save (stock: at shutdown, or every 1800 s): this round's
    # queue is lost, the previous save's queue is delivered a second time, and the retained
    # state is the previous round's.
    assert _survivors(stock, "s2", kill=True) == (0, 100, "earlier")
    # Ours saves every 5 s: a crash within that window loses the same; after it, nothing.
    assert _survivors(ours, "c1", kill=True) == (0, 0, "none")
    assert _survivors(ours, "c2", kill=True, wait_s=6.5) == (100, 0, "this")
