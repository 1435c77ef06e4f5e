"""Roadside and off-street parking: spot status, zone availability, sensor health, REST, page.

Wiring into the collector (the `Parking` adapter in collector/features.py):
    migrations  collector.parking.MIGRATIONS (versions 30-39), or apply_migrations(engine)
    service     ParkingService(store, load_parking_config(...)).open(); .start(); .close()
    hook        the adapter's on_stored calls service.on_stored
    API         app.state.parking = service; app.include_router(collector.parking.router)
"""

from __future__ import annotations

from collector.parking import driver_api  # noqa: F401  (its routes hang on `router`)
from collector.parking.api import router
from collector.parking.config import ParkingConfig, ParkingConfigError, load_parking_config
from collector.parking.model import ParkingModel, SpotStatus
from collector.parking.schema import MIGRATIONS, apply_migrations
from collector.parking.service import ParkingService

__all__ = [
    "MIGRATIONS",
    "ParkingConfig",
    "ParkingConfigError",
    "ParkingModel",
    "ParkingService",
    "SpotStatus",
    "apply_migrations",
    "load_parking_config",
    "router",
]
