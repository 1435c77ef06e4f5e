"""Signed agent updates: bundles, staged rollouts to gateways, per-gateway results."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from collector.updates.service import UpdateService


def install(app: FastAPI, service: UpdateService) -> None:
    """Mount the updates router on the collector's app."""
    from collector.updates.api import router

    app.state.updates = service
    app.include_router(router)
