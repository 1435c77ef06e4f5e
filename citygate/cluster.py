"""A NATS cluster rig: three nats-server nodes with JetStream and an MQTT listener on each.

The documented scale-out path (docs/deployment.md): gateways speak MQTT 3.1.1 to any node,
NATS keeps every QoS 1 message in its internal `$MQTT_msgs` stream (3 replicas, PUBACK only
after the replicas stored it), and collectors share one durable pull consumer on that stream.
Used by `citygate cluster-demo`, the cluster HIL tests and the cluster benchmark.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from citygate.rig import Proc, free_port, http_json, port_open, wait_for
from collector.mqtt_link import probe

NATS_SERVER_PATHS = ("nats-server", "/usr/sbin/nats-server")
# `$MQTT_msgs` and its subjects are NATS internals, not a versioned API: the version is pinned
# and hil_tests/test_cluster.py fails when either changes.
PINNED_SERVER_SERIES = "2.9."
MQTT_MSGS_STREAM = "$MQTT_msgs"
MQTT_MSGS_SUBJECT_PREFIX = "$MQTT.msgs."
MQTT_RETAINED_STREAM = "$MQTT_rmsgs"
CLUSTER_NAME = "citygate"

T = TypeVar("T")


class NatsServerMissing(RuntimeError):
    """nats-server is not installed; the hint says how to get it."""


def nats_server_binary() -> str:
    """Path of nats-server, or raise NatsServerMissing with the install hint."""
    for name in NATS_SERVER_PATHS:
        found = shutil.which(name)
        if found:
            return found
    raise NatsServerMissing("nats-server not found — install the Debian package: "
                            "apt-get install nats-server (or run `make system-deps`)")


def nats_server_version(binary: str | None = None) -> str:
    """The server version, e.g. "2.9.10"."""
    out = subprocess.run([binary or nats_server_binary(), "--version"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    found = re.search(r"v(\d+\.\d+\.\d+)", out)
    if not found:
        raise RuntimeError(f"cannot read the nats-server version from {out!r}")
    return found.group(1)


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine to completion from synchronous rig code."""
    async def main() -> T:
        return await make()
    return asyncio.run(main())


@dataclass
class NatsNode:
    """One cluster member: client, route, MQTT and monitoring ports on loopback."""

    name: str
    data_dir: Path
    client_port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def nats_url(self) -> str:
        """nats://127.0.0.1:PORT"""
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def mqtt_url(self) -> str:
        """mqtt://127.0.0.1:PORT"""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc is not None and self.proc.alive

    def config(self, routes: list[int], stream_replicas: int) -> str:
        """nats-server.conf of this node."""
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        return (
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            # Each node its own store: a replica lost with its disk is rebuilt from the others.
            f'jetstream {{ store_dir: "{self.data_dir / "js"}", max_memory_store: 256MB, '
            f"max_file_store: 4GB }}\n"
            # A node alone runs standalone (JetStream refuses a cluster without routes).
            + (f'cluster {{ name: "{CLUSTER_NAME}", listen: 127.0.0.1:{self.route_port}, '
               f"routes: [{route_urls}] }}\n" if routes else "")
            # stream_replicas: the PUBACK to a gateway means "stored on this many nodes".
            + f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: {stream_replicas} }}\n"
        )

    def start(self, routes: list[int], stream_replicas: int) -> None:
        """Write the config and start the server (the store directory is kept across restarts)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config(routes, stream_replicas))
        argv = [nats_server_binary(), "-c", str(conf)]
        if self.proc is None:
            self.proc = Proc(self.name, argv, self.data_dir / f"{self.name}.log")
        self.proc.start()

    def healthy(self) -> bool:
        """True when the node answers /healthz with ok (JetStream current included)."""
        try:
            return bool(http_json(f"http://127.0.0.1:{self.http_port}/healthz",
                                  timeout=1).get("status") == "ok")
        except Exception:  # any failure means "not yet"
            return False

    def kill9(self) -> None:
        """SIGKILL the node, as a power cut would."""
        if self.proc is not None:
            self.proc.kill9()

    def stop(self) -> None:
        """Stop the node gracefully."""
        if self.proc is not None:
            self.proc.stop()


@dataclass
class NatsCluster:
    """A private NATS cluster on loopback free ports."""

    data_dir: Path
    size: int = 3
    stream_replicas: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [NatsNode(f"n{i + 1}", self.data_dir / f"n{i + 1}")
                          for i in range(self.size)]

    @property
    def nats_urls(self) -> list[str]:
        """Client URLs of every node."""
        return [n.nats_url for n in self.nodes]

    @property
    def mqtt_urls(self) -> list[str]:
        """MQTT URLs of every node (what gateways list as `brokers`)."""
        return [n.mqtt_url for n in self.nodes]

    def node(self, name: str) -> NatsNode:
        """The node called `name`."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def _routes(self, me: NatsNode) -> list[int]:
        return [n.route_port for n in self.nodes if n is not me]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node, wait until all are healthy, and create the MQTT streams."""
        for n in self.nodes:
            n.start(self._routes(n), self.stream_replicas)
        for n in self.nodes:
            self.wait_node(n, timeout)
        self.create_mqtt_streams(timeout)
        return self

    def wait_node(self, node: NatsNode, timeout: float = 30.0) -> None:
        """Wait until `node` accepts MQTT connections and reports healthy."""
        wait_for(lambda: (port_open(node.mqtt_port) and node.healthy()) or not node.alive,
                 timeout, f"NATS node {node.name} healthy")
        if not node.alive:
            raise RuntimeError(f"{node.name} exited:\n{node.proc.tail() if node.proc else ''}")

    def restart(self, node: NatsNode, timeout: float = 30.0) -> None:
        """Start a killed or stopped node again with its store, and wait until it is healthy."""
        node.start(self._routes(node), self.stream_replicas)
        self.wait_node(node, timeout)

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        for n in self.nodes:
            n.stop()

    def create_mqtt_streams(self, timeout: float = 30.0) -> None:
        """Make NATS create its MQTT streams (it does so on the first MQTT connection)."""
        def connect_once() -> bool:
            return asyncio.run(probe(f"mqtt://127.0.0.1:{self.nodes[0].mqtt_port}", timeout=5,
                                     client_id="citygate-rig-probe"))
        wait_for(lambda: connect_once() and self.stream_info(MQTT_MSGS_STREAM) is not None,
                 timeout, f"the {MQTT_MSGS_STREAM} stream", interval=0.5)

    # --- JetStream API ---------------------------------------------------------------------------

    def stream_info(self, name: str = MQTT_MSGS_STREAM) -> dict[str, Any] | None:
        """`$JS.API.STREAM.INFO.<name>` as a dict, or None when it fails or does not exist."""
        return run_async(lambda: _stream_info(self.nats_urls, name))

    def stream_leader(self, name: str = MQTT_MSGS_STREAM) -> NatsNode:
        """The node leading `name` now (waits through an election)."""
        def leader() -> str | None:
            info = self.stream_info(name)
            return ((info or {}).get("cluster") or {}).get("leader")
        return self.node(wait_for(leader, 30, f"a leader of {name}", interval=0.3))

    def create_consumer(self, durable: str, **tuning: Any) -> None:
        """Create the collectors' shared durable consumer ahead of gateways (ConsumerTuning kw)."""
        from collector.ingest_nats import ConsumerTuning, consumer_config

        config = consumer_config(durable, ConsumerTuning(**tuning))
        wait_for(lambda: run_async(lambda: _add_consumer(self.nats_urls, config)), 30,
                 f"the durable consumer {durable}", interval=0.5)

    def consumer_info(self, durable: str,
                      stream: str = MQTT_MSGS_STREAM) -> dict[str, Any] | None:
        """`$JS.API.CONSUMER.INFO.<stream>.<durable>` as a dict, or None."""
        return run_async(lambda: _consumer_info(self.nats_urls, stream, durable))


async def _js_request(urls: list[str], subject: str) -> dict[str, Any] | None:
    import nats
    import orjson

    try:
        nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
    except Exception:  # "cannot ask" is an answer here
        return None
    try:
        reply = await nc.request(subject, b"", timeout=3)
        data: dict[str, Any] = orjson.loads(reply.data)
        return None if "error" in data else data
    except Exception:
        return None
    finally:
        await nc.close()


async def _stream_info(urls: list[str], name: str) -> dict[str, Any] | None:
    return await _js_request(urls, f"$JS.API.STREAM.INFO.{name}")


async def _consumer_info(urls: list[str], stream: str, durable: str) -> dict[str, Any] | None:
    return await _js_request(urls, f"$JS.API.CONSUMER.INFO.{stream}.{durable}")


async def _add_consumer(urls: list[str], config: Any) -> bool:
    import nats

    try:
        nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
    except Exception:
        return False
    try:
        await nc.jetstream(timeout=3).add_consumer(MQTT_MSGS_STREAM, config)
        return True
    except Exception:
        return False
    finally:
        await nc.close()
