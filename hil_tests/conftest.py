"""Fixtures for hardware-in-the-loop tests: private brokers, real processes, serial lines."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate import rig
from citygate.rig import (
    Broker,
    Proc,
    citygate,
    collector_health,
    free_port,
    toml_document,
    wait_for,
)
from hil_tests.secure_rig import SecureBroker

# Collectors started by these tests register this admin token, and rig.http_json sends it.
TEST_TOKEN = "cg_hil-" + os.urandom(16).hex()
rig.DEFAULT_TOKEN = TEST_TOKEN


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (skips when no server answers)."""
    problem = rig.pg_problem()
    if problem:
        pytest.skip(problem)
    with rig.pg_database("citygate_hil") as url:
        yield url


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    """A private broker with TLS, per-gateway credentials and ACLs (hil_tests/secure_rig.py)."""
    b = SecureBroker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Procs:
    """Processes started by a test, stopped at its end (with their logs on failure)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.all: list[Proc] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """Start `citygate <args>` with output in <tmp>/logs/<name>.log."""
        env = {"CITYGATE_ADMIN_TOKEN": TEST_TOKEN, **(env or {})}
        proc = Proc(name, citygate(*args), self.root / "logs" / f"{name}.log", env=env).start()
        self.all.append(proc)
        return proc

    def collector(self, broker: Broker, db: str | None = None, name: str = "collector",
                  *extra: str, config: dict[str, Any] | None = None) -> tuple[Proc, str]:
        """Start a collector and wait until its API answers; return it and its base URL.

        `config` becomes its collector.toml (sections: notify, alarms, sites, parking, ...).
        """
        port = free_port()
        db = db or f"sqlite:///{self.root / 'hub.sqlite'}"
        if config is not None:
            path = self.root / f"{name}.toml"
            path.write_text(toml_document(config))
            extra = (*extra, "--config", str(path))
        proc = self.start(name, "collector", "run", "--db", db, "--broker", broker.url,
                          "--http", f"127.0.0.1:{port}", *extra)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: collector_health(base) or not proc.alive, 30, "the collector API")
        assert proc.alive, proc.tail()
        return proc, base

    def refused_config(self, broker: Broker, name: str, toml: str) -> str:
        """Start a collector on SQLite with collector.toml `toml`, which it must refuse: wait for
        it to exit; the tail of its log."""
        path = self.root / f"{name}.toml"
        path.write_text(toml)
        proc = self.start(name, "collector", "run", "--db",
                          f"sqlite:///{self.root / f'{name}.sqlite'}", "--broker", broker.url,
                          "--http", "127.0.0.1:0", "--config", str(path))
        wait_for(lambda: not proc.alive, 30, "the collector to refuse its config")
        return proc.tail()

    def stop_all(self) -> None:
        """Stop every process, newest first."""
        for p in reversed(self.all):
            p.stop()

    def logs(self) -> str:
        """Tails of every process log."""
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.all)


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    """Start processes; they are stopped after the test and their logs printed if it failed."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(p.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test item, so fixtures can see failures."""
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep
