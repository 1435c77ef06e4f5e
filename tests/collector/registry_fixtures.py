"""A collector app with the registry mounted, over a real SQLite store, and a token per role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from collector import auth
from collector.api import create_app
from collector.features import open_store as open_hub_store
from collector.registry import install
from collector.registry.mqtt_auth import BrokerFiles, hash_password
from collector.registry.service import Registry, RegistrySettings
from collector.store import Store

ROLES = ("admin", "technician", "crew", "reader", "broker")
COLLECTOR_PASSWORD = "collector-secret"


@dataclass
class Hub:
    """The app under test, its registry and a token per role."""

    client: TestClient
    registry: Registry
    tokens: dict[str, str]

    def as_(self, role: str) -> dict[str, str]:
        """Authorization header of a role's token."""
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def open_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store with every table of the collector, the registry's included."""
    return open_hub_store(f"sqlite:///{path}")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    store = open_store(tmp_path / "hub.sqlite", monkeypatch)
    files = BrokerFiles(tmp_path / "broker" / "passwd", tmp_path / "broker" / "acl",
                        collector_password_hash=hash_password(COLLECTOR_PASSWORD))
    settings = RegistrySettings(broker_urls=["mqtts://127.0.0.1:8883"], ca_pem="CA-PEM",
                                broker_files=files,
                                collector_password_hash=files.collector_password_hash)
    registry = Registry(store.engine, settings)
    app = create_app(store)
    install(app, registry)
    tokens = {r: auth.create_token(store.engine, f"t-{r}", auth.Role(r)) for r in ROLES}
    with TestClient(app) as client:
        yield Hub(client, registry, tokens)
    store.close()
