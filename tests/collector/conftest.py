"""Store fixtures: every store test runs on SQLite and on a fresh PostgreSQL database; a private
broker for ingest tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate.rig import Broker, pg_database, pg_problem
from collector.features import open_store
from collector.store import Store


@pytest.fixture(scope="session")
def pg_server() -> None:
    """Skip when no PostgreSQL server is reachable."""
    problem = pg_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture
def pg_url(pg_server: None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped after the test."""
    with pg_database("citygate_test") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty, migrated store on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto on a free port, stopped after the test."""
    b = Broker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()
