"""Several ingest processes on one machine: `citygate collector run --workers N`.

Python stores one envelope at a time per process, so one collector uses one core. With N
workers the `collector run` process becomes the hub: it serves the HTTP API, runs the features'
hooks and background tasks, and supervises N ingest worker processes (`collector worker`),
which only validate, store and acknowledge.

Decisions, and why:

- **Splitting the stream.** On Mosquitto each worker subscribes to the data, events, health and
  reply channels through the shared subscription `$share/<group>/citygate/v1/+/<channel>`, with
  a persistent session (clean_session = false) and a fixed client id of its own: worker 1 uses
  the collector's client id, worker k `<client id>-k`. On NATS every worker pulls from the one
  shared durable JetStream consumer (collector.ingest_nats). Gateway states stay a plain
  subscription (retained messages are not sent to shared subscriptions) and each worker's clock
  probe `citygate/v1/_collector/<its client id>/probe` too, so every worker measures its own
  broker queue (collector.placement).
- **Mosquitto 2.0.11 and a dead member** (hil_tests/test_collector_workers.py: two shared
  members, one killed with -9 holding 10 unacknowledged QoS 1 messages, then 20 more
  published): the broker does *not*
  hand the dead member's in-flight messages to the other member, and it keeps queueing the dead
  member's round-robin share (10 of the 20) in its persistent session; everything reaches it
  when a client with the same id reconnects (40 of 40 delivered, none twice). Hence a dead
  worker is restarted at once with the same client id, and the broker must not cap queues
  (`max_queued_messages 0`), or that share is dropped while the worker is down.
- **Feature hooks run in one process, on committed rows.** The broker splits a gateway's
  messages between workers, and the alarm engine, the environment rules, parking and the hub
  feeds keep state in memory: run in every worker they would open one incident per worker and
  see every stream in pieces. So each worker writes, inside its ingest transaction, what it
  stored to the ingest feed (collector.feed), and the hub process feeds those rows, in commit
  order and exactly once, to the same hooks a single collector calls. One fault is one incident;
  SSE streams and webhooks are served by the process that sees everything. The cost: the hooks'
  work is not spread over the workers.
- **Singletons.** The hub's hooks and background tasks run only while it holds the leader lock
  (collector.leader); a second `collector run` on the same database stands by and takes over
  when the leader dies. The HTTP API is served by every hub process.
- **Supervision.** A worker that exits is restarted with the same client id after a short
  backoff (doubling to 30 s while it keeps dying within a minute of its start); a worker dies
  with the hub (PR_SET_PDEATHSIG), so systemd restarting the hub restarts everything. Each
  worker reports its ingest counters once a second on its stdout; `GET /api/v1/health` lists
  every worker (pid, state, restarts, counters) under `ingest.workers`.
- **Fewer workers than last time.** A removed worker's session stays a member of the shared
  group and keeps taking its share, which nobody would read. The hub remembers the largest
  count it ran with (`ingest_pool`) and, started with fewer, runs `collector worker --drain`
  for each removed client id: store what the session holds, unsubscribe, wait until nothing
  more arrives, delete the session with a clean-session connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from collector.feed import FeedReader, FeedWriter
from collector.ingest import Entry, Ingest
from collector.memory import settle_heap
from devices import contract

log = logging.getLogger(__name__)

RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0
STABLE_AFTER_S = 60.0  # a worker up this long restarts after the shortest delay again
STOP_GRACE_S = 15.0  # a worker asked to stop flushes and acknowledges within this
DRAIN_IDLE_S = 2.0  # a retired session that sent nothing this long holds nothing more
MAX_WORKERS = 64


class WorkersError(ValueError):
    """A `--workers` setting that cannot be used; the message says why and what to do."""


def check_workers(count: int, db_url: str) -> None:
    """Refuse a worker count the database cannot take."""
    if not 1 <= count <= MAX_WORKERS:
        raise WorkersError(f"--workers {count}: give 1 to {MAX_WORKERS}")
    if count > 1 and not db_url.startswith("postgresql"):
        raise WorkersError(
            f"--workers {count} needs PostgreSQL: SQLite has one writer, so one ingest process "
            "is all it can take; use --db postgresql://... or --workers 1")


def worker_client_id(base: str, index: int) -> str:
    """The fixed MQTT client id of worker `index` (1-based): the first keeps the collector's."""
    return base if index == 1 else f"{base}-{index}"


def restart_delay(previous: float, uptime: float) -> float:
    """Backoff before restarting a worker that ran `uptime` seconds."""
    if uptime >= STABLE_AFTER_S or previous <= 0:
        return RESTART_MIN_S
    return min(RESTART_MAX_S, previous * 2)


# --- the worker process --------------------------------------------------------------------------

class FeedingIngest(Ingest):
    """MQTT ingest that tells the feed writer what each store call holds."""

    feed: FeedWriter

    def store_entries(self, entries: Sequence[Entry], wait: Callable[[float], bool]) -> bool:
        """Store as Ingest does, with the feed row in the same transaction."""
        self.feed.expect(entries)
        return super().store_entries(entries, wait)


class DrainingIngest(FeedingIngest):
    """The session of a retired worker (`<client id>-k`, k > N): store what the broker kept
    for it, leave the shared group, then delete the session (`run_drain`)."""

    def start(self) -> None:
        """Connect to the retired session, without subscribing anything new."""
        self.last_message = time.monotonic()
        self.left = threading.Event()
        super().start()
        assert self._client is not None
        self._client.on_unsubscribe = lambda *_: self.left.set()

    def _on_connect(self, client: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self.stats.connected = True
            self.last_message = time.monotonic()

    def _on_publish(self, topic_name: str, payload: bytes, qos: int, mid: int) -> None:
        if topic_name != self.probe_topic:  # its own probes are no sign of a queue left
            self.last_message = time.monotonic()
        super()._on_publish(topic_name, payload, qos, mid)

    def idle(self) -> bool:
        """Connected, everything received stored and acknowledged, nothing new for a while."""
        return (self.stats.connected and self.stats.pending == 0
                and time.monotonic() - self.last_message > DRAIN_IDLE_S)

    def leave(self) -> None:
        """Unsubscribe every filter a collector session may hold."""
        assert self._client is not None
        self._client.unsubscribe(sorted({*contract.subscriptions(self.share_group),
                                         *contract.subscriptions(), self.probe_topic}))


def run_drain(source: DrainingIngest, forget: Callable[[], None],
              timeout: float = 600.0) -> int:
    """Drain a retired session, leave the group, delete the session; 0 when all went well."""
    def until(ready: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    source.start()
    try:
        if not until(source.idle):
            return 1
        source.leave()
        if not source.left.wait(10):
            return 1
        source.last_message = time.monotonic()  # what was queued before the UNSUBACK
        if not until(source.idle):
            return 1
    finally:
        source.stop()
    forget()
    return 0


def forget_session(host: str, port: int, client_id: str, username: str | None,
                   password: str | None) -> None:
    """Delete a drained session and its retained collector state (a clean-session connect)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=True, protocol=mqtt.MQTTv311)
    if username:
        client.username_pw_set(username, password)
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        client.publish(contract.collector_state_topic(client_id), b"", qos=1,
                       retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def nats_source(feed: FeedWriter, store: Any, servers: str, **kw: Any) -> Any:
    """NATS ingest from the shared durable consumer, feeding as FeedingIngest does."""
    from collector.ingest_nats import NatsIngest

    class FeedingNatsIngest(NatsIngest):
        def store_entries(self, entries: Sequence[Entry],
                          wait: Callable[[float], bool]) -> bool:
            feed.expect(entries)
            return super().store_entries(entries, wait)

    return FeedingNatsIngest(store, servers, **kw)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the hub that started it dies (even by -9)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_worker(make_source: Callable[[FeedWriter], Any], report_every: float = 1.0) -> int:
    """Run one ingest worker until SIGTERM/SIGINT, its counters on stdout once a second."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    source = make_source(FeedWriter(f"pid-{os.getpid()}"))
    settle_heap()
    source.start()
    parent = os.getppid()
    try:
        while not stop.wait(report_every):
            if os.getppid() != parent:  # the hub is gone (no prctl): stop
                break
            try:
                sys.stdout.write(orjson.dumps(source.stats.as_dict()).decode() + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):
                break
    finally:
        source.stop()
    return 0


# --- the hub side --------------------------------------------------------------------------------

@dataclass
class WorkerState:
    """What the hub knows of one worker."""

    index: int
    client_id: str
    pid: int | None = None
    state: str = "starting"  # starting | running | restarting | stopped
    restarts: int = 0
    last_exit: str = ""
    started: float = 0.0
    ingest: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as served by the health endpoint."""
        return {"index": self.index, "client_id": self.client_id, "pid": self.pid,
                "state": self.state, "restarts": self.restarts, "last_exit": self.last_exit,
                "ingest": self.ingest}


def exit_reason(returncode: int) -> str:
    """'exited with 1' or 'killed by SIGKILL'."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


class WorkerPool:
    """Starts N ingest workers, restarts each that dies with its client id, gathers counters."""

    def __init__(self, count: int, argv: Callable[[int, str], list[str]], base_client_id: str,
                 env: dict[str, str] | None = None, retired: Sequence[str] = (),
                 on_drained: Callable[[], None] | None = None) -> None:
        self.argv = argv
        self.env = env
        self.retired = list(retired)
        self.on_drained = on_drained or (lambda: None)
        self.workers = [WorkerState(i, worker_client_id(base_client_id, i))
                        for i in range(1, count + 1)]
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._drains: list[asyncio.subprocess.Process] = []
        self._stopping = False

    async def run(self) -> None:
        """Supervise every worker until cancelled, then stop them all."""
        try:
            async with asyncio.TaskGroup() as tg:
                for w in self.workers:
                    tg.create_task(self._supervise(w), name=f"worker-{w.index}")
                if self.retired:
                    tg.create_task(self._drain_retired(), name="retired-sessions")
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Ask every worker to flush and stop; kill those that do not within the grace time."""
        self._stopping = True
        procs = [p for p in [*self._procs.values(), *self._drains] if p.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        for w in self.workers:
            w.state = "stopped"

    async def _supervise(self, w: WorkerState) -> None:
        delay = 0.0
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(w.index, w.client_id), stdout=asyncio.subprocess.PIPE,
                env=self.env, preexec_fn=_die_with_parent)
            self._procs[w.index] = proc
            w.pid, w.state, w.started = proc.pid, "running", time.monotonic()
            log.info("collector: ingest worker %d started (pid %d, client id %s)", w.index,
                     proc.pid, w.client_id)
            await self._read_counters(w, proc)
            code = await proc.wait()
            if self._stopping:
                return
            w.restarts += 1
            w.last_exit = exit_reason(code)
            w.state = "restarting"
            delay = restart_delay(delay, time.monotonic() - w.started)
            log.warning("collector: ingest worker %d (pid %d) %s; restarting it in %.1f s with "
                        "the same client id %s, so the broker delivers it the messages it "
                        "holds for it", w.index, proc.pid, w.last_exit, delay, w.client_id)
            await asyncio.sleep(delay)

    async def _drain_retired(self) -> None:
        """Store what the sessions of removed workers hold, then remove those sessions."""
        for client_id in self.retired:
            delay = 0.0
            while True:
                log.info("collector: draining the session of removed worker %s", client_id)
                proc = await asyncio.create_subprocess_exec(
                    *self.argv(0, client_id), "--drain", stdout=asyncio.subprocess.DEVNULL,
                    env=self.env, preexec_fn=_die_with_parent)
                self._drains.append(proc)
                code = await proc.wait()
                if code == 0:
                    log.info("collector: session of removed worker %s drained and deleted",
                             client_id)
                    break
                delay = restart_delay(delay, 0.0)
                log.warning("collector: draining %s %s; again in %.1f s", client_id,
                            exit_reason(code), delay)
                await asyncio.sleep(delay)
        self.on_drained()

    async def _read_counters(self, w: WorkerState, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            with contextlib.suppress(orjson.JSONDecodeError):
                counters = orjson.loads(line)
                if isinstance(counters, dict):
                    w.ingest = counters

    def stats(self) -> dict[str, Any]:
        """The workers' counters added up, plus each worker, for the health endpoint."""
        return merged_stats([w.as_dict() for w in self.workers])


def recorded_workers(engine: sa.Engine) -> int:
    """How many worker sessions the broker may still hold (the largest count not drained)."""
    with engine.connect() as conn:
        found = conn.scalar(sa.text("SELECT workers FROM ingest_pool WHERE name = 'mqtt'"))
    return int(found or 1)


def record_workers(engine: sa.Engine, count: int) -> None:
    """Remember how many worker sessions exist at the broker."""
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO ingest_pool (name, workers) VALUES ('mqtt', :n) "
                             "ON CONFLICT (name) DO UPDATE SET workers = excluded.workers"),
                     {"n": count})


_SUMMED = ("received", "stored_messages", "duplicates", "readings", "events", "store_errors",
           "store_retries_now", "quarantined", "hook_errors", "pending")
_COUNTED = ("rejected", "refused", "dropped_values", "time_corrected", "flagged")


def merged_stats(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """One health view of N workers: counters summed, connected only if all are, stuck if any
    worker is stuck or not running."""
    out: dict[str, Any] = dict.fromkeys(_SUMMED, 0)
    counted: dict[str, Counter[str]] = {k: Counter() for k in _COUNTED}
    stuck: list[str] = []
    connected = bool(workers)
    for w in workers:
        ing = w.get("ingest") or {}
        for k in _SUMMED:
            out[k] += int(ing.get(k) or 0)
        for k in _COUNTED:
            counted[k].update(ing.get(k) or {})
        if w["state"] != "running":
            stuck.append(f"worker {w['index']} {w['state']}"
                         + (f" ({w['last_exit']})" if w["last_exit"] else ""))
        elif ing.get("stuck"):
            stuck.append(f"worker {w['index']}: {ing['stuck']}")
        connected = connected and bool(ing.get("broker_connected"))
    out.update({k: dict(v) for k, v in counted.items()})
    out.update(broker_connected=connected, stuck="; ".join(stuck),
               source=next((w["ingest"].get("source") for w in workers if w.get("ingest")),
                           "mqtt"),
               workers=workers)
    return out


async def feed_loop(reader: FeedReader, idle_s: float = 0.05) -> None:
    """Feed the hooks from the ingest feed until cancelled (the leader's first duty)."""
    failing = False
    while True:
        try:
            fed = await asyncio.to_thread(reader.poll)
            if failing:
                log.info("collector: reading the ingest feed works again")
                failing = False
        except Exception as exc:  # the database is down: the rows wait for it
            if not failing:
                log.error("collector: cannot read the ingest feed: %s; retrying", exc)
                failing = True
            fed = 0
            await asyncio.sleep(1.0)
        if not fed:
            await asyncio.sleep(idle_s)
