"""The collector's core loop over its features: mount them, fan hooks out, run their tasks.

The hub knows features only through `collector.feature.Feature`; which features exist is
decided by the composition (collector/features.py). Every hook call is isolated: a feature
that raises is logged and counted (`FeatureFailures`, shown by GET /api/v1/health) and the
others are still called; a background task that fails is restarted after a backoff.
`service.run_collector` runs the result.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from collector.api import READ_ROLES, create_app
from collector.auth import bootstrap_admin, require
from collector.config import CollectorConfig, CollectorConfigError
from collector.feature import BrokerLink, Core, Feature, Task
from collector.migrations import MigrationSet, migrate
from collector.store import Accepted, Store

log = logging.getLogger(__name__)

StoredHook = Callable[[list[Accepted]], None]
StateHook = Callable[[str, str, list[str]], None]

TASK_BACKOFF_S = (1.0, 60.0)  # first and longest pause before a failed task is restarted

__all__ = ["BrokerLink", "FeatureFailures", "Hub", "StateHook", "StoredHook", "assemble"]


@dataclass
class _HookRecord:
    failures: int = 0
    failing: bool = False  # the last call failed
    last_error: str = ""


class FeatureFailures:
    """Failures of feature hooks and tasks, per feature and hook (thread-safe).

    The first failure of a run is logged with its traceback; the rest of the run is counted,
    and the recovery is logged once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], _HookRecord] = {}

    def failed(self, feature: str, hook: str, exc: BaseException) -> None:
        """Count a failure of `feature`'s `hook`."""
        with self._lock:
            rec = self._records.setdefault((feature, hook), _HookRecord())
            rec.failures += 1
            first, rec.failing = not rec.failing, True
            rec.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if first:
            log.error("collector: feature %s, hook %s failed; the other features go on",
                      feature, hook, exc_info=exc)

    def succeeded(self, feature: str, hook: str) -> None:
        """Note a call that succeeded (ends a run of failures)."""
        rec = self._records.get((feature, hook))
        if rec is not None and rec.failing:
            with self._lock:
                rec.failing = False
            log.info("collector: feature %s, hook %s works again after %d failures",
                     feature, hook, rec.failures)

    def as_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{feature: {hook: {failures, failing, last_error}}} for the health report."""
        with self._lock:
            out: dict[str, dict[str, dict[str, Any]]] = {}
            for (feature, hook), rec in sorted(self._records.items()):
                out.setdefault(feature, {})[hook] = {
                    "failures": rec.failures, "failing": rec.failing,
                    "last_error": rec.last_error}
            return out


@dataclass
class Hub:
    """Everything a collector process runs: the store, the web app and the mounted features."""

    store: Store
    config: CollectorConfig
    app: FastAPI
    features: list[Feature] = field(default_factory=list)
    failures: FeatureFailures = field(default_factory=FeatureFailures)

    def on_stored(self, items: list[Accepted]) -> None:
        """Fan a committed batch out to every feature, each call isolated."""
        for f in self.features:
            self._call(f, "on_stored", f.on_stored, items)

    def on_state(self, gateway: str, state: str, devices: list[str]) -> None:
        """Fan a gateway state change out to every feature, each call isolated."""
        for f in self.features:
            self._call(f, "on_state", f.on_state, gateway, state, devices)

    def _call(self, f: Feature, hook: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.failures.failed(f.name, hook, exc)
        else:
            self.failures.succeeded(f.name, hook)

    @property
    def tasks(self) -> list[Task]:
        """Every feature's background task, each restarted after a backoff when it fails."""
        return [self._supervised(f.name, i, task) for f in self.features
                for i, task in enumerate(f.tasks())]

    def _supervised(self, feature: str, index: int, task: Task) -> Task:
        async def run() -> None:
            pause = TASK_BACKOFF_S[0]
            while True:
                try:
                    await task()
                    return
                except Exception as exc:
                    self.failures.failed(feature, f"task-{index}", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, TASK_BACKOFF_S[1])
        run.__name__ = f"{feature}-task-{index}"
        return run

    async def close(self) -> None:
        """Close every feature, last mounted first (idempotent)."""
        features, self.features = self.features, []
        for f in reversed(features):
            try:
                await f.close()
            except Exception as exc:
                self.failures.failed(f.name, "close", exc)


def assemble(store: Store, config: CollectorConfig, features: Sequence[Feature], *,
             core_schema: Sequence[MigrationSet], ingest_stats: Callable[[], dict[str, Any]],
             config_source: str, broker: BrokerLink, admin_token_file: Path) -> Hub:
    """Migrate the core's and the features' tables, build the app, mount every feature."""
    migrate(store.engine, [*core_schema, *(m for f in features for m in f.migrations)])
    app = create_app(store, ingest_stats=ingest_stats)
    app.state.pages = _pages_config(config, config_source)
    hub = Hub(store, config, app)
    app.state.feature_failures = hub.failures.as_dict
    core = Core(store, config, app, config_source, broker, admin_token_file,
                readers=[_reader_dependency()])
    for f in features:  # a feature that cannot mount is a configuration error: start fails
        f.mount(core)
        hub.features.append(f)
    bootstrap_admin(store.engine, admin_token_file)
    return hub


def _pages_config(config: CollectorConfig, source: str) -> Any:
    from pydantic import ValidationError

    from collector.pages import PagesConfig

    try:
        return PagesConfig.model_validate(config.pages)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise CollectorConfigError(f"{source}: [pages] {key}: {first['msg']}") from None


def _reader_dependency() -> Any:
    from fastapi import Depends

    return Depends(require(*READ_ROLES))
