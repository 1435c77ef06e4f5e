"""Gateway registry: sites, identities and credentials, zero-touch claims, commissioning results,
remote configuration, and the broker's per-gateway auth (files for Mosquitto, a hook for EMQX)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from collector.registry.service import Registry


def install(app: FastAPI, registry: Registry) -> None:
    """Mount the registry and access routers on the collector's app."""
    from collector.registry.access_api import router as access_router
    from collector.registry.api import router as registry_router
    from collector.registry.rollout_api import router as rollout_router
    from collector.registry.signin_api import pages as signin_pages
    from collector.registry.signin_api import router as signin_router

    app.state.registry = registry
    app.include_router(registry_router)
    app.include_router(rollout_router)
    app.include_router(access_router)
    app.include_router(signin_router)
    app.include_router(signin_pages)
