"""Grid governance: outlines of districts, areas and grids, routing by place, rosters,
reported events and the assessment of departments.

Wiring (collector.hub): `install(app, alarm_engine)` after the alarm engine is built.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from collector.alarms.engine import AlarmEngine
from collector.grid.service import GridService
from collector.grid.tables import MIGRATIONS


def install(app: FastAPI, engine: AlarmEngine, section: dict[str, Any] | None = None,
            source: str = "collector.toml") -> GridService:
    """Attach the grid service to the app and to the alarm engine; add its routes."""
    from collector.grid import assessment_api, intake_api
    from collector.grid.api import router
    from collector.grid.config import load_grid_settings
    from collector.grid.intake import Intake
    from collector.grid.roster import Roster
    from collector.grid.roster_api import router as roster_router

    settings = load_grid_settings(section or {}, source)
    db = app.state.store.engine
    grid = GridService(db, engine).open()
    app.state.grid = grid
    app.state.grid_settings = settings
    app.state.roster = Roster(db, engine).open()
    app.state.intake = Intake(db, grid, engine, settings)
    for r in (router, roster_router, intake_api.router, intake_api.pages,
              assessment_api.router, assessment_api.pages):
        app.include_router(r)
    return grid


async def keep_fresh(app: FastAPI, interval_s: float = 30.0) -> None:
    """Re-read outlines and API units every `interval_s`, so that collectors sharing a database
    follow each other's changes (run in the hub's TaskGroup until cancelled)."""
    import asyncio
    import logging

    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(app.state.grid.reload)
            await asyncio.to_thread(app.state.roster.refresh)
        except Exception:
            logging.getLogger(__name__).exception("grid: cannot re-read outlines and units")


__all__ = ["MIGRATIONS", "GridService", "install", "keep_fresh"]
