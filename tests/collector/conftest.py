"""Store fixtures: every store test runs on SQLite and on a fresh PostgreSQL database (the
private broker of ingest tests is the repository's conftest.py `broker`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate.rig import pg_database, pg_problem
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
