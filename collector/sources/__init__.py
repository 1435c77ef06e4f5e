"""Pollution sources and the environment's closed loop (docs/environment-loop.md).

A registry of sources (construction sites, industry, boilers, restaurants, muck trucks) with
their responsible people; muck-truck tracks; attribution of an air-quality exceedance to the
sources around it; tasks pushed to the owners, acknowledged, reported and closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from collector.sources.api import install
from collector.sources.model import SourceIn, SourcesConfig, load_sources_config
from collector.sources.service import Exceedance, SourcesService
from collector.sources.tables import MIGRATIONS

log = logging.getLogger(__name__)
ESCALATION_TICK_S = 5.0
SWEEP_EVERY_S = 3600.0

__all__ = ["MIGRATIONS", "Exceedance", "SourceIn", "SourcesConfig", "SourcesService", "install",
           "load_sources_config", "run_upkeep", "wire"]


def wire(monitor: Any, svc: SourcesService) -> None:
    """Let `svc` see the environment monitor's alarms after whatever handles them already."""
    before = monitor.on_alarm

    def both(alarm: Any) -> None:
        try:
            before(alarm)
        finally:
            svc.on_env_alarm(alarm)

    monitor.on_alarm = both


async def run_upkeep(svc: SourcesService) -> None:
    """Escalate unacknowledged tasks every few seconds; drop old truck fixes hourly."""
    since_sweep = SWEEP_EVERY_S
    while True:
        try:
            await asyncio.to_thread(svc.escalate)
            if since_sweep >= SWEEP_EVERY_S:
                await asyncio.to_thread(svc.sweep)
                since_sweep = 0.0
        except Exception:
            log.exception("sources: upkeep failed; retrying")
        await asyncio.sleep(ESCALATION_TICK_S)
        since_sweep += ESCALATION_TICK_S
