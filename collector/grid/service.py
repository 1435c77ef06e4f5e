"""The grid feature's service: outlines in memory, placement of sites and devices, routing.

The alarm engine asks it, under the engine's lock, where an unlisted device's site is and who
answers for a new incident; both read the current outline index, swapped whole on import so a
reader never sees half an import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from collector.alarms.engine import AlarmEngine
from collector.alarms.policy import RouteDecision, RouteQuery
from collector.grid import repo
from collector.grid.geo import Outlines, check_hierarchy, parse_collection
from collector.grid.routing import SiteFacts, decide

REGISTRY_TTL_S = 10.0  # an unknown device or gateway re-reads the registry at most this often


class GridService:
    """Outlines, placement and routing of one collector."""

    def __init__(self, db: sa.Engine, engine: AlarmEngine,
                 clock: Callable[[], int] | None = None) -> None:
        self.db = db
        self.alarms = engine
        self.clock: Callable[[], int] = clock or self._engine_now
        self.outlines = Outlines()
        self._lock = threading.Lock()
        self._links: tuple[dict[str, str], dict[str, str]] = ({}, {})
        self._links_at = float("-inf")

    def _engine_now(self) -> int:
        return self.alarms.clock()  # read at each call: the engine's clock can be replaced

    def open(self) -> GridService:
        """Load the outlines and take over routing and site lookup of the alarm engine."""
        self.reload()
        self.alarms.router = self.route
        self.alarms.set_site_resolver(self.site_of)
        return self

    def reload(self) -> None:
        """Re-read the outlines (another collector on this database may have imported some)."""
        with self.db.connect() as conn:
            fresh = Outlines.of(repo.load_outlines(conn))
        with self._lock:
            self.outlines = fresh

    # --- outlines ---------------------------------------------------------------------------

    def import_outlines(self, doc: Any, *, replace: bool, who: str) -> dict[str, Any]:
        """Validate and store a FeatureCollection (all new, or over the current set).

        Raise OutlineError naming the feature and the reason; nothing is stored then.
        """
        items = parse_collection(doc)
        with self._lock:
            merged = {} if replace else dict(self.outlines.by_id)
            merged.update({o.id: o for o in items})
            check_hierarchy(merged.values())
            with self.db.begin() as conn:
                repo.save_outlines(conn, items, replace=replace, who=who, now=self.clock())
            self.outlines = Outlines.of(merged.values())
        levels = [o.level for o in self.outlines.by_id.values()]
        return {"imported": len(items), "districts": levels.count("district"),
                "areas": levels.count("area"), "grids": levels.count("grid")}

    def delete_outline(self, outline_id: str) -> bool:
        """Remove one outline with no children; ValueError when others name it as parent."""
        with self._lock:
            children = sorted(o.id for o in self.outlines.by_id.values()
                              if o.parent == outline_id)
            if children:
                raise ValueError(f"{outline_id} is the parent of {', '.join(children[:10])}")
            with self.db.begin() as conn:
                found = repo.delete_outline(conn, outline_id)
            rest = [o for o in self.outlines.by_id.values() if o.id != outline_id]
            self.outlines = Outlines.of(rest)
        return found

    def feature_collection(self) -> dict[str, Any]:
        """The outlines as GeoJSON."""
        return {"type": "FeatureCollection",
                "features": [o.feature() for o in sorted(self.outlines.by_id.values(),
                                                         key=lambda o: o.id)]}

    # --- sites ------------------------------------------------------------------------------

    def site_of(self, device: str | None, gateway: str) -> str | None:
        """The registry's site of a gateway, else of the gateway a device is registered under."""
        found = self._lookup(device, gateway)
        if found is None and time.monotonic() - self._links_at > REGISTRY_TTL_S:
            with self.db.connect() as conn:
                self._links = repo.registry_links(conn)
            self._links_at = time.monotonic()
            found = self._lookup(device, gateway)
        return found

    def _lookup(self, device: str | None, gateway: str) -> str | None:
        devices, sites = self._links
        if gateway in sites:
            return sites[gateway]
        registered = devices.get(device) if device is not None else None
        return sites.get(registered) if registered is not None else None

    def route(self, conn: sa.Connection, q: RouteQuery) -> RouteDecision:
        """Who answers for a new incident (the alarm engine's router)."""
        row = repo.registry_site(conn, q.site) or {}
        facts = SiteFacts(row.get("lat"), row.get("lon"), row.get("district") or "",
                          row.get("responsible_unit") or "")
        eng = self.alarms
        return decide(q, facts, eng.cfg, eng.book.sites, self.outlines, eng.cfg.units)

    def placements(self) -> list[dict[str, Any]]:
        """Every known site and device with the grid, area and district it is in."""
        cfg = self.alarms.cfg
        with self.db.connect() as conn:
            registered = repo.registry_sites(conn)
            devices, gateway_site = repo.registry_links(conn)
            seen = repo.seen_devices(conn)
        out: dict[str, dict[str, Any]] = {}
        for s in registered:
            out[s["site_id"]] = {"type": "site", "id": s["site_id"], "lat": s["lat"],
                                 "lon": s["lon"], "source": "registry"}
        for name, conf in cfg.sites.items():
            if name not in out or out[name]["lat"] is None:
                out[name] = {"type": "site", "id": name, "lat": conf.lat, "lon": conf.lon,
                             "source": "config"}
        for entry in out.values():
            entry.update(self.outlines.locate(entry["lat"], entry["lon"]).as_dict())
        rows = sorted(out.values(), key=lambda e: e["id"])
        # the gateway a device reports through, then the one it is registered under, then config
        site_of = {d: gateway_site.get(gw, "") for d, gw in devices.items()}
        site_of.update({d: gateway_site[gw] for d, gw in seen.items() if gw in gateway_site})
        site_of.update({d: name for name, conf in cfg.sites.items() for d in conf.devices})
        for device, site in sorted(site_of.items()):
            where = out.get(site, {})
            rows.append({"type": "device", "id": device, "site": site,
                         "lat": where.get("lat"), "lon": where.get("lon"),
                         "grid": where.get("grid", ""), "area": where.get("area", ""),
                         "district": where.get("district", ""), "source": "site"})
        return rows
