"""Alarms and incidents: dedup, thresholds, grouping, silences, routing, escalation, crew pages.

Wiring (see each name's docstring):
    cfg = load_alarms_config(collector_config.alarms)
    engine = AlarmEngine(store, cfg, notify_queue.enqueue, public_url=collector_config.public_url)
    engine.load()
    Ingest(..., on_stored=engine.on_stored)       # and on_gateway_state for state messages
    app.state.alarms = IncidentDesk(engine)
    app.include_router(router); app.include_router(pages)
    task_group.create_task(run_escalations(engine), name="alarm-escalations")
"""

from collector.alarms.api import hash_token, pages, router
from collector.alarms.config import AlarmsConfig, AlarmsConfigError, load_alarms_config
from collector.alarms.desk import IncidentDesk, IncidentNotFound
from collector.alarms.engine import AlarmEngine, Notify, run_escalations
from collector.alarms.lifecycle import IllegalTransition, State
from collector.alarms.tables import MIGRATIONS

__all__ = [
    "MIGRATIONS",
    "AlarmEngine",
    "AlarmsConfig",
    "AlarmsConfigError",
    "IllegalTransition",
    "IncidentDesk",
    "IncidentNotFound",
    "Notify",
    "State",
    "hash_token",
    "load_alarms_config",
    "pages",
    "router",
    "run_escalations",
]
