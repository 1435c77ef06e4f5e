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
from collector.ingest import Ingest, IngestClient, ReadBuffered
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


def publish(topic: bytes, payload: bytes, qos: int = 1, mid: int = 7, dup: bool = False,
            retain: bool = False) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet."""
    head = 0x30 | qos << 1 | (8 if dup else 0) | (1 if retain else 0)
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    return bytes([head]) + mqtt_remaining_length(len(body + payload)) + body + payload


def taken(sock: ReadBuffered) -> list[tuple[str, bytes, int, int]]:
    got: list[tuple[str, bytes, int, int]] = []
    sock.take_publishes(lambda *packet: got.append(packet))
    return got


def test_publishes_are_taken_from_the_block_in_order_and_anything_else_left_to_paho(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    first = [publish(b"citygate/v1/gw-1/data", b"x" * n, mid=n + 1) for n in (0, 1, 200, 20_000)]
    rest = [publish(b"t/\xc3\xa9", b"{}", qos=0, retain=True),
            publish(b"a/b", b"dup", dup=True, mid=65535)]
    pingresp = bytes([0xD0, 0x00])
    qos2 = publish(b"a/b", b"two", qos=2)
    a.sendall(b"".join([*first, pingresp, *rest, qos2, publish(b"a/b", b"after")]))
    sock = ReadBuffered(b)
    assert sock.recv(1) == first[0][:1] and read_packet_rest(sock) == first[0][1:]
    assert taken(sock) == [("citygate/v1/gw-1/data", b"x" * n, 1, n + 1) for n in (1, 200, 20_000)]
    assert taken(sock) == []  # a PINGRESP is paho's
    assert sock.recv(2) == pingresp
    assert taken(sock) == [("t/\u00e9", b"{}", 0, 0), ("a/b", b"dup", 1, 65535)]
    assert taken(sock) == []  # QoS 2 (the collector subscribes at 1): paho's
    assert read_packet(sock) == qos2
    assert taken(sock) == [("a/b", b"after", 1, 7)]
    assert sock.pending() == 0


def read_packet_rest(sock: ReadBuffered) -> bytes:
    """The rest of a packet whose command byte was read."""
    whole = read_packet(_Prefixed(sock, b"\x32"))
    return whole[1:]


class _Prefixed:
    def __init__(self, sock: ReadBuffered, first: bytes) -> None:
        self.sock, self.first = sock, first

    def recv(self, n: int) -> bytes:
        if self.first:
            out, self.first = self.first, b""
            return out
        return self.sock.recv(n)


@pytest.mark.parametrize("bad", [
    bytes([0x32, 0x01, 0x00]),  # shorter than a topic length
    bytes([0x32, 0x04, 0x00, 0x09, 0x61, 0x62]),  # topic longer than the packet
    bytes([0x32, 0x03, 0x00, 0x01, 0x61]),  # QoS 1 without a packet id
    bytes([0x32, 0x06, 0x00, 0x02, 0xff, 0xfe, 0x00, 0x01]),  # topic not UTF-8
    bytes([0x32, 0xff, 0xff, 0xff, 0xff, 0x7f]),  # remaining length over 4 bytes
])
def test_a_publish_that_does_not_parse_is_left_to_paho(
        pair: tuple[socket.socket, socket.socket], bad: bytes) -> None:
    a, b = pair
    good = publish(b"a/b", b"ok")
    a.sendall(good + bad)
    sock = ReadBuffered(b)
    assert sock.recv(1) == good[:1]
    read_packet_rest(sock)
    assert taken(sock) == []
    assert sock.pending() == len(bad)  # untouched: paho reports the protocol error


def test_a_packet_not_all_read_waits_for_the_rest(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    whole = publish(b"a/b", b"y" * 1000)
    a.sendall(publish(b"a/b", b"x") + publish(b"a/b", b"z") + whole[:600])
    sock = ReadBuffered(b)
    sock.recv(1)
    read_packet_rest(sock)
    assert taken(sock) == [("a/b", b"z", 1, 7)]
    assert sock.pending() == 600
    a.sendall(whole[600:])
    assert read_packet(sock) == whole  # paho reads it across the two blocks


def test_the_collector_reads_through_blocks_and_stores_everything_after_a_reconnect(
        tmp_path: Path, store: Store) -> None:  # noqa: F811
    broker = Broker(tmp_path / "broker").start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub-blocks")
    ingest = Ingest(store, broker.url, client_id="coll-blocks")
    ingest.start()
    try:
        wait_for(lambda: ingest.stats.connected, 10, "collector connected")
        client = ingest._client
        assert isinstance(client, IngestClient) and isinstance(client.socket(), ReadBuffered)
        by_paho = 0
        paho_handle = client._handle_publish

        def counted() -> mqtt.MQTTErrorCode:
            nonlocal by_paho
            by_paho += 1
            return paho_handle()
        client._handle_publish = counted  # type: ignore[method-assign]
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
        # paho parses only the packets larger than a block (and one cut by a block end)
        assert by_paho <= 10, by_paho
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
