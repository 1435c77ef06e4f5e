"""Ingest from a NATS cluster: every collector pulls from one shared durable JetStream consumer.

Gateways publish MQTT 3.1.1 to any node; NATS stores each QoS 1 message in its internal
`$MQTT_msgs` stream (replicated, PUBACK only after the replicas stored it). Collectors do not
subscribe over MQTT for data: NATS 2.9 has no `$share`, so they scale out as one durable pull
consumer on that stream. Each fetched batch is validated, stored in one transaction, and only
then acknowledged, message by message; a collector killed with -9 leaves its batch unacked and
the server redelivers it (to any collector) after `ack_wait`. The (gateway, seq) key absorbs
the duplicates a redelivery or a gateway's re-send after failover produces.

The consumer is created here if missing, and must exist before gateways publish: `$MQTT_msgs`
has interest retention, so a message nobody is interested in is dropped after its PUBACK.

MQTT is still used for what only MQTT offers: the collector's own retained online/offline
state (with a last will), which gateways watch, and the retained gateway states held in
`$MQTT_rmsgs`, read on every (re)connect with a QoS 0 subscription to `citygate/v1/+/state`.
Live births, deaths and last wills also arrive through the durable consumer, so none is missed
while this side connection is down; the retained read covers states published before the
consumer existed (a fresh hub). QoS 0 keeps that subscription out of JetStream: it creates no
consumer, so it adds no interest that would keep messages in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from collector.ingest import MAX_WRITERS, Entry, IngestCore, IngestStats, entry_of
from collector.memory import MemoryTrimmer
from collector.store import Accepted, Store, now_ms
from devices import contract
from devices.contract import ContractError

log = logging.getLogger(__name__)

STREAM = "$MQTT_msgs"  # NATS-internal: pinned server version, checked by hil_tests/test_cluster.py
SUBJECT_PREFIX = "$MQTT.msgs."
DURABLE = "citygate-collectors"
# citygate/v1/<gateway>/<channel>: exactly the uplink topics (commands and collector states
# have five levels and stay out).
FILTER_SUBJECT = f"{SUBJECT_PREFIX}{contract.ROOT.replace('/', '.')}.*.*"


@dataclass(frozen=True, slots=True)
class ConsumerTuning:
    """Timing and bounds of the shared consumer and of one collector's pulls."""

    max_batch: int = 500  # messages per fetch, stored in one transaction
    fetch_wait: float = 1.0  # long-poll for the next message when idle (s)
    linger: float = 0.02  # how long a batch fetch waits for more once nothing is ready (s)
    ack_wait: float = 30.0  # unacked for this long: redelivered to any collector (s)
    max_ack_pending: int = 20_000  # delivered-but-unacked bound over all collectors
    lag_interval: float = 2.0  # how often the consumer's lag is read (s)
    retry_min: float = 0.2  # backoff after a failed fetch or consumer lookup (s)
    retry_max: float = 5.0
    store_retry: float = 1.0  # pause between attempts while the database is down (s)
    mqtt_failover_after: float = 5.0  # side MQTT connection: try the next node after (s)


def topic_from_subject(subject: str) -> str:
    """MQTT topic of a `$MQTT.msgs.` subject: "a.b" -> "a/b" (NATS writes a topic's "." as "//")."""
    name = subject.removeprefix(SUBJECT_PREFIX)
    return "/".join(token.replace("//", ".") for token in name.split("."))


def consumer_config(durable: str, tuning: ConsumerTuning) -> Any:
    """The shared durable pull consumer: explicit acks, every message, bounded pending acks."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    # Explicit, not AckAll: with several collectors, acknowledging "everything up to n" would
    # acknowledge batches other collectors have not stored yet.
    return ConsumerConfig(durable_name=durable, filter_subject=FILTER_SUBJECT,
                          ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                          ack_wait=tuning.ack_wait, max_deliver=-1,
                          max_ack_pending=tuning.max_ack_pending)


def backoff(attempt: int, tuning: ConsumerTuning) -> float:
    """Full-jitter delay before retrying a fetch or a consumer lookup."""
    return random.uniform(0, min(tuning.retry_max, tuning.retry_min * 2 ** min(attempt, 20)))


@dataclass
class NatsIngestStats(IngestStats):
    """IngestStats plus what only a shared JetStream consumer has."""

    redelivered: int = 0  # messages this collector received more than once delivered
    acked: int = 0
    fetch_errors: int = 0
    num_pending: int = 0  # consumer lag: in the stream, not yet delivered to any collector
    num_ack_pending: int = 0  # delivered, not yet acknowledged (all collectors)
    num_redelivered: int = 0  # the consumer's own count of redeliveries in flight
    retained_states: int = 0  # gateway states read from the retained store
    state_channel_connected: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters (IngestStats' keys plus `source: "nats"` and the consumer's)."""
        return {
            **super().as_dict(), "source": "nats",
            "consumer": {"lag": self.num_pending, "ack_pending": self.num_ack_pending,
                         "redelivered_in_flight": self.num_redelivered},
            "redelivered": self.redelivered, "acked": self.acked,
            "fetch_errors": self.fetch_errors, "retained_states": self.retained_states,
            "state_channel_connected": self.state_channel_connected,
        }



class NatsIngest(IngestCore):
    """Pulls every gateway's messages from the shared consumer; same surface as Ingest."""

    stats: NatsIngestStats

    def __init__(self, store: Store, servers: str | Sequence[str], *,
                 mqtt_urls: Sequence[str] = (), client_id: str = "citygate-collector",
                 username: str | None = None, password: str | None = None,
                 durable: str = DURABLE, tuning: ConsumerTuning | None = None,
                 on_stored: Callable[[list[Accepted]], None] | None = None,
                 on_state: Callable[[str, str, list[str]], None] | None = None,
                 writers: int = 1) -> None:
        if not 1 <= writers <= MAX_WRITERS:
            raise ValueError(f"writers: {writers} is not from 1 to {MAX_WRITERS}")
        self.store = store
        self.servers = servers.split(",") if isinstance(servers, str) else list(servers)
        self.client_id = client_id
        self.username, self.password = username, password
        self.durable = durable
        self.tuning = tuning or ConsumerTuning()
        self.on_stored = on_stored or (lambda items: None)
        self.on_state = on_state or (lambda gateway, state, devices: None)
        self.stats = NatsIngestStats(writers=writers)
        self._state = StateChannel(self, list(mqtt_urls)) if mqtt_urls else None
        self._warned: set[tuple[str, str]] = set()
        self._accounting = threading.Lock()
        self.memory = MemoryTrimmer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._writers: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Connect (retrying in the background) and start pulling."""
        if self._thread is not None:
            return
        self._writers = ThreadPoolExecutor(self.stats.writers, thread_name_prefix="nats-writer")
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()  # bound to the loop on first use, in the thread
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), name="nats-ingest", daemon=True)
        self._thread.start()
        if self._state is not None:
            self._state.start()

    def stop(self) -> None:
        """Finish the batch in hand, say offline, disconnect (idempotent)."""
        loop, thread = self._loop, self._thread
        if self._state is not None:
            self._state.stop()
        if loop is not None and thread is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._request_stop)
            thread.join(timeout=15)
            if not thread.is_alive():
                loop.close()
        if self._writers is not None:
            self._writers.shutdown(wait=False)
        self._loop, self._thread, self._writers = None, None, None
        self.stats.connected = False

    def _request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    # --- event loop (the ingest thread) ----------------------------------------------------------

    async def _main(self) -> None:
        nc = await self._connect()
        if nc is None:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pull_loop(nc), name="nats-pull")
                tg.create_task(self._lag_loop(nc), name="nats-lag")
        finally:
            # Acks already went out with the batch; flush them, then close (a drain would wait
            # for the pull subscription's pending requests to expire).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.flush(), 2)
            with contextlib.suppress(Exception):
                await nc.close()

    async def _connect(self) -> Any:
        """A NATS connection that reconnects by itself, or None when asked to stop first."""
        import nats

        assert self._stopping is not None
        attempt = 0
        while not self._stopping.is_set():
            try:
                nc = await nats.connect(
                    servers=self.servers, name=self.client_id, user=self.username,
                    password=self.password, connect_timeout=2, allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    dont_randomize=True,  # the list is a preference: spread collectors by it
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                    error_cb=self._error)
            except Exception as exc:  # every failure means "try again"
                if attempt == 0:
                    log.warning("collector: cannot reach NATS at %s: %s (retrying)",
                                ",".join(self.servers), exc)
                attempt += 1
                await self._sleep(backoff(attempt, self.tuning))
                continue
            self.stats.connected = True
            log.info("collector %s connected to NATS %s", self.client_id,
                     nc.connected_url.netloc if nc.connected_url else "?")
            return nc
        return None

    async def _disconnected(self) -> None:
        if self.stats.connected and not (self._stopping and self._stopping.is_set()):
            log.warning("collector: disconnected from NATS; reconnecting")
        self.stats.connected = False

    async def _reconnected(self) -> None:
        self.stats.connected = True
        log.info("collector: reconnected to NATS")

    async def _error(self, exc: Exception) -> None:
        log.debug("collector: NATS client error: %s", exc)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _pull_loop(self, nc: Any) -> None:
        assert self._stopping is not None
        js = nc.jetstream(timeout=3)
        attempt = 0
        sub: Any = None
        while not self._stopping.is_set():
            try:
                if sub is None:
                    await self._ensure_consumer(js)
                    sub = await js.pull_subscribe_bind(durable=self.durable, stream=STREAM)
                msgs = await self._next_batch(sub)
            except TimeoutError:
                continue  # nothing to do (or a node is electing a leader): ask again
            except Exception as exc:  # node loss, leader election, no stream yet
                self.stats.fetch_errors += 1
                attempt += 1
                if attempt == 1:
                    log.warning("collector: cannot pull from %s/%s: %s (retrying)", STREAM,
                                self.durable, exc)
                await self._sleep(backoff(attempt, self.tuning))
                continue
            if attempt:
                log.info("collector: pulling from %s/%s again", STREAM, self.durable)
                attempt = 0
            await self._handle(msgs)

    async def _next_batch(self, sub: Any) -> list[Any]:
        """What is ready now (up to max_batch); when idle, long-poll for the next message.

        One long fetch of max_batch would hold what arrives until the batch fills or the wait
        ends (nats-py keeps collecting), adding up to `fetch_wait` of latency at low rates.
        """
        try:
            msgs: list[Any] = await sub.fetch(self.tuning.max_batch,
                                              timeout=self.tuning.linger)
            return msgs
        except TimeoutError:
            pass
        first: list[Any] = await sub.fetch(1, timeout=self.tuning.fetch_wait)
        return first

    async def _ensure_consumer(self, js: Any) -> None:
        """Create the shared durable consumer unless it exists (identical config is a no-op)."""
        from nats.js.errors import NotFoundError

        try:
            await js.consumer_info(STREAM, self.durable)
        except NotFoundError:
            await js.add_consumer(STREAM, consumer_config(self.durable, self.tuning))
            log.info("collector: created durable consumer %s on %s (filter %s)", self.durable,
                     STREAM, FILTER_SUBJECT)

    async def _lag_loop(self, nc: Any) -> None:
        assert self._stopping is not None
        js = nc.jetstream(timeout=3)
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):
                info = await js.consumer_info(STREAM, self.durable)
                self.stats.num_pending = int(info.num_pending or 0)
                self.stats.num_ack_pending = int(info.num_ack_pending or 0)
                self.stats.num_redelivered = int(info.num_redelivered or 0)
            await self._sleep(self.tuning.lag_interval)

    # --- one batch: validate, store, then acknowledge --------------------------------------------

    async def _handle(self, msgs: list[Any]) -> None:
        """Store a fetched batch, each writer its share of the gateways (a gateway's messages
        in order, by one writer), and acknowledge each share once it is stored."""
        lanes: dict[int, tuple[list[Any], list[Entry]]] = {}
        for msg in msgs:
            self.stats.received += 1
            if msg.metadata.num_delivered > 1:
                self.stats.redelivered += 1
            entry, gateway = self._entry(msg)
            share = lanes.setdefault(hash(gateway) % self.stats.writers, ([], []))
            share[0].append(msg)
            if entry is not None:
                share[1].append(entry)
        loop = asyncio.get_running_loop()
        stored = await asyncio.gather(*(self._store_share(loop, share_msgs, entries)
                                        for share_msgs, entries in lanes.values()))
        if not all(stored):
            return  # stopping with the database down: unacked, redelivered to another collector
        self.stats.handled += len(msgs)
        self.stats.last_progress = time.monotonic()
        if self.memory.due():  # off the event loop: a trim takes tens of milliseconds
            await asyncio.to_thread(self.memory.maybe)

    async def _store_share(self, loop: asyncio.AbstractEventLoop, msgs: list[Any],
                           entries: list[Entry]) -> bool:
        stored = await loop.run_in_executor(self._writers, self.store_entries, entries,
                                            lambda s: self._wait_in_thread(loop, msgs, s))
        if stored:
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.ack()
                    self.stats.acked += 1
        return bool(stored)

    def _entry(self, msg: Any) -> tuple[Entry | None, str]:
        """What to store of a message (None: nothing, only acknowledge), and its gateway."""
        topic_name = topic_from_subject(msg.subject)
        payload = bytes(msg.data)
        try:
            rec = contract.decode(topic_name, payload)
        except ContractError as exc:
            self._reject(topic_name, exc)  # counted, then acknowledged: never redelivered
            return None, ""
        self._accepted(rec, topic_name)
        received = now_ms()
        # The stream's own time of the message: how long it waited is known exactly.
        stamp = getattr(msg.metadata, "timestamp", None)
        live = stamp is not None and \
            received - stamp.timestamp() * 1000 <= self.store.clock_policy.live_bound_ms
        return entry_of(rec, topic_name, payload, received, live), rec.gateway

    def _wait_in_thread(self, loop: asyncio.AbstractEventLoop, msgs: list[Any],
                        seconds: float) -> bool:
        """Pause while the database is down, keeping the batch ours; False when stopping."""
        future = asyncio.run_coroutine_threadsafe(self._hold(msgs, seconds), loop)
        try:
            return bool(future.result(seconds + 10))
        except Exception:
            return False

    async def _hold(self, msgs: list[Any], seconds: float) -> bool:
        assert self._stopping is not None
        await self._sleep(self.tuning.store_retry if seconds else 0)
        if self._stopping.is_set():
            return False
        for msg in msgs:  # still ours: keep the server from redelivering meanwhile
            with contextlib.suppress(Exception):
                await msg.in_progress()
        return True

    def retained_state(self, topic_name: str, payload: bytes) -> None:
        """Record a gateway state read from the retained store (side MQTT connection)."""
        try:
            rec = contract.decode(topic_name, payload)
        except ContractError:
            return  # a cleared retained state or garbage: the durable consumer counts those
        entry = entry_of(rec, topic_name, payload, now_ms(), False)
        if self.store_entries([entry], _pause):
            self.stats.retained_states += 1


class StateChannel:
    """The collector's MQTT side connection: its retained state and will, retained gateway states.

    Fails over across the given MQTT URLs (one per cluster node) with a fresh paho client each
    time, as gateways do.
    """

    def __init__(self, ingest: NatsIngest, urls: list[str]) -> None:
        self.ingest = ingest
        self.urls = urls
        self._client: mqtt.Client | None = None
        self._index = 0
        self._down_since = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect to the first node and keep a connection to some node."""
        self._stop.clear()
        self._connect()
        self._thread = threading.Thread(target=self._keep, name="nats-ingest-mqtt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Publish offline and disconnect (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        client, self._client = self._client, None
        if client is None:
            return
        if self.ingest.stats.state_channel_connected:
            with contextlib.suppress(Exception):
                client.publish(self._topic, self._payload("offline"), qos=1,
                               retain=True).wait_for_publish(2)
        self.ingest.stats.state_channel_connected = False
        _close(client)

    @property
    def _topic(self) -> str:
        return contract.collector_state_topic(self.ingest.client_id)

    def _payload(self, state: str) -> bytes:
        return contract.collector_state_payload(self.ingest.client_id, state, now_ms())

    def _connect(self) -> None:
        u = urlparse(self.urls[self._index % len(self.urls)])
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.ingest.client_id,
                             clean_session=True, protocol=mqtt.MQTTv311)
        if self.ingest.username:
            client.username_pw_set(self.ingest.username, self.ingest.password)
        client.will_set(self._topic, self._payload("offline"), qos=1, retain=True)
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(u.hostname or "127.0.0.1", u.port or 1883, keepalive=15)
        client.loop_start()

    def _keep(self) -> None:
        """Move to the next node when this one stays unreachable (NATS refuses for ~5 s)."""
        while not self._stop.wait(0.5):
            if self.ingest.stats.state_channel_connected:
                continue
            if time.monotonic() - self._down_since < self.ingest.tuning.mqtt_failover_after:
                continue
            old, self._client = self._client, None
            if old is not None:
                _close(old)
            self._index += 1
            self._down_since = time.monotonic()
            self._connect()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure or client is not self._client:
            return
        self.ingest.stats.state_channel_connected = True
        client.publish(self._topic, self._payload("online"), qos=1, retain=True)
        # QoS 0: NATS creates no JetStream consumer for it (see the module docstring).
        client.subscribe(f"{contract.ROOT}/+/{contract.STATE}", 0)

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        if client is self._client and self.ingest.stats.state_channel_connected:
            self.ingest.stats.state_channel_connected = False
            self._down_since = time.monotonic()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:  # live states come through the durable consumer
            self.ingest.retained_state(msg.topic, bytes(msg.payload))


def _pause(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def _close(client: mqtt.Client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()
    with contextlib.suppress(Exception):
        client.loop_stop()
