"""MQTT ingest: validate every message, store it in arrival order, then acknowledge it.

The collector uses a persistent session with a fixed client id and acknowledges a QoS 1
message only after the transaction holding it committed (or, for a message the store refuses
on its values, after it was quarantined), so a collector killed with -9 loses nothing: the
broker re-delivers, and the (gateway, seq) key absorbs the duplicates. A gateway's messages of
every kind — data, events, state, health, replies — go through one writer thread in arrival
order; on PostgreSQL several writers (collector.toml [ingest] writers) store different
gateways' messages at once, and acknowledgements still leave in arrival order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import orjson
import paho.mqtt.client as mqtt

from collector.failures import Failure, classify
from collector.memory import MemoryTrimmer
from collector.placement import CLOCK_KEYS, ClockPolicy, clock_policy
from collector.store import Accepted, GatewayMessage, Inbound, IngestResult, Store, now_ms
from devices import contract
from devices.contract import (
    ContractError,
    DataEnvelope,
    EventsEnvelope,
    HealthMessage,
    Received,
    StateMessage,
)

log = logging.getLogger(__name__)

RETRY_NOW_LIMIT = 20  # deadlock victims retried at once, then like any other failure
STUCK_AFTER_S = 5.0  # the store failing this long: ingest is stuck (health degraded)
STALLED_AFTER_S = 30.0  # messages waiting and nothing stored for this long: stuck too
PROBE_INTERVAL_S = 2.0  # the collector's own timestamped probe through the broker
DEFAULT_SHARE_GROUP = "citygate-collectors"  # the group of `collector run --workers N`
# Messages per transaction. Larger ones cost less per message: `python -m bench ingest
# --backends sqlite` (medians of 3, one machine, timed from the first commit as the bench then
# did) stored 13,447 envelopes/s with batches of 500, 14,465 with 1,000, 16,380 with 2,000 and
# 17,021 with 4,000; `python -m bench city_hour
# --workers 2 --search 6000 12000 --duration 30` (PostgreSQL) held 7,500/s with 500 and 9,000
# with 2,000. The broker's in-flight window for the collector is twice a batch (Mosquitto
# `max_inflight_messages 4000`, citygate/broker.py), so it sends the next batch while one
# commits. When it sends nothing more (the traffic paused, or a smaller window, such as EMQX's
# `mqtt.max_inflight` or NATS's `mqtt.max_ack_pending`, waits for the acks a batch gets after
# its commit), the batch is stored once nothing has arrived for LINGER_S, not after the whole
# max_wait.
MAX_BATCH = 2000
LINGER_S = 0.01
# collector.toml [ingest] max_pending. The budget fills only when large envelopes arrive
# faster than they are stored (a parking gateway's start-up burst): 300,000 spaces reporting at
# once held the collector at a 288 MiB peak with 64 MB and 239 MiB with 32 MB, stored at the
# same rate (10,631 and 10,496 readings/s). A lift envelope is held as ~2 KB: the broker's
# in-flight window of 4,000 is ~8 MB of them.
DEFAULT_MAX_PENDING = 32 * 1024 * 1024
# What a received message holds in memory until it is stored, its payload and its decoded
# form: 6 bytes per payload byte plus 600 per message (measured with tracemalloc: 5.8 per byte
# for a 500-reading parking envelope, 2,300 bytes for a 255-byte one-reading lift envelope).
HELD_PER_PAYLOAD_BYTE = 6
HELD_PER_MESSAGE = 600
# Writer threads of one ingest session (collector.toml [ingest] writers), each a transaction
# in flight on its own connection, each taking the messages of its share of the gateways: one
# writer leaves PostgreSQL idle while it builds a batch, and itself idle while PostgreSQL
# stores one. Acknowledgements still go out in the order the messages arrived. The busiest
# hour's mix at 13,000 envelopes/s on 2 cores, one `collector run` (`python -m bench city_hour
# --workers 1 --writers 1,2,3,4 --rate 13000 --duration 30`): 1 writer stored 9,415/s, lag p99
# 8.4 s; 2 writers 12,274/s, 2.2 s; 3 writers 12,799/s, 2.0 s; 4 writers 12,561/s, 0.9 s.
WRITERS_PG = 4
MAX_WRITERS = 8


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """collector.toml `[ingest]`, checked: clock tolerances, byte budget, device limit,
    writers."""

    clock: ClockPolicy
    max_pending: int
    max_devices_per_gateway: int
    writers: int | None = None  # None: by database (`writers_for`)

    @classmethod
    def from_section(cls, section: dict[str, object]) -> IngestSettings:
        """Check every key (ValueError names the one that is wrong)."""
        known = [*CLOCK_KEYS, "max_pending", "max_devices_per_gateway", "writers"]
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ValueError(f"ingest: unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(known)}")
        return cls(clock_policy(section), pending_budget(section), device_limit(section),
                   writer_count(section))

    def apply(self, store: Store) -> None:
        """What the store itself enforces in each ingest transaction."""
        store.clock_policy = self.clock
        store.max_devices_per_gateway = self.max_devices_per_gateway

    def writers_for(self, db_url: str, source: str = "mqtt") -> int:
        """Writer threads for the database at `db_url`: as set, else WRITERS_PG on PostgreSQL
        and one on SQLite (ValueError: more than one set on SQLite, whose one write lock they
        would only queue on), known before the database is opened. NATS ingest (`source`
        "nats") takes one unless set: there more writers only split its batches, the NATS
        client's own work per message bounds it (docs/deployment.md)."""
        is_pg = db_url.startswith("postgresql")
        if self.writers is None:
            return WRITERS_PG if is_pg and source == "mqtt" else 1
        if self.writers > 1 and not is_pg:
            raise ValueError(f"ingest.writers = {self.writers} needs PostgreSQL: SQLite takes "
                             "one writer at a time; remove the key or set it to 1")
        return self.writers


def writer_count(section: dict[str, object]) -> int | None:
    """`writers` of collector.toml [ingest]: transactions in flight at once (None: unset)."""
    return None if section.get("writers") is None else _whole(section, "writers", MAX_WRITERS)


def device_limit(section: dict[str, object]) -> int:
    """`max_devices_per_gateway` of collector.toml [ingest]: devices a gateway may create by
    reporting them (collector.store_ingest); by default as many as a gateway's inventory may
    hold."""
    return _whole(section, "max_devices_per_gateway", 10_000_000, contract.MAX_DEVICES)


def _whole(section: dict[str, object], key: str, top: int, default: int = 1) -> int:
    """A whole number from 1 to `top` of collector.toml [ingest] (a bool is not one)."""
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ValueError(f"ingest.{key}: {value!r} is not a whole number from 1 to {top}")
    return value


def pending_budget(section: dict[str, object]) -> int:
    """`max_pending` of collector.toml [ingest]: bytes of messages held between receiving and
    storing ("64MB", "512MiB" or a number of bytes; at least 1 MB)."""
    from devices.durations import parse_size

    value = section.get("max_pending", DEFAULT_MAX_PENDING)
    try:
        size = parse_size(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"ingest.max_pending: {exc}") from None
    if size < 1024 * 1024:
        raise ValueError(f"ingest.max_pending: {size} bytes is below the 1 MB minimum")
    return size


class ByteBudget:
    """Bytes held by messages received and not yet stored, bounded: `take` waits for room.

    The MQTT thread takes before it queues a message, so when the store falls behind it stops
    reading from the socket: the broker keeps the rest (QoS 1, unacknowledged) instead of this
    process. One message is always let in, however large, so that nothing is stuck for good.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waits = 0  # times a message waited for room
        self.waited_s = 0.0  # time spent waiting, in all
        self._cond = threading.Condition()

    def take(self, n: int, stopped: Callable[[], bool]) -> bool:
        """Hold n bytes, waiting while over the limit; False if told to stop first."""
        with self._cond:
            if self.used and self.used + n > self.limit:
                self.waits += 1
                t0 = time.monotonic()
                while self.used and self.used + n > self.limit:
                    if stopped():
                        self.waited_s += time.monotonic() - t0
                        return False
                    self._cond.wait(0.25)
                self.waited_s += time.monotonic() - t0
            self.used += n
            return True

    def give(self, n: int) -> None:
        """Release n bytes (their messages are stored and acknowledged, or dropped)."""
        if n:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


@dataclass
class IngestStats:
    """Counters of the ingest path, served by the health endpoint."""

    received: int = 0
    stored_messages: int = 0
    duplicates: int = 0
    readings: int = 0
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # entries not stored, by reason
    dropped_values: Counter[str] = field(default_factory=Counter)
    time_corrected: Counter[str] = field(default_factory=Counter)
    flagged: Counter[str] = field(default_factory=Counter)  # readings made uncertain, by reason
    store_errors: int = 0
    store_retries_now: int = 0  # deadlock/serialization victims retried at once
    quarantined: int = 0
    hook_errors: int = 0
    connected: bool = False
    last_commit_ms: float = 0.0
    commits: int = 0  # ingest transactions committed (stored_messages / commits: batch size)
    failing_since: float | None = None  # monotonic time the store started failing
    last_error: str = ""
    handled: int = 0  # received and then stored, quarantined or rejected (and acknowledged)
    last_progress: float = field(default_factory=time.monotonic)
    budget: ByteBudget | None = None  # the MQTT source's bound on what it holds
    writers: int = 1  # transactions in flight at once
    # monotonic receive time of the oldest message not acknowledged yet (None: none)
    unacked_since: Callable[[], float | None] | None = None

    @property
    def pending(self) -> int:
        """Messages received and not yet stored and acknowledged."""
        return self.received - self.handled

    def add(self, result: IngestResult) -> None:
        """Count what one committed transaction did."""
        self.stored_messages += result.messages
        self.duplicates += result.duplicates
        self.readings += result.readings
        self.events += result.events
        self.refused.update(result.refused)
        self.dropped_values.update(result.dropped_values)
        self.time_corrected.update(result.time_corrected)
        self.flagged.update(result.flagged)

    def stuck(self) -> str:
        """Why ingest is stuck, or "" when it is not."""
        now = time.monotonic()
        if self.failing_since is not None and now - self.failing_since > STUCK_AFTER_S:
            return (f"store failing for {now - self.failing_since:.0f} s "
                    f"({self.pending} messages unacknowledged): {self.last_error}")
        # The oldest message waiting (the MQTT source): also one writer held while the
        # others store, where the time of the last progress moves on.
        oldest = self.unacked_since() if self.unacked_since else None
        if oldest is not None and now - oldest > STALLED_AFTER_S:
            return (f"a message unacknowledged for {now - oldest:.0f} s "
                    f"({self.pending} messages unacknowledged)")
        if self.pending > 0 and now - self.last_progress > STALLED_AFTER_S:
            return (f"nothing stored for {now - self.last_progress:.0f} s with "
                    f"{self.pending} messages unacknowledged")
        return ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return {
            "received": self.received, "stored_messages": self.stored_messages,
            "duplicates": self.duplicates, "readings": self.readings, "events": self.events,
            "rejected": dict(self.rejected), "refused": dict(self.refused),
            "dropped_values": dict(self.dropped_values),
            "time_corrected": dict(self.time_corrected), "flagged": dict(self.flagged),
            "store_errors": self.store_errors, "store_retries_now": self.store_retries_now,
            "quarantined": self.quarantined, "hook_errors": self.hook_errors,
            "broker_connected": self.connected, "source": "mqtt",
            "last_commit_ms": round(self.last_commit_ms, 2), "commits": self.commits,
            "pending": self.pending, "stuck": self.stuck(), "writers": self.writers,
            **({"pending_bytes": self.budget.used, "max_pending_bytes": self.budget.limit,
                "backpressure_waits": self.budget.waits,
                "backpressure_s": round(self.budget.waited_s, 1)} if self.budget else {}),
        }


@dataclass(frozen=True, slots=True)
class Entry:
    """A received message on its way to the store: what to store, and what it was."""

    record: Inbound | None  # None: nothing to store (a reply), only acknowledge
    topic: str
    payload: bytes
    received: int


def entry_of(rec: Received, topic_name: str, payload: bytes, received: int,
             live: bool) -> Entry:
    """What the writer does with a validated message."""
    msg = rec.message
    record: Inbound | None = None
    if isinstance(msg, DataEnvelope | EventsEnvelope):
        record = Accepted(rec.gateway, msg, received, live)
    elif isinstance(msg, StateMessage | HealthMessage):
        record = GatewayMessage(rec.gateway, msg, received, live)
    return Entry(record, topic_name, payload, received)


@dataclass(slots=True)
class _Item:
    mid: int
    qos: int
    entry: Entry | None  # None: rejected by the contract, only acknowledge
    held: int  # bytes taken from the budget
    done: bool = False  # stored, quarantined or rejected: may be acknowledged
    since: float = field(default_factory=time.monotonic)  # received


class _NoTopicCallbacks:
    """paho's table of per-topic message callbacks, for a client that registers none.

    paho matches every message's topic against that table before it calls `on_message`; an
    empty table still costs a topic split and a generator per message, a sixth of the MQTT
    thread's time at the ingest ceiling.
    """

    def iter_match(self, _topic: str) -> tuple[()]:
        return ()

    def __setitem__(self, key: str, value: object) -> None:
        raise TypeError("this client takes no per-topic message callbacks")


def _without_topic_callbacks(client: mqtt.Client) -> None:
    from paho.mqtt.matcher import MQTTMatcher

    if isinstance(getattr(client, "_on_message_filtered", None), MQTTMatcher):
        client._on_message_filtered = _NoTopicCallbacks()  # type: ignore[assignment]


class ReadBuffered:
    """The ingest client's socket, read in blocks of `BLOCK` bytes instead of paho's three
    or four `recv` calls per packet (the command byte, each remaining-length byte, the rest).

    paho reads a packet as `recv(1)`, `recv(1)`..., `recv(n)`: four system calls per
    lift-change envelope, each releasing and retaking the GIL against the writer thread.
    Here one `recv(BLOCK)` serves every packet it holds. `pending()` tells paho's loop that
    bytes are waiting here (it asks that of TLS sockets), so it does not wait in select()
    for a socket whose bytes were already read. Everything else is the socket's own.
    """

    BLOCK = 256 * 1024

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        """Up to n bytes: from the block read before, else from the socket."""
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(n, self.BLOCK))  # BlockingIOError etc. go to paho
            if len(data) <= n:
                return data
            self._buf, self._pos = data, 0
        pos = self._pos
        out = self._buf[pos:pos + n]
        self._pos = pos + len(out)
        return out

    def fill(self) -> int:
        """Read the next block once the last one is used up; bytes waiting in the block (0: the
        peer closed). The socket's exceptions (BlockingIOError, OSError) go to the caller."""
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._sock.recv(self.BLOCK), 0
        return len(self._buf) - self._pos

    def take_publishes(self, handle: Callable[[str, bytes, int, int], None]) -> int:
        """Hand every complete QoS 0/1 PUBLISH at the front of the block to `handle(topic,
        payload, qos, mid)`, taking it; stop at any other packet, a packet not all read yet or
        one that does not parse (paho's own reader deals with those). The packets taken.

        MQTT 3.1.1 only (no properties): a PUBLISH is the command byte 0x3_, the remaining
        length (1 to 4 bytes), the topic (2-byte length, UTF-8), the packet id if QoS > 0,
        the payload.
        """
        buf, pos, end = self._buf, self._pos, len(self._buf)
        n = 0
        while pos < end:
            head = buf[pos]
            qos = (head >> 1) & 3
            if head >> 4 != 3 or qos > 1:
                break
            i, length, shift = pos + 1, 0, 0
            while i < end and shift < 28:
                byte = buf[i]
                i += 1
                length |= (byte & 127) << shift
                shift += 7
                if byte < 128:
                    break
            else:
                break  # length not all read yet, or over 4 bytes (paho: protocol error)
            stop = i + length
            if stop > end or length < 2:
                break
            body = i + 2 + ((buf[i] << 8) | buf[i + 1])
            if body + 2 * qos > stop:
                break
            if qos:
                mid, start = (buf[body] << 8) | buf[body + 1], body + 2
            else:
                mid, start = 0, body
            try:
                topic = buf[i + 2:body].decode()
            except UnicodeDecodeError:
                break
            self._pos = pos = stop
            n += 1
            handle(topic, buf[start:stop], qos, mid)
        return n

    def pending(self) -> int:
        """Bytes read from the socket and not yet taken (plus a TLS socket's own)."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if callable(inner) else 0)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class IngestClient(mqtt.Client):
    """paho's client, reading the PUBLISH packets of each block itself.

    paho turns every received packet into a dict of its state, an `MQTTMessage` and two
    callback locks: about 20 µs of CPU per lift-change envelope where parsing the packets of
    a block straight to (topic, payload, qos, packet id) takes 1.5 µs (median of 3 runs of
    60,000 queued QoS 1 messages against a private Mosquitto, CPU of the reading thread).
    Everything else — connecting, subscribing, keepalive, publishing, acknowledging, any
    other packet, a packet split across blocks — is paho's own.
    """

    def __init__(self, *args: Any, on_publish_packet: Callable[[str, bytes, int, int], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_publish_packet = on_publish_packet

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        sock = self._sock
        if (isinstance(sock, ReadBuffered) and self._in_packet["command"] == 0
                and self._protocol == mqtt.MQTTv311):
            try:
                if not sock.fill():
                    return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
            except (BlockingIOError, ssl.SSLWantReadError):
                return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
            except ssl.SSLWantWriteError:
                self._call_socket_register_write()
                return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as exc:
                log.warning("collector: failed to receive from the broker: %s", exc)
                return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
            try:
                taken = sock.take_publishes(self.on_publish_packet)
            except Exception:  # a bug in the handler must not stop the reading thread
                log.exception("collector: message handler failed; the message stays "
                              "unacknowledged until the next connection")
                taken = 1
            if taken:
                with self._msgtime_mutex:
                    self._last_bytes_received = mqtt.time_func()
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._packet_read()


def _read_buffered(client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """paho's `on_socket_open`: read the new connection's socket through `ReadBuffered`."""
    if getattr(client, "_sock", None) is sock and not isinstance(sock, ReadBuffered):
        client._sock = ReadBuffered(sock)


_PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 PUBACK: type 0x40, remaining length 2, mid


def ack_all(client: mqtt.Client, items: Sequence[_Item]) -> None:
    """Acknowledge a stored batch's QoS 1 messages with one queued write.

    `Client.ack` queues each 4-byte PUBACK on its own, waking paho's thread and sending it in
    a system call of its own: a tenth of the CPU per envelope at the ingest ceiling. The same
    PUBACKs, in the same order, go out as one packet of paho's queue (written whole, in parts
    if the socket is full). Without that queue (another paho) each is acknowledged as before.
    """
    mids = [i.mid for i in items if i.qos == 1]
    queue = getattr(client, "_packet_queue", None)
    if len(mids) > 1 and callable(queue) and getattr(client, "_manual_ack", False):
        queue(mqtt.PUBACK, b"".join([_PUBACK.pack(mqtt.PUBACK, 2, m) for m in mids]), 0, 1)
    else:
        for mid in mids:
            client.ack(mid, 1)
    for item in items:
        if item.qos == 2:
            client.ack(item.mid, item.qos)


class IngestCore:
    """What every ingest source shares: rejecting, storing robustly, accounting, hooks."""

    store: Store
    stats: IngestStats
    on_stored: Callable[[list[Accepted]], None]
    on_state: Callable[[str, str, list[str]], None]
    _warned: set[tuple[str, str]]
    memory: MemoryTrimmer  # freed heap back to the OS after stored batches
    # Counters and hooks: several threads store (writers, NATS's state channel), one at a
    # time here, so that each feature sees one batch at a time.
    _accounting: threading.Lock

    def _reject(self, topic_name: str, exc: ContractError) -> None:
        """Count a message that breaks the contract; log once per gateway and reason."""
        with self._accounting:
            self.stats.rejected[exc.reason] += 1
        key = (topic_name.split("/")[2] if topic_name.count("/") >= 2 else topic_name,
               exc.reason)
        if key not in self._warned and len(self._warned) < 10_000:
            self._warned.add(key)
            log.warning("collector: rejected message on %s: %s (counted from now on)",
                        topic_name, exc)

    def _accepted(self, rec: Received, topic_name: str) -> None:
        """Count the readings and events the contract left out of a sound envelope, by reason;
        log once per gateway and reason. The envelope itself goes on to the store."""
        for item in rec.refused:
            with self._accounting:
                self.stats.refused[item.reason] += 1
            key = (rec.gateway, item.reason)
            if key not in self._warned and len(self._warned) < 10_000:
                self._warned.add(key)
                log.warning("collector: left out item %d (device %r) of a message on %s: "
                            "%s: %s (counted from now on)", item.index, item.device,
                            topic_name, item.reason, item.detail)

    def store_entries(self, entries: Sequence[Entry], wait: Callable[[float], bool]) -> bool:
        """Store entries until each is stored or quarantined; False if told to stop first.

        A deadlock victim is retried at once; a failure caused by a message's values splits
        the batch until that message is alone, and quarantines it; any other failure (the
        database is down) waits and retries: nothing is acknowledged meanwhile. `wait(s)`
        pauses and says whether to go on.
        """
        records = [e for e in entries if e.record is not None]
        if not records:
            return True
        now_tries = data_tries = 0
        while True:
            t0 = time.perf_counter()
            try:
                result = self.store.ingest([e.record for e in records if e.record])
            except Exception as exc:
                how = classify(exc)
                if how is Failure.RETRY_NOW and now_tries < RETRY_NOW_LIMIT:
                    now_tries += 1
                    with self._accounting:
                        self.stats.store_retries_now += 1
                    continue
                if how is Failure.DATA:
                    if len(records) == 1:
                        data_tries += 1
                        if data_tries == 1:  # refused twice on its own before it is poison
                            continue
                        return self._quarantine(records[0], exc, wait)
                    half = len(records) // 2
                    return (self.store_entries(records[:half], wait)
                            and self.store_entries(records[half:], wait))
                with self._accounting:
                    self._failing(exc)
                if not wait(1.0):
                    return False
                continue
            with self._accounting:
                self._recovered()
                self._committed(result, t0)
                self.stats.last_progress = time.monotonic()
            return True

    def _quarantine(self, entry: Entry, exc: BaseException,
                    wait: Callable[[float], bool]) -> bool:
        rec = entry.record
        assert rec is not None
        msg = rec.envelope if isinstance(rec, Accepted) else rec.message
        seq = getattr(msg, "seq", None)
        channel = entry.topic.rsplit("/", 1)[-1]
        error = f"{type(exc).__name__}: {exc}"
        while True:
            try:
                self.store.quarantine(rec.gateway, channel, entry.topic, seq, entry.payload,
                                      error, entry.received)
                break
            except Exception as qexc:  # the database is down: keep the message until it is back
                with self._accounting:
                    self._failing(qexc)
                if not wait(1.0):
                    return False
        with self._accounting:
            self._recovered()
            self.stats.quarantined += 1
        log.error("collector: quarantined %s message seq %s of %s, refused by the store: %s "
                  "(GET /api/v1/quarantine)", channel, seq, rec.gateway, error)
        return True

    def _failing(self, exc: BaseException) -> None:
        self.stats.store_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if self.stats.failing_since is None:
            self.stats.failing_since = time.monotonic()
            log.error("collector: store failed: %s; retrying (counted from now on)",
                      self.stats.last_error)

    def _recovered(self) -> None:
        if self.stats.failing_since is not None:
            log.info("collector: store works again after %.1f s",
                     time.monotonic() - self.stats.failing_since)
            self.stats.failing_since = None

    def _committed(self, result: IngestResult, started: float) -> None:
        """Account a committed batch and hand what it newly stored to the features' hooks.

        Re-delivered duplicates are not handed on: every feature sees each message once.
        """
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        self.stats.commits += 1
        self.stats.add(result)
        for gateway, state, devices in result.states:
            self._hook(self.on_state, gateway, state, devices)
        if result.fresh:
            self._hook(self.on_stored, result.fresh)

    def _hook(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception:  # a feature's hook never blocks storing and acknowledging
            self.stats.hook_errors += 1
            if self.stats.hook_errors == 1:
                log.exception("collector: an ingest hook failed (counted from now on)")


class Ingest(IngestCore):
    """Subscribes to every gateway and stores what arrives through its writer threads.

    Each writer takes the messages of its share of the gateways (by gateway id), so a
    gateway's messages are stored in arrival order by one writer, and two writers never wait
    on each other's rows. Every message is acknowledged once it and all received before it
    are stored (MQTT 3.1.1 §4.6: PUBACKs in the order of the PUBLISHes).
    """

    def __init__(self, store: Store, broker_url: str, *, client_id: str = "citygate-collector",
                 share_group: str | None = None,
                 username: str | None = None, password: str | None = None,
                 max_batch: int = MAX_BATCH, max_wait: float = 0.05, linger: float = LINGER_S,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING, writers: int = 1,
                 on_stored: Callable[[list[Accepted]], None] | None = None,
                 on_state: Callable[[str, str, list[str]], None] | None = None) -> None:
        if not 1 <= writers <= MAX_WRITERS:
            raise ValueError(f"writers: {writers} is not from 1 to {MAX_WRITERS}")
        self.store = store
        u = urlparse(broker_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 1883
        self.client_id = client_id
        self.share_group = share_group
        self.username, self.password = username, password
        self.max_batch, self.max_wait, self.linger = max_batch, max_wait, linger
        self.on_stored = on_stored or (lambda items: None)
        self.on_state = on_state or (lambda gateway, state, devices: None)
        self.budget = ByteBudget(max_pending_bytes)
        self.max_batch_bytes = max(1, max_pending_bytes // 4)  # the rest keeps arriving
        self.stats = IngestStats(budget=self.budget, writers=writers,
                                 unacked_since=self._unacked_since)
        self.probe_topic = f"{contract.ROOT}/_collector/{client_id}/probe"
        # One queue per writer: unbounded in messages, bounded in bytes by the budget the MQTT
        # thread takes from.
        self._lanes: list[queue.SimpleQueue[_Item | None]] = [
            queue.SimpleQueue() for _ in range(writers)]
        # Received and not acknowledged yet, in arrival order: the MQTT thread appends, the
        # writers acknowledge the prefix that is done (under `_acking`, so in order).
        self._unacked: deque[_Item] = deque()
        self._acking = threading.Lock()
        self._accounting = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self.memory = MemoryTrimmer()
        self._client: mqtt.Client | None = None
        self._writers: list[threading.Thread] = []
        self._prober: threading.Thread | None = None
        self._stop = threading.Event()
        self._probe_back: int | None = None  # send time of the newest probe received back

    def start(self) -> None:
        """Connect (retrying in the background) and start the writer."""
        client = IngestClient(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                              clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True,
                              on_publish_packet=self._on_publish)
        if self.username:
            client.username_pw_set(self.username, self.password)
        client.reconnect_delay_set(1, 10)
        client.will_set(contract.collector_state_topic(self.client_id),
                        contract.collector_state_payload(self.client_id, "offline", now_ms()),
                        qos=1, retain=True)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        _without_topic_callbacks(client)
        client.on_socket_open = _read_buffered
        self._client = client
        self._stop.clear()
        self._writers = [threading.Thread(target=self._write_loop, args=(lane,),
                                          name=f"ingest-writer-{k + 1}", daemon=True)
                         for k, lane in enumerate(self._lanes)]
        for writer in self._writers:
            writer.start()
        self._prober = threading.Thread(target=self._probe_loop, name="ingest-probe",
                                        daemon=True)
        self._prober.start()
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect and flush what was received (idempotent)."""
        self._stop.set()
        client, self._client = self._client, None
        if client is not None:
            self.stats.connected = False
            with contextlib.suppress(Exception):
                client.publish(contract.collector_state_topic(self.client_id),
                               contract.collector_state_payload(self.client_id, "offline",
                                                                now_ms()),
                               qos=1, retain=True).wait_for_publish(2)
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()
        if self._prober is not None:
            self._prober.join(timeout=5)
            self._prober = None
        for lane in self._lanes if self._writers else ():
            lane.put(None)
        deadline = time.monotonic() + 10
        for writer in self._writers:
            writer.join(timeout=max(0.0, deadline - time.monotonic()))
        self._writers = []

    # --- paho thread ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("collector: broker refused connection: %s", rc)
            return
        self.stats.connected = True
        self._probe_back = None  # nothing is live until a probe came back through the queue
        log.info("collector connected to %s:%d (session present: %s)", self.host, self.port,
                 getattr(flags, "session_present", "?"))
        topics = contract.subscriptions(self.share_group)
        # A session once subscribed otherwise (alone, or as a worker of the default group)
        # would be sent every message twice.
        client.unsubscribe(sorted({*contract.subscriptions(),
                                   *contract.subscriptions(DEFAULT_SHARE_GROUP)} - set(topics)))
        client.subscribe([(t, contract.QOS) for t in topics] + [(self.probe_topic, contract.QOS)])
        client.publish(contract.collector_state_topic(self.client_id),
                       contract.collector_state_payload(self.client_id, "online", now_ms()),
                       qos=1, retain=True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.stats.connected:
            log.warning("collector: disconnected from broker: %s", rc)
        self.stats.connected = False
        self._probe_back = None

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's callback, for a PUBLISH its own reader read (see IngestClient)."""
        try:
            topic_name = msg.topic
        except UnicodeDecodeError:
            topic_name = "(topic not UTF-8)"
        self._on_publish(topic_name, bytes(msg.payload), msg.qos, msg.mid)

    def _on_publish(self, topic_name: str, payload: bytes, qos: int, mid: int) -> None:
        """Every message received (MQTT thread): decoded, queued for the writer."""
        received = now_ms()
        if topic_name == self.probe_topic:
            with contextlib.suppress(ValueError, orjson.JSONDecodeError):
                sent = int(orjson.loads(payload))
                self._probe_back = max(self._probe_back or 0, sent)
            if qos > 0:  # acknowledged after what arrived before it
                self._unacked.append(_Item(mid, qos, None, 0, done=True))
                self._acknowledge()
            return
        held = len(payload) * HELD_PER_PAYLOAD_BYTE + HELD_PER_MESSAGE
        if not self.budget.take(held, self._stop.is_set):
            return  # stopping: unacknowledged, so the broker delivers it again
        if self.stats.pending == 0:  # stalled time counts from the first message waiting
            self.stats.last_progress = time.monotonic()
        self.stats.received += 1
        try:
            rec = contract.decode(topic_name, payload)
        except ContractError as exc:
            self._reject(topic_name, exc)
            self._enqueue(_Item(mid, qos, None, held), 0)
            return
        if rec.refused:
            self._accepted(rec, topic_name)
        lanes = len(self._lanes)
        self._enqueue(_Item(mid, qos, entry_of(rec, topic_name, payload, received,
                                               self._live(received)), held),
                      hash(rec.gateway) % lanes if lanes > 1 else 0)

    def _unacked_since(self) -> float | None:
        """When the oldest message not acknowledged yet was received: acknowledgements go in
        arrival order, so a writer held on one gateway's rows shows here while the others
        store, where `last_progress` moves on."""
        try:
            return self._unacked[0].since
        except IndexError:
            return None

    def _enqueue(self, item: _Item, lane: int) -> None:
        self._unacked.append(item)
        self._lanes[lane].put(item)

    def _live(self, received: int) -> bool:
        """Did a message received now wait at the broker at most the live bound?

        The broker's queue for this session is first in, first out: a message received after
        probe p came back was queued after p was sent, so it waited at most `received − sent
        time of p`.
        """
        back = self._probe_back
        return back is not None and received - back <= self.store.clock_policy.live_bound_ms

    def _probe_loop(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_S):
            client = self._client
            if client is not None and self.stats.connected:
                with contextlib.suppress(Exception):
                    client.publish(self.probe_topic, str(now_ms()).encode(), qos=1)

    # --- writer thread -----------------------------------------------------------------------

    def _write_loop(self, lane: queue.SimpleQueue[_Item | None]) -> None:
        while True:
            first = lane.get()
            if first is None:
                return
            batch = [first]
            size = first.held
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch and size < self.max_batch_bytes:
                # Until the batch is full or max_wait is over, unless nothing arrives for the
                # linger: the broker's window is used up (it waits for our acks) or the
                # traffic paused, and waiting longer only delays the batch.
                timeout = min(deadline - time.monotonic(), self.linger)
                if timeout <= 0:
                    break
                try:
                    item = lane.get(timeout=timeout)
                except queue.Empty:
                    break
                if item is None:
                    self._flush(batch)
                    return
                batch.append(item)
                size += item.held
            self._flush(batch)

    def _wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return self._client is not None

    def _flush(self, batch: list[_Item]) -> None:
        entries = [i.entry for i in batch if i.entry is not None]
        if not self.store_entries(entries, self._wait):
            return  # stopping with the database down: unacknowledged, so re-delivered
        for item in batch:
            item.done = True
        self._acknowledge()
        self.memory.maybe()  # here, not under the lock nor on the MQTT thread: it may take ms

    def _acknowledge(self) -> None:
        """Acknowledge every message up to the first one not done yet, in arrival order, and
        release what they held."""
        with self._acking:
            done: list[_Item] = []
            unacked = self._unacked
            while unacked and unacked[0].done:
                done.append(unacked.popleft())
            if not done:
                return
            client = self._client
            if client is not None:
                try:
                    ack_all(client, done)
                except OSError:  # paho closing its socket (stopping): the broker re-delivers
                    log.debug("collector: acknowledgements not sent", exc_info=True)
            held = [i.held for i in done if i.held]  # held 0: the collector's own probe
            self.stats.handled += len(held)
            self.stats.last_progress = time.monotonic()
            self.budget.give(sum(held))
