"""The collector process: MQTT ingest plus the web API, sharing one store."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from collector.api import create_app
from collector.ingest import Ingest
from collector.store import Store

log = logging.getLogger(__name__)


async def run_collector(db_url: str, broker_url: str, host: str, port: int, *,
                        client_id: str = "citygate-collector", username: str | None = None,
                        password: str | None = None, sock: socket.socket | None = None) -> None:
    """Serve until the process is asked to stop (SIGINT/SIGTERM)."""
    store = Store.open(db_url)
    ingest = Ingest(store, broker_url, client_id=client_id, username=username,
                    password=password)
    app = create_app(store, ingest_stats=ingest.stats.as_dict)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=2, access_log=False)
    server = uvicorn.Server(config)
    ingest.start()
    log.info("collector: API on http://%s:%d, broker %s, database %s", host, port, broker_url,
             db_url.rsplit("@", maxsplit=1)[-1])
    try:
        await server.serve(sockets=[sock] if sock else None)
    finally:
        await asyncio.to_thread(ingest.stop)
        store.close()
