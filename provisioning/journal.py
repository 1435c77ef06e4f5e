"""The technician's install log (TinyDB, human-readable JSON) and its upload queue.

Every commissioning run is written here first; runs not yet uploaded are sent by `sync`, so
work done without a network link reaches the collector when the link returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB

from provisioning.errors import ProvisionError
from provisioning.session import Collector


class Journal:
    """Runs of `commission`, each with an `uploaded` flag."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _db(self) -> TinyDB:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return TinyDB(self.path, indent=2, ensure_ascii=False)

    def add(self, run: dict[str, Any]) -> None:
        """Record a run, not yet uploaded."""
        with self._db() as db:
            db.table("runs").insert({**run, "uploaded": False})

    def runs(self, gateway_id: str | None = None) -> list[dict[str, Any]]:
        """Every recorded run (of one gateway), oldest first."""
        with self._db() as db:
            rows = db.table("runs").all()
        return [dict(r) for r in rows if gateway_id is None or r["gateway_id"] == gateway_id]

    def pending(self) -> list[dict[str, Any]]:
        """Runs waiting for upload."""
        return [r for r in self.runs() if not r["uploaded"]]

    def mark_uploaded(self, run_id: str) -> None:
        """Remember that the collector has a run."""
        with self._db() as db:
            db.table("runs").update({"uploaded": True}, Query().run_id == run_id)

    def sync(self, collector: Collector) -> tuple[int, int]:
        """Upload pending runs; return (uploaded, still pending). Stops at the first failure."""
        done = 0
        waiting = self.pending()
        for run in waiting:
            body = {k: run[k] for k in ("run_id", "ts", "technician", "results", "config_toml")}
            try:
                collector.call("POST", f"/api/v1/gateways/{run['gateway_id']}/commissioning",
                               body)
            except ProvisionError:
                break
            self.mark_uploaded(run["run_id"])
            done += 1
        return done, len(waiting) - done
