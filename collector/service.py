"""The collector process: ingest plus the web API and every feature's workers, on one store.

Ingest runs in this process, or in N worker processes this one supervises (collector.workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from collector.config import CollectorConfig, CollectorConfigError
from collector.features import build_hub, open_store
from collector.feed import FeedReader, ensure_feed
from collector.hub import BrokerLink, Hub, StateHook, StoredHook
from collector.ingest import Ingest, IngestSettings
from collector.leader import LeaderLock, dsn_of, lead
from collector.memory import settle_heap
from collector.store import Store
from collector.workers import (
    WorkerPool,
    check_workers,
    feed_loop,
    record_workers,
    recorded_workers,
    worker_client_id,
)

log = logging.getLogger(__name__)


class IngestSource(Protocol):
    """What the service needs of an ingest source (MQTT subscription or NATS consumer)."""

    stats: Any

    def start(self) -> None:
        """Begin receiving."""

    def stop(self) -> None:
        """Stop and flush."""


# (store, stored hook, state hook, [ingest] writers) -> the ingest source
MakeIngest = Callable[[Store, StoredHook, StateHook, int], IngestSource]


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising SIGTERM/SIGINT after serving: the collector's own shutdown
    (ingest flush, feature workers, store) must run before the process exits."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Stop serving on SIGINT/SIGTERM, then restore the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach only the main thread
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _token_file(db_url: str) -> Path:
    """Where a first-start admin token is written: beside an SQLite file, else in the
    collector user's config directory (never the working directory)."""
    if db_url.startswith("sqlite:///"):
        return Path(db_url.removeprefix("sqlite:///")).resolve().parent / "admin-token"
    return Path.home() / ".config" / "citygate" / "collector-admin-token"


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """Ingest in `count` worker processes; `argv(index, client_id)` starts one."""

    count: int
    argv: Callable[[int, str], list[str]]
    sessions: bool = True  # one persistent MQTT session per worker (not with NATS)


async def run_collector(db_url: str, broker_url: str, host: str, port: int, *,
                        client_id: str = "citygate-collector", username: str | None = None,
                        password: str | None = None, sock: socket.socket | None = None,
                        make_ingest: MakeIngest | None = None,
                        config: CollectorConfig | None = None, share_group: str | None = None,
                        config_source: str = "collector.toml",
                        workers: WorkerPlan | None = None, source: str = "mqtt") -> None:
    """Serve until the process is asked to stop (SIGINT/SIGTERM).

    With a worker plan of more than one worker, ingest runs in worker processes and this
    process feeds the features from what they stored (collector.workers).
    """
    try:
        settings = IngestSettings.from_section((config or CollectorConfig()).ingest)
        writers = settings.writers_for(db_url, source)
    except ValueError as exc:
        raise CollectorConfigError(f"{config_source}: {exc}") from None
    if workers is not None and workers.count > 1:
        check_workers(workers.count, db_url)
    store = open_store(db_url)
    settings.apply(store)
    stats: list[Callable[[], dict[str, Any]]] = []
    hub = build_hub(store, config or CollectorConfig(),
                    ingest_stats=lambda: stats[0]() if stats else {},
                    config_source=config_source,
                    broker=BrokerLink(broker_url, username, password, client_id),
                    admin_token_file=_token_file(db_url))
    server = _Server(uvicorn.Config(hub.app, host=host, port=port, log_level="warning",
                                    timeout_graceful_shutdown=2, access_log=False))
    log.info("collector: API on http://%s:%d, broker %s, database %s", host, port, broker_url,
             db_url.rsplit("@", maxsplit=1)[-1])
    previous = 1
    if store.is_pg:
        ensure_feed(store.engine)
        previous = recorded_workers(store.engine)
    settle_heap()
    try:
        # Sessions of removed workers still hold messages: drained by a pool, even of one.
        if workers is not None and (workers.count > 1
                                    or (workers.sessions and previous > workers.count)):
            await _run_pooled(hub, server, sock, workers, client_id, stats, previous)
        else:
            def mqtt_ingest(s: Store, on_stored: StoredHook, on_state: StateHook,
                            writers: int) -> IngestSource:
                return Ingest(s, broker_url, client_id=client_id, share_group=share_group,
                              username=username, password=password, on_stored=on_stored,
                              on_state=on_state, writers=writers,
                              max_pending_bytes=settings.max_pending)

            ingest = (make_ingest or mqtt_ingest)(store, hub.on_stored, hub.on_state, writers)
            stats.append(ingest.stats.as_dict)
            await _run_single(hub, server, sock, ingest)
    finally:
        await hub.close()
        store.close()


async def _run_single(hub: Hub, server: _Server, sock: socket.socket | None,
                      ingest: IngestSource) -> None:
    """One process: ingest, hooks, background tasks and the API."""
    ingest.start()
    try:
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(make(), name=f"feature-{i}")
                       for i, make in enumerate(hub.tasks)]
            await server.serve(sockets=[sock] if sock else None)
            for w in workers:
                w.cancel()
    finally:
        await asyncio.to_thread(ingest.stop)


async def _run_pooled(hub: Hub, server: _Server, sock: socket.socket | None, plan: WorkerPlan,
                      client_id: str, stats: list[Callable[[], dict[str, Any]]],
                      previous: int) -> None:
    """The hub of N ingest workers: the API here; hooks and tasks while this process leads."""
    engine = hub.store.engine
    retired = [worker_client_id(client_id, k) for k in range(plan.count + 1, previous + 1)]
    if plan.sessions:
        record_workers(engine, max(previous, plan.count))
    pool = WorkerPool(plan.count, plan.argv, client_id, retired=retired if plan.sessions else (),
                      on_drained=lambda: record_workers(engine, plan.count))
    reader = FeedReader(hub.store, hub.on_stored, hub.on_state)
    leading = asyncio.Event()

    async def duties() -> None:
        leading.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(feed_loop(reader), name="ingest-feed")
                for i, make in enumerate(hub.tasks):
                    tg.create_task(make(), name=f"feature-{i}")
        finally:
            leading.clear()

    stats.append(lambda: {**pool.stats(), "feed": reader.stats.as_dict(),
                          "leader": leading.is_set()})
    async with asyncio.TaskGroup() as tg:
        background = [tg.create_task(pool.run(), name="ingest-workers"),
                      tg.create_task(lead(LeaderLock(dsn_of(hub.store.engine)), duties),
                                     name="leader")]
        await server.serve(sockets=[sock] if sock else None)
        for task in background:
            task.cancel()
