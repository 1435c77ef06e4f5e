"""The ingest client reads its socket in blocks: one system call serves many packets, the
bytes already read are never lost or reordered, and paho's loop is told they are waiting."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from citygate.rig import Broker, mqtt_remaining_length, wait_for
from collector.ingest import Ingest, ReadBuffered
from collector.store import Store
from devices import contract
from devices.model import Reading
from tests.collector.conftest import store  # noqa: F401  (fixture)

T0 = 1_763_690_000_000


class CountingSocket:
    """A socket that counts its `recv` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, n: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(n)

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def packet(body: bytes) -> bytes:
    """An MQTT PUBLISH-like frame: a command byte, a remaining length, the body."""
    return bytes([0x32]) + mqtt_remaining_length(len(body)) + body


def read_packet(sock: ReadBuffered) -> bytes:
    """Read one frame the way paho does: recv(1), recv(1) per length byte, recv(rest)."""
    command = sock.recv(1)
    length, mult, lengths = 0, 1, b""
    while True:
        byte = sock.recv(1)
        lengths += byte
        length += (byte[0] & 127) * mult
        mult *= 128
        if not byte[0] & 128:
            break
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return command + lengths + body


def test_one_system_call_serves_every_packet_it_read(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    frames = [packet(bytes([i]) * (10 + i * 37)) for i in range(50)]
    a.sendall(b"".join(frames))
    inner = CountingSocket(b)
    sock = ReadBuffered(inner)
    got = [read_packet(sock) for _ in frames]
    assert got == frames
    assert inner.recvs == 1  # paho alone: 3 or 4 per packet
    assert sock.pending() == 0
    with pytest.raises(BlockingIOError):  # nothing more: paho's loop waits in select()
        sock.recv(1)


def test_waiting_bytes_are_pending_and_a_packet_split_across_reads_is_whole(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    big = packet(b"x" * 300_000)  # larger than one block
    small = packet(b"tail")
    a.sendall(big[:1000])
    sock = ReadBuffered(b)
    assert sock.recv(1) == big[:1]
    assert sock.pending() == 999  # read already: paho must not wait for the socket
    sender = threading.Thread(target=a.sendall, args=(big[1000:] + small,))
    sender.start()
    body = b""
    while len(body) < len(big) - 1:
        try:
            body += sock.recv(len(big) - 1 - len(body))
        except BlockingIOError:
            wait_for(lambda: bool(select.select([b], [], [], 0.05)[0]), 10,
                     "more bytes")
    sender.join()
    assert big[:1] + body == big
    wait_for(lambda: bool(select.select([b], [], [], 0.05)[0])
             or sock.pending() > 0, 10, "the tail")
    assert read_packet(sock) == small


def test_a_closed_peer_reads_as_the_end(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(packet(b"last"))
    a.close()
    sock = ReadBuffered(b)
    assert read_packet(sock) == packet(b"last")
    assert sock.recv(1) == b""  # paho: connection lost


def test_the_collector_reads_through_blocks_and_stores_everything_after_a_reconnect(
        tmp_path: Path, store: Store) -> None:  # noqa: F811
    broker = Broker(tmp_path / "broker").start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub-blocks")
    ingest = Ingest(store, broker.url, client_id="coll-blocks")
    ingest.start()
    try:
        wait_for(lambda: ingest.stats.connected, 10, "collector connected")
        client = ingest._client
        assert client is not None and isinstance(client.socket(), ReadBuffered)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        seq = 0

        def send(n: int, readings: int) -> None:
            nonlocal seq
            for _ in range(n):
                seq += 1
                batch = [Reading(f"pk-{seq}-{i}", T0 + seq, {"occupied": bool(i % 2)})
                         for i in range(readings)]
                pub.publish(contract.topic("gw-k", contract.DATA),
                            contract.envelope("gw-k", contract.DATA, seq, T0 + seq,
                                              contract.encode_batch(batch)), qos=1)

        send(400, 1)
        send(3, 4000)  # envelopes larger than a block
        send(400, 1)
        wait_for(lambda: ingest.stats.stored_messages == seq, 30, "every envelope stored")
        broker.stop()
        wait_for(lambda: not ingest.stats.connected, 10, "collector saw the broker go")
        broker.start()
        wait_for(lambda: ingest.stats.connected, 30, "collector connected again")
        wait_for(pub.is_connected, 30, "publisher connected again")
        assert isinstance(client.socket(), ReadBuffered)  # the new socket too
        send(200, 1)
        wait_for(lambda: ingest.stats.stored_messages >= seq, 30, "the rest stored")
        assert store.counts()["batches"] == seq
        assert ingest.stats.rejected == {}
    finally:
        pub.loop_stop()
        pub.disconnect()
        ingest.stop()
        broker.stop()
