"""The collector's whole web app (every feature's routers) over a test store, with an admin."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from citygate.rig import free_port
from collector import auth
from collector.config import CollectorConfig
from collector.features import build_hub
from collector.hub import BrokerLink
from collector.store import Store


@dataclass
class FullHub:
    """A client on the whole app, its admin token and its OpenAPI document."""

    client: TestClient
    admin: str
    openapi: dict[str, Any]

    def headers(self) -> dict[str, str]:
        """The admin's Authorization header."""
        return {"Authorization": f"Bearer {self.admin}"}


@pytest.fixture
def full_hub(store: Store, tmp_path: Path) -> Iterator[FullHub]:
    # A broker port nobody listens on: the command channels stay disconnected (documented 503).
    hub = build_hub(store, CollectorConfig(), ingest_stats=dict,
                    broker=BrokerLink(f"mqtt://127.0.0.1:{free_port()}"),
                    admin_token_file=tmp_path / "admin-token")
    admin = auth.create_token(store.engine, "fuzz-admin", auth.Role.ADMIN)
    try:
        with TestClient(hub.app, raise_server_exceptions=False) as client:
            yield FullHub(client, admin, hub.app.openapi())
    finally:
        asyncio.run(hub.close())
