"""Where entities come from: the store's tables (and the environment site list), read on demand.

One read per request and type; nothing is cached, so an entity is exactly as fresh as the
committed state (parking rows are written on every transition, `latest` on every batch).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from collector import schema
from collector.alarms.tables import alarms
from collector.ngsi import model
from collector.parking.schema import parking_spots, parking_zones
from collector.store import Store


class EntitySource:
    """Builds the NGSI-LD entities of one collector from its store."""

    def __init__(self, store: Store, sites: Iterable[model.SiteInfo] = (),
                 public_url: str = "") -> None:
        self.store = store
        self.sites = {s.id: s for s in sites}
        self.public_url = public_url.rstrip("/")

    def entities(self, types: Iterable[str]) -> list[dict[str, Any]]:
        """Every entity of these types, in a stable order (type, id)."""
        out: list[dict[str, Any]] = []
        for t in sorted(set(types)):
            builder = self._builders().get(t)
            if builder is not None:
                out.extend(sorted(builder(None), key=lambda e: e["id"]))
        return out

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        """One entity by its URN, or None."""
        parsed = model.split_urn(entity_id)
        if parsed is None:
            return None
        etype, local = parsed
        builder = self._builders().get(etype)
        if builder is None:
            return None
        found = [e for e in builder(local) if e["id"] == entity_id]
        return found[0] if found else None

    def _builders(self) -> dict[str, Any]:
        return {"ParkingSpot": self.spots, "OnStreetParking": self.zones,
                "OffStreetParking": self.zones, "AirQualityObserved": self.air,
                "Device": self.devices, "Alert": self.alerts}

    # --- per type ----------------------------------------------------------------------------

    def _zones(self, conn: sa.Connection) -> dict[str, model.ZoneInfo]:
        z = parking_zones
        return {r.zone_id: model.ZoneInfo(r.zone_id, r.name, r.kind, r.lat, r.lon)
                for r in conn.execute(sa.select(z.c.zone_id, z.c.name, z.c.kind, z.c.lat,
                                                z.c.lon))}

    def spots(self, local: str | None) -> list[dict[str, Any]]:
        """ParkingSpot entities (one spot when `local` is given)."""
        s = parking_spots
        stmt = sa.select(s)
        if local is not None:
            stmt = stmt.where(s.c.spot_id == local)
        with self.store.engine.connect() as conn:
            zones = self._zones(conn)
            rows = conn.execute(stmt).mappings().all()
        return [model.parking_spot(dict(r), zones.get(r["zone_id"] or "")) for r in rows]

    def zones(self, local: str | None) -> list[dict[str, Any]]:
        """OnStreetParking / OffStreetParking entities."""
        z, s = parking_zones, parking_spots
        stmt = sa.select(z)
        if local is not None:
            stmt = stmt.where(z.c.zone_id == local)
        with self.store.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
            members: dict[str, list[str]] = defaultdict(list)
            spot_stmt = sa.select(s.c.zone_id, s.c.spot_id).where(s.c.zone_id.is_not(None))
            if local is not None:
                spot_stmt = spot_stmt.where(s.c.zone_id == local)
            for zone_id, spot_id in conn.execute(spot_stmt.order_by(s.c.spot_id)):
                members[zone_id].append(spot_id)
        return [model.parking_zone(dict(r), members.get(r["zone_id"], [])) for r in rows]

    def air(self, local: str | None) -> list[dict[str, Any]]:
        """AirQualityObserved of every dust and boiler site (real-time series)."""
        sites = [s for s in self.sites.values() if local is None or s.id == local]
        devices = {d: s.id for s in sites for d in s.devices}
        if not devices:
            return []
        t = schema.latest
        per_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self.store.engine.connect() as conn:
            for row in conn.execute(sa.select(t).where(t.c.device_id.in_(list(devices))))\
                    .mappings():
                per_site[devices[row["device_id"]]].append(dict(row))
        return [model.air_quality(s, per_site.get(s.id, [])) for s in sites]

    def devices(self, local: str | None) -> list[dict[str, Any]]:
        """A Device for every field device and every gateway."""
        d, g, lt, f = schema.devices, schema.gateways, schema.latest, schema.active_faults
        gw_local = local.removeprefix("gateway:") if local and local.startswith("gateway:") \
            else None
        with self.store.engine.connect() as conn:
            dstmt = sa.select(d)
            lstmt = sa.select(lt)
            if local is not None:
                dstmt = dstmt.where(d.c.device_id == local)
                lstmt = lstmt.where(lt.c.device_id == local)
            devs = [] if gw_local else conn.execute(dstmt).mappings().all()
            latest: dict[str, list[dict[str, Any]]] = defaultdict(list)
            if devs:
                for row in conn.execute(lstmt).mappings():
                    latest[row["device_id"]].append(dict(row))
            faulty = {r.device_id for r in conn.execute(sa.select(f.c.device_id))}
            gstmt = sa.select(g)
            if local is not None:
                gstmt = gstmt.where(g.c.gateway_id == (gw_local or ""))
            gws = {r["gateway_id"]: dict(r) for r in conn.execute(gstmt).mappings()}
            kinds = defaultdict(set)
            for gw, kind in conn.execute(sa.select(d.c.gateway_id, d.c.kind)):
                kinds[gw].add(kind)
            all_gw_state = {r.gateway_id: r.state for r in
                            conn.execute(sa.select(g.c.gateway_id, g.c.state))}
        out = []
        for row in devs:
            state = "fault" if row["device_id"] in faulty else "ok"
            if all_gw_state.get(row["gateway_id"]) == "offline":
                state = "unreachable"
            out.append(model.device(dict(row), latest.get(row["device_id"], []), state))
        for gw in gws.values():
            controlled = sorted({p for k in kinds.get(gw["gateway_id"], ())
                                 for p in model.controlled_property(k, ())})
            out.append(model.gateway(gw, controlled))
        return out

    def alerts(self, local: str | None) -> list[dict[str, Any]]:
        """An Alert for every active alarm."""
        a = alarms
        stmt = sa.select(a).where(a.c.active.is_(True), a.c.closed.is_(False))
        if local is not None:
            if not local.isdigit():
                return []
            stmt = stmt.where(a.c.id == int(local))
        with self.store.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [model.alert(dict(r), self.source_url(r["device_id"])) for r in rows]

    def source_url(self, device_id: str) -> str:
        """Where the Device entity behind an alert can be fetched."""
        base = self.public_url or "urn:citygate"
        return f"{base}/ngsi-ld/v1/entities/{model.urn('Device', device_id)}"
