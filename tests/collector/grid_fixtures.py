"""A whole collector app with grid outlines, units and a settable clock, for the grid tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from citygate.rig import free_port
from collector import auth
from collector.alarms.engine import AlarmEngine
from collector.alarms.tables import incidents
from collector.config import CollectorConfig
from collector.features import build_hub
from collector.hub import BrokerLink, Hub
from collector.store import Accepted, Store
from devices.contract import EventsEnvelope

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z (a Thursday)
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def square(lon: float, lat: float, size: float = 0.01) -> dict[str, Any]:
    """A GeoJSON square polygon with its south-west corner at (lon, lat)."""
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size],
            [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


def feature(fid: str, level: str, geometry: dict[str, Any], parent: str = "",
            departments: dict[str, str] | None = None) -> dict[str, Any]:
    return {"type": "Feature", "id": fid, "geometry": geometry,
            "properties": {"level": level, "parent": parent, "name": fid.upper(),
                           "departments": departments or {}}}


def city(g1_lon: float = 113.60) -> dict[str, Any]:
    """District d1 (dust → env-d1) with area a1 and grids g1 (→ crew-g1), g2 (→ crew-g2)."""
    return {"type": "FeatureCollection", "features": [
        feature("d1", "district", square(113.5, 34.7, 0.3), departments={"dust": "env-d1"}),
        feature("a1", "area", square(113.55, 34.75, 0.1), "d1"),
        feature("g1", "grid", square(g1_lon, 34.80), "a1", {"*": "crew-g1"}),
        feature("g2", "grid", square(113.62, 34.80), "a1", {"*": "crew-g2"}),
    ]}


IN_G1 = (34.805, 113.605)
IN_G2 = (34.805, 113.625)


def _unit(name: str, *members: str) -> dict[str, Any]:
    return {"members": [{"name": m, "phone": f"1380000{i:04d}", "on_call": i == 0}
                        for i, m in enumerate(members)],
            "escalation": [{"after": "0s", "channels": [f"push-{name}"]}]}


ALARMS: dict[str, Any] = {
    "group_wait": "0s",
    "units": {"crew-g1": _unit("crew-g1", "Li Wei", "Wang Fang"),
              "crew-g2": _unit("crew-g2", "Zhao Lei"),
              "env-d1": _unit("env-d1", "Chen Jie"),
              "lift-co": _unit("lift-co", "Sun Hao"),
              "city-desk": _unit("city-desk", "Desk")},
    "default_unit": "city-desk",
}


class Clock:
    """A settable collector clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@dataclass
class GridCity:
    """The app, its admin, its alarm engine on a settable clock, and what it paged."""

    hub: Hub
    client: TestClient
    admin: str
    clock: Clock
    sent: list[tuple[str, Any]] = field(default_factory=list)
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def engine(self) -> AlarmEngine:
        engine: AlarmEngine = self.hub.app.state.alarms.engine
        return engine

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}

    def event(self, gateway: str, device: str, kind: str, action: str = "raise") -> None:
        """An event as the ingest stores it and hands it to the features."""
        env = EventsEnvelope.model_validate({
            "v": 1, "gateway": gateway, "seq": next(self.seq), "sent": self.clock.now,
            "events": [{"device": device, "ts": self.clock.now, "kind": kind, "action": action,
                        "severity": "major"}]})
        item = Accepted(gateway, env, self.clock.now)
        self.hub.store.ingest([item])
        self.hub.on_stored([item])

    def incidents(self) -> list[dict[str, Any]]:
        with self.hub.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(incidents).order_by(incidents.c.id)).mappings()]


@contextlib.contextmanager
def grid_city_on(store: Store, tmp_path: Path) -> Iterator[GridCity]:
    """The whole collector app over a store, with a settable clock and a recording notify."""
    clock = Clock()
    hub = build_hub(store, CollectorConfig(alarms=ALARMS), ingest_stats=dict,
                    broker=BrokerLink(f"mqtt://127.0.0.1:{free_port()}"),
                    admin_token_file=tmp_path / "admin-token")
    engine: AlarmEngine = hub.app.state.alarms.engine
    engine.clock = clock
    rig = GridCity(hub, None, "", clock)  # type: ignore[arg-type]
    engine.notify = lambda channel, notice: rig.sent.append((channel, notice))
    rig.admin = auth.create_token(store.engine, "grid-admin", auth.Role.ADMIN)
    try:
        with TestClient(hub.app, raise_server_exceptions=False) as client:
            rig.client = client
            yield rig
    finally:
        # in a thread of its own: the browser tests' Playwright keeps a loop in this one
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, hub.close()).result()


@pytest.fixture
def grid_city(store: Store, tmp_path: Path) -> Iterator[GridCity]:
    with grid_city_on(store, tmp_path) as rig:
        yield rig
