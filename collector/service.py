"""The collector process: ingest plus the web API and every feature's workers, on one store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from collector.config import CollectorConfig, CollectorConfigError
from collector.hub import BrokerLink, StateHook, StoredHook, build_hub
from collector.ingest import Ingest, pending_budget
from collector.placement import clock_policy
from collector.store import Store

log = logging.getLogger(__name__)


class IngestSource(Protocol):
    """What the service needs of an ingest source (MQTT subscription or NATS consumer)."""

    stats: Any

    def start(self) -> None:
        """Begin receiving."""

    def stop(self) -> None:
        """Stop and flush."""


MakeIngest = Callable[[Store, StoredHook, StateHook], IngestSource]


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


async def run_collector(db_url: str, broker_url: str, host: str, port: int, *,
                        client_id: str = "citygate-collector", username: str | None = None,
                        password: str | None = None, sock: socket.socket | None = None,
                        make_ingest: MakeIngest | None = None,
                        config: CollectorConfig | None = None, share_group: str | None = None,
                        config_source: str = "collector.toml") -> None:
    """Serve until the process is asked to stop (SIGINT/SIGTERM)."""
    try:
        policy = clock_policy((config or CollectorConfig()).ingest)
        max_pending = pending_budget((config or CollectorConfig()).ingest)
    except ValueError as exc:
        raise CollectorConfigError(f"{config_source}: {exc}") from None
    store = Store.open(db_url)
    store.clock_policy = policy
    sources: list[IngestSource] = []
    hub = build_hub(store, config or CollectorConfig(),
                    ingest_stats=lambda: sources[0].stats.as_dict() if sources else {},
                    config_source=config_source,
                    broker=BrokerLink(broker_url, username, password, client_id),
                    admin_token_file=_token_file(db_url))

    def mqtt_ingest(s: Store, on_stored: StoredHook, on_state: StateHook) -> IngestSource:
        return Ingest(s, broker_url, client_id=client_id, share_group=share_group,
                      username=username, password=password, on_stored=on_stored,
                      on_state=on_state, max_pending_bytes=max_pending)

    ingest = (make_ingest or mqtt_ingest)(store, hub.on_stored, hub.on_state)
    sources.append(ingest)
    server = _Server(uvicorn.Config(hub.app, host=host, port=port, log_level="warning",
                                    timeout_graceful_shutdown=2, access_log=False))
    ingest.start()
    log.info("collector: API on http://%s:%d, broker %s, database %s", host, port, broker_url,
             db_url.rsplit("@", maxsplit=1)[-1])
    try:
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(make(), name=f"feature-{i}")
                       for i, make in enumerate(hub.tasks)]
            await server.serve(sockets=[sock] if sock else None)
            for w in workers:
                w.cancel()
    finally:
        await asyncio.to_thread(ingest.stop)
        await hub.close()
        store.close()
