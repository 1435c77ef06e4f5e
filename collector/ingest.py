"""MQTT ingest: validate every message, store batches idempotently, then acknowledge them.

The collector uses a persistent session with a fixed client id and acknowledges a QoS 1
message only after the transaction holding it committed, so a collector killed with -9 loses
nothing: the broker re-delivers, and the (gateway, seq) key absorbs the duplicates.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from collector.store import Accepted, IngestResult, Store, now_ms
from devices import contract
from devices.contract import (
    ContractError,
    DataEnvelope,
    EventsEnvelope,
    HealthMessage,
    StateMessage,
)

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    """Counters of the ingest path, served by the health endpoint."""

    received: int = 0
    stored_messages: int = 0
    duplicates: int = 0
    readings: int = 0
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dropped_values: Counter[str] = field(default_factory=Counter)
    time_corrected: Counter[str] = field(default_factory=Counter)
    store_errors: int = 0
    hook_errors: int = 0
    connected: bool = False
    last_commit_ms: float = 0.0

    def add(self, result: IngestResult) -> None:
        """Count what one committed transaction did."""
        self.stored_messages += result.messages
        self.duplicates += result.duplicates
        self.readings += result.readings
        self.events += result.events
        self.dropped_values.update(result.dropped_values)
        self.time_corrected.update(result.time_corrected)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return {
            "received": self.received, "stored_messages": self.stored_messages,
            "duplicates": self.duplicates, "readings": self.readings, "events": self.events,
            "rejected": dict(self.rejected), "dropped_values": dict(self.dropped_values),
            "time_corrected": dict(self.time_corrected),
            "store_errors": self.store_errors, "hook_errors": self.hook_errors,
            "broker_connected": self.connected, "source": "mqtt",
            "last_commit_ms": round(self.last_commit_ms, 2),
        }


@dataclass(frozen=True, slots=True)
class _Item:
    mid: int
    qos: int
    accepted: Accepted | None  # None: nothing to store, only acknowledge


class IngestCore:
    """What every ingest source shares: rejecting, side messages, accounting, hooks."""

    store: Store
    stats: IngestStats
    on_stored: Callable[[list[Accepted]], None]
    on_state: Callable[[str, str, list[str]], None]
    _warned: set[tuple[str, str]]

    def _reject(self, topic_name: str, exc: ContractError) -> None:
        """Count a message that breaks the contract; log once per gateway and reason."""
        self.stats.rejected[exc.reason] += 1
        key = (topic_name.split("/")[2] if topic_name.count("/") >= 2 else topic_name,
               exc.reason)
        if key not in self._warned and len(self._warned) < 10_000:
            self._warned.add(key)
            log.warning("collector: rejected message on %s: %s (counted from now on)",
                        topic_name, exc)

    def _side_message(self, gateway: str, message: Any) -> None:
        """Store a state or health message (replies are not stored)."""
        if isinstance(message, StateMessage):
            self.store.record_state(gateway, message.state, message.ts, message.reason,
                                    message.version, message.boot, message.devices)
            self.on_state(gateway, message.state, list(message.devices))
        elif isinstance(message, HealthMessage):
            self.store.record_health(gateway, message.model_dump())

    def _committed(self, accepted: list[Accepted], result: IngestResult,
                   started: float) -> None:
        """Account a committed batch and hand what it newly stored to the features' hooks.

        Re-delivered duplicates are not handed on: every feature sees each message once.
        """
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        self.stats.add(result)
        if not result.fresh:
            return
        try:
            self.on_stored(result.fresh)
        except Exception:  # a feature's hook never blocks storing and acknowledging
            self.stats.hook_errors += 1
            if self.stats.hook_errors == 1:
                log.exception("collector: a stored-batch hook failed (counted from now on)")


class Ingest(IngestCore):
    """Subscribes to every gateway and writes what arrives through one writer thread."""

    def __init__(self, store: Store, broker_url: str, *, client_id: str = "citygate-collector",
                 share_group: str | None = None,
                 username: str | None = None, password: str | None = None,
                 max_batch: int = 1000, max_wait: float = 0.05,
                 on_stored: Callable[[list[Accepted]], None] | None = None,
                 on_state: Callable[[str, str, list[str]], None] | None = None) -> None:
        self.store = store
        u = urlparse(broker_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 1883
        self.client_id = client_id
        self.share_group = share_group
        self.username, self.password = username, password
        self.max_batch, self.max_wait = max_batch, max_wait
        self.on_stored = on_stored or (lambda items: None)
        self.on_state = on_state or (lambda gateway, state, devices: None)
        self.stats = IngestStats()
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=50_000)
        self._warned: set[tuple[str, str]] = set()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None

    def start(self) -> None:
        """Connect (retrying in the background) and start the writer."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
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
        self._client = client
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer",
                                        daemon=True)
        self._writer.start()
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect and flush what was received (idempotent)."""
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
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=10)
            self._writer = None

    # --- paho thread ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("collector: broker refused connection: %s", rc)
            return
        self.stats.connected = True
        log.info("collector connected to %s:%d (session present: %s)", self.host, self.port,
                 getattr(flags, "session_present", "?"))
        client.subscribe([(t, contract.QOS) for t in contract.subscriptions(self.share_group)])
        client.publish(contract.collector_state_topic(self.client_id),
                       contract.collector_state_payload(self.client_id, "online", now_ms()),
                       qos=1, retain=True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.stats.connected:
            log.warning("collector: disconnected from broker: %s", rc)
        self.stats.connected = False

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        try:
            rec = contract.decode(msg.topic, bytes(msg.payload))
        except ContractError as exc:
            self._reject(msg.topic, exc)
            self._queue.put(_Item(msg.mid, msg.qos, None))
            return
        if isinstance(rec.message, DataEnvelope | EventsEnvelope):
            self._queue.put(_Item(msg.mid, msg.qos, Accepted(rec.gateway, rec.message, now_ms())))
            return
        try:
            self._side_message(rec.gateway, rec.message)
        except Exception:
            self.stats.store_errors += 1
            log.exception("collector: cannot store %s message of %s", rec.channel, rec.gateway)
        self._queue.put(_Item(msg.mid, msg.qos, None))

    # --- writer thread -----------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if item is None:
                    self._flush(batch)
                    return
                batch.append(item)
            self._flush(batch)

    def _flush(self, batch: list[_Item]) -> None:
        accepted = [i.accepted for i in batch if i.accepted is not None]
        while accepted:
            t0 = time.perf_counter()
            try:
                result = self.store.ingest(accepted)
            except Exception:
                # Nothing is acknowledged, so nothing is lost: retry until the database is back.
                self.stats.store_errors += 1
                if self.stats.store_errors == 1 or self.stats.store_errors % 100 == 0:
                    log.exception("collector: store failed (%d times); retrying",
                                  self.stats.store_errors)
                time.sleep(1.0)
                if self._client is None:
                    return
                continue
            self._committed(accepted, result, t0)
            break
        client = self._client
        if client is not None:
            for item in batch:
                if item.qos > 0:
                    client.ack(item.mid, item.qos)
