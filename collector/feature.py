"""The contract between the collector's core and its features.

The core (store, ingest, web app, `collector.hub.Hub`) knows features only through `Feature`;
it imports none of them. Which features a collector runs is decided in one place,
collector/features.py (the composition). A feature's life, in the order the hub drives it:

1. `migrations`: the `MigrationSet`s of its tables. The runner (collector.migrations) applies
   the core's and every feature's before any feature is mounted.
2. `mount(core)`: build the feature's objects on the migrated store and add its routers, pages
   and `app.state` entries to `core.app`. Features are mounted in the composition's order, so
   a feature may use what an earlier one built (the environment raises its alarms through the
   alarm engine). A failure here is a configuration error and stops the start.
3. `on_stored(items)`: called after each committed ingest batch with the fresh envelopes (never
   a re-delivered one). It runs on the ingest thread: hand slow work to a task or queue.
4. `on_state(gateway, state, devices)`: a gateway's retained state changed (online/offline).
5. `tasks()`: coroutine functions the service runs for the life of the process.
6. `close()`: stop workers and release connections; idempotent.

The hub isolates every call of 3-5: an exception is logged (the first of a run of failures,
with its traceback), counted per feature and hook, and never keeps the next feature from being
called; a background task that fails is restarted after a backoff. The counts are shown by
GET /api/v1/health under `features`.

Adapters stay thin: `BaseFeature` gives the no-op defaults, so an adapter writes only the
hooks it has.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fastapi import FastAPI

from collector.config import CollectorConfig
from collector.migrations import MigrationSet
from collector.store import Accepted, Store

Task = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class BrokerLink:
    """How the collector itself reaches the broker (commands, updates, MQTT push)."""

    url: str
    username: str | None = None
    password: str | None = None
    client_id: str = "citygate-collector"


@dataclass(frozen=True, slots=True)
class Core:
    """What the core offers a feature when it is mounted."""

    store: Store
    config: CollectorConfig
    app: FastAPI
    config_source: str
    broker: BrokerLink
    admin_token_file: Path
    readers: Sequence[Any]  # router dependencies: a token of a reading role


@runtime_checkable
class Feature(Protocol):
    """A part of the collector with its own tables, routes, hooks and workers."""

    @property
    def name(self) -> str:
        """Short stable name: logs, the health report's failure counters."""

    @property
    def migrations(self) -> Sequence[MigrationSet]:
        """The migration sets of the feature's tables (applied before any mount)."""

    def mount(self, core: Core) -> None:
        """Build on the migrated store; add routers, pages and app state to `core.app`."""

    def on_stored(self, items: list[Accepted]) -> None:
        """React to a committed batch of fresh envelopes (on the ingest thread)."""

    def on_state(self, gateway: str, state: str, devices: list[str]) -> None:
        """React to a gateway's state change (online/offline) and its devices."""

    def tasks(self) -> Sequence[Task]:
        """Background workers to run for the life of the process."""

    async def close(self) -> None:
        """Stop workers, release connections (idempotent)."""


class BaseFeature:
    """No-op defaults of every `Feature` hook, so that an adapter writes only its own."""

    name = "feature"
    migrations: Sequence[MigrationSet] = ()

    def mount(self, core: Core) -> None:
        """Nothing to build."""

    def on_stored(self, items: list[Accepted]) -> None:
        """Not interested in stored batches."""

    def on_state(self, gateway: str, state: str, devices: list[str]) -> None:
        """Not interested in gateway states."""

    def tasks(self) -> Sequence[Task]:
        """No background workers."""
        return ()

    async def close(self) -> None:
        """Nothing to stop."""
