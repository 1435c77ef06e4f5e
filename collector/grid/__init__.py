"""Grid governance: outlines of districts, areas and grids, routing by place, rosters,
reported events and the assessment of departments.

Wiring (collector.hub): `install(app, alarm_engine)` after the alarm engine is built.
"""

from __future__ import annotations

from fastapi import FastAPI

from collector.alarms.engine import AlarmEngine
from collector.grid.service import GridService


def install(app: FastAPI, engine: AlarmEngine) -> GridService:
    """Attach the grid service to the app and to the alarm engine; add its routes."""
    from collector.grid.api import router
    from collector.grid.roster import Roster
    from collector.grid.roster_api import router as roster_router

    grid = GridService(app.state.store.engine, engine).open()
    app.state.grid = grid
    app.state.roster = Roster(app.state.store.engine, engine).open()
    app.include_router(router)
    app.include_router(roster_router)
    return grid


__all__ = ["GridService", "install"]
